"""size, iplist and iprev on the fake resolver."""

import pytest

from mailwarden.checks import registry
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

BASE = "[authserv]\nid = mx.test.example\n"

ZONE = """
; pass: PTR and forward agree
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
; fail: the PTR name points elsewhere
8.100.51.198.in-addr.arpa. PTR liar.sender.example.
liar.sender.example. A 203.0.113.200
; several PTR names, the second one confirms
9.100.51.198.in-addr.arpa. PTR nothing.sender.example.
9.100.51.198.in-addr.arpa. PTR good.sender.example.
good.sender.example. A 198.51.100.9
; temperror on the forward lookup
10.100.51.198.in-addr.arpa. PTR slow.sender.example.
slow.sender.example. TIMEOUT
; temperror on the PTR itself
11.100.51.198.in-addr.arpa. SERVFAIL
; IPv6
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR v6.sender.example.
v6.sender.example. AAAA 2001:db8::25
"""

MESSAGE = b"From: a@sender.example\r\nSubject: test\r\n\r\nHello.\r\n"


# these three checks alone, whatever else the project has enabled by default
FOUNDATION = {name: registry()[name] for name in ("iplist", "iprev", "size")}


def run(ip, text=BASE, message=MESSAGE, **kw):
    cfg = loads(text, registry=FOUNDATION)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example", registry=FOUNDATION)
    kw.setdefault("mail_from", "a@sender.example")
    kw.setdefault("rcpts", ["b@test.example"])
    verdict, _, _ = run_offline(engine, client_ip=ip, message=message, **kw)
    engine.close()
    return verdict


def iprev(verdict):
    return [r for r in verdict.results if r.check == "iprev"]


@pytest.mark.parametrize("ip,result,symbol", [
    ("198.51.100.7", "pass", "IPREV_PASS"),
    ("198.51.100.8", "fail", "IPREV_FAIL"),
    ("198.51.100.9", "pass", "IPREV_PASS"),
    ("198.51.100.10", "temperror", "IPREV_TEMPERROR"),
    ("198.51.100.11", "temperror", "IPREV_TEMPERROR"),
    ("198.51.100.12", "permerror", "IPREV_PERMERROR"),
    ("2001:db8::25", "pass", "IPREV_PASS"),
    ("IPv6:2001:db8::25", "pass", "IPREV_PASS"),
])
def test_iprev_results(ip, result, symbol):
    verdict = run(ip)
    (r,) = iprev(verdict)
    assert (r.result, r.symbol) == (result, symbol)
    ar = dict(verdict.headers_added).get("Authentication-Results", "")
    if verdict.action != "tempfail":
        address = ip.replace("IPv6:", "")
        if ":" in address:                 # not an RFC 2045 token: quoted (RFC 8601 pvalue)
            address = f'"{address}"'
        assert f"iprev={result}" in ar and f"policy.iprev={address}" in ar


def test_iprev_temperror_tempfails_and_can_be_told_not_to():
    assert run("198.51.100.10").action == "tempfail"
    assert run("198.51.100.10", BASE + "[check.iprev]\ntempfail_on_error = no\n").action == "accept"


def test_iplist_block_and_allow():
    text = BASE + "[check.iplist]\nblock = 198.51.100.0/24, 2001:db8:bad::/48\nallow = 198.51.100.7\n"
    blocked = run("198.51.100.8", text)
    assert blocked.action == "reject"
    assert blocked.reply.line() == "554 5.7.1 Client address blocked by local policy [198.51.100.8]"
    assert blocked.stage.name == "CONNECT"
    assert run("2001:db8:bad::1", text).action == "reject"
    allowed = run("198.51.100.7", text)        # more specific allow wins
    assert allowed.action == "accept"
    assert iprev(allowed) == []                # reputation checks skipped
    assert [r.symbol for r in allowed.results] == ["IPLIST_ALLOW"]
    assert run("192.0.2.1", text).action != "reject"


def test_iplist_tie_blocks():
    text = BASE + "[check.iplist]\nblock = 198.51.100.0/24\nallow = 198.51.100.0/24\n"
    assert run("198.51.100.8", text).action == "reject"


def test_iplist_from_files(tmp_path):
    (tmp_path / "block").write_text("# bad ones\n203.0.113.0/24  # a whole net\n")
    text = BASE + f"[check.iplist]\nblock_file = {tmp_path / 'block'}\n"
    assert run("203.0.113.5", text).action == "reject"


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
