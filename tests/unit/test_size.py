"""size: the declared (ESMTP SIZE=) and the received size; and a verdict
for every malformed message."""

import pytest

from .foundationcase import BASE, MESSAGE, run


def test_size_declared_and_received():
    text = BASE + "[check.size]\nmax_size = 1K\n"
    declared = run("198.51.100.7", text, esmtp_size=5000)
    assert declared.action == "reject" and declared.stage.name == "MAIL"
    assert declared.reply.line().startswith("552 5.3.4 ")
    big = MESSAGE + b"x" * 2000
    received = run("198.51.100.7", text, message=big)
    assert received.action == "reject" and received.stage.name == "BODY"
    assert received.reply.code == 552
    assert run("198.51.100.7", text, esmtp_size=500).action == "accept"
    assert run("198.51.100.7", BASE + "[check.size]\nmax_size = 0\n", message=big).action == "accept"


@pytest.mark.parametrize("message", [
    b"",                                              # nothing at all
    b"just a body line, no header at all\r\n",
    bytes(range(256)) * 40,                           # binary garbage
    b"Subject: caf\xe9 \xff\xfe\r\nFrom: \xc3\xa9@x\r\n\r\nbody\r\n",   # 8-bit header
    b"X-Long: start\r\n" + b"\tcontinued line\r\n" * 1000 + b"\r\nbody\r\n",
    b"Subject: no body separator",
    b"\n\n\n",
    b"Subject: x\rFrom: y\r\r\rbody",                 # CR-only line ends
])
def test_malformed_messages_get_a_verdict(message):
    verdict = run("198.51.100.7", message=message)
    assert verdict.action == "accept"
    assert dict(verdict.headers_added)["Authentication-Results"].startswith("mx.test.example;")
