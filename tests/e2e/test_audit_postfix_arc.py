"""The milter order ``audit-postfix`` warns about, through a real Postfix:
a milter that adds a footer (as a mailing list does), listed after
mailwarden, changes the message once it is sealed, and the seal no longer
verifies; listed before it, the seal covers the footer.  audit-postfix,
given the same main.cf and mailwarden's configuration, says which is which.

mailwarden seals with ``outbound-rsa2026`` (published in
``tests/data/zones/outbound.zone``); dkimpy's arc_verify judges what the
sink received.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import dkim
import pytest

from mailwarden import cli
from tests.harness import ROOT, Postfix, make_message, smtp_send, wait_until

LOOPBACK = {"ADDR": "127.0.0.1", "NAME": "localhost", "HELO": "localhost"}
FOOTER_END = b"The list footer.\r\n"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("arc-order")
    shutil.copy(ROOT / "tests/data/keys/outbound-rsa2026.private", base / "outbound.private")
    os.chmod(base / "outbound.private", 0o600)
    return base


@pytest.fixture
def footer_milter(e2e_dir):
    sockdir = e2e_dir / "run-footer"
    sockdir.mkdir(exist_ok=True)
    os.chmod(sockdir, 0o755)
    path = sockdir / "footer.sock"
    if path.exists():
        path.unlink()
    log = open(e2e_dir / "footer-milter.log", "ab")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/harness/footer_milter.py"),
                             f"unix:{path}"], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(ROOT))
    log.close()

    def accepts() -> bool:
        assert proc.poll() is None, "the footer milter exited"
        if not path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
                return True
            except OSError:
                return False
    try:
        wait_until(accepts, 15, "the footer milter")
        yield f"unix:{path}"
    finally:
        proc.kill()          # libmilter looks at SIGTERM only every few seconds
        proc.wait(10)


@pytest.fixture
def postfix_pair(e2e_dir, sink, milter_socket_path):
    """A Postfix of its own (its milter order changes) on mailwarden's socket."""
    instance = Postfix(e2e_dir / "postfix-arc-order", sink.port,
                       milter_socket=f"unix:{milter_socket_path}")
    yield instance
    instance.stop()


def test_a_milter_after_the_sealer_breaks_the_seal_and_the_audit_says_so(
        postfix_pair, footer_milter, sink, mailwarden, keys, dns_server, capsys):
    mw = mailwarden({
        "relay": {"local_domains": "outbound.example", "trusted_networks": "127.0.0.0/8"},
        "check.arc": {"keys": f"outbound.example:rsa2026:{keys}/outbound.private"}})
    ours = mw.milter_address

    def forward(subject):
        """A trusted client's mail to another domain: mailwarden seals it."""
        data, msgid = make_message(subject, sender="alice@outbound.example",
                                   to="friend@elsewhere.example")
        result = smtp_send(postfix_pair.smtp_port, xclient=LOOPBACK, helo=LOOPBACK["HELO"],
                           mail_from="alice@outbound.example",
                           rcpts=["friend@elsewhere.example"], data=data)
        assert result.accepted, result
        got = sink.wait_for_match(msgid.encode(), timeout=30)
        assert got.body.endswith(FOOTER_END)         # the footer milter ran
        assert len(got.header_values("ARC-Seal")) == 1
        return dkim.arc_verify(got.data, dnsfunc=dns_server.txt_lookup)

    def milter_findings():
        cli.main(["audit-postfix", "--config-dir", str(postfix_pair.config_dir),
                  "-c", str(mw.config_path), "--json"])
        return [(f["level"], f["subject"], f["value"])
                for f in json.loads(capsys.readouterr().out)["findings"]
                if f["area"] == "milter" and ("ARC" in f["message"] or "seal" in f["message"])]

    # mailwarden first: the footer is added after the seal
    postfix_pair.postconf(smtpd_milters=f"{ours}, {footer_milter}")
    postfix_pair.start()
    cv, _, why = forward("sealed, then a footer")
    assert cv == dkim.CV_Fail, why
    assert milter_findings() == [("warn", "smtpd_milters", footer_milter),
                                 ("ok", "non_smtpd_milters", ours)]

    # mailwarden last: the seal covers the footer
    postfix_pair.postconf(smtpd_milters=f"{footer_milter}, {ours}")
    postfix_pair.restart()
    cv, _, why = forward("a footer, then sealed")
    assert cv == dkim.CV_Pass, why
    assert milter_findings() == [("ok", "smtpd_milters", f"{footer_milter}, {ours}"),
                                 ("ok", "non_smtpd_milters", ours)]
