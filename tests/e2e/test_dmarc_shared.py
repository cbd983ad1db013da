"""DMARC records shared by two MX hosts through one Redis server.

Two mailwarden instances, each behind its own private Postfix, keep their
DMARC records in one Redis (``[check.dmarc] history = redis://...``).  Mail
goes through both; one ``mailwarden dmarc-report --send`` run on one of them
writes and mails one report for the domain whose counts add up to the mail
of both, and a run on the other host then finds nothing left to report."""

from __future__ import annotations

import email
import email.policy
import gzip
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest
import xmlschema

from tests.redisserver import RedisServer, redis_binary

from tests.harness import (MAILWARDEN_BIN, ROOT, Mailwarden, Postfix, make_message, smtp_send,
                           wait_until)

SCHEMA = xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "dmarc" / "rfc9990.xsd"))
NS = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}
SENDER = "a@rep-e2e.example"
RCPT = "bob@rcpt.example"
CLIENT = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "HELO": "mail.sender.example"}

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")


@pytest.fixture
def redis_url(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server.url
    server.stop()


@pytest.fixture
def two_hosts(e2e_dir, dns_server, sink, redis_url):
    """[(postfix, mailwarden), (postfix, mailwarden)]: two MX hosts, one Redis."""
    sendmail = subprocess.run(["postconf", "-h", "sendmail_path"], capture_output=True,
                              text=True).stdout.strip() or "/usr/sbin/sendmail"
    hosts, started = [], []
    try:
        for name in ("mx1", "mx2"):
            sockdir = e2e_dir / f"run-{name}"
            sockdir.mkdir(exist_ok=True)
            os.chmod(sockdir, 0o755)
            postfix = Postfix(e2e_dir / f"postfix-{name}", sink.port,
                              milter_socket=f"unix:{sockdir / 'milter.sock'}")
            mailwarden = Mailwarden(e2e_dir / f"mailwarden-shared-{name}", dns_server.port, {
                "check.dmarc": {"history": redis_url},
                "state": {"prefix": "site:", "timeout": "2s"},
                "dmarc_report": {"org_name": "Test Receiver Org", "domain": "mx.test.example",
                                 "email": "postmaster@test.example",
                                 "sendmail": f"{sendmail} -C {e2e_dir / 'postfix-mx1' / 'etc'}"},
            }, socket_path=sockdir / "milter.sock")
            started.append(mailwarden.start())
            started.append(postfix.start())
            hosts.append((postfix, mailwarden))
        yield hosts
    finally:
        for part in reversed(started):
            part.stop()


def _send(postfix, sink, n, tag):
    for i in range(n):
        data, msgid = make_message(f"shared dmarc {tag} {i}", sender=SENDER)
        result = smtp_send(postfix.smtp_port, xclient=CLIENT, mail_from=SENDER, rcpts=[RCPT],
                           data=data)
        assert result.accepted, result
        got = sink.wait_for_match(msgid.encode())
        assert "dmarc=pass" in " ".join(got.header_values("Authentication-Results"))


def _report(mailwarden, out):
    return subprocess.run([str(MAILWARDEN_BIN), "dmarc-report", "-c", str(mailwarden.config_path),
                           "--since", "1h", "--out", str(out), "--send"],
                          capture_output=True, text=True, timeout=120)


def test_one_report_covers_the_mail_of_both_mx_hosts(two_hosts, sink, tmp_path):
    (postfix1, mw1), (postfix2, mw2) = two_hosts
    _send(postfix1, sink, 3, "mx1")
    _send(postfix2, sink, 2, "mx2")
    # each host evaluated its own share
    for mw, n in ((mw1, 3), (mw2, 2)):
        assert mw.log_text(since_start=True).count("DMARC_PASS") == n

    run = _report(mw2, tmp_path / "reports")
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "rep-e2e.example, 5 messages" in run.stdout, run.stdout
    files = list((tmp_path / "reports").iterdir())
    assert len(files) == 1
    xml = gzip.decompress(files[0].read_bytes())
    SCHEMA.validate(xml)
    counts = [int(c.text) for c in ET.fromstring(xml).findall("d:record/d:row/d:count", NS)]
    assert sum(counts) == 5

    def arrived():          # the sink is shared: this run's report, by its file name
        out = []
        for m in sink.messages:
            if "agg@rep-e2e.example" not in m.rcpts or b"Report Domain:" not in m.data:
                continue
            msg = email.message_from_bytes(m.data, policy=email.policy.default)
            part = next(msg.iter_attachments())
            if part.get_filename() == files[0].name:
                out.append(part)
        return out
    wait_until(lambda: bool(arrived()), 60, "the report mail", interval=0.2)
    assert len(arrived()) == 1
    mailed = gzip.decompress(arrived()[0].get_content())
    assert sum(int(c.text) for c in
               ET.fromstring(mailed).findall("d:record/d:row/d:count", NS)) == 5

    # the other host's run finds every row reported: nothing twice
    again = _report(mw1, tmp_path / "reports-mx1")
    assert again.returncode == 0 and "no records to report" in again.stdout, again.stdout
    assert not (tmp_path / "reports-mx1").exists() or \
        list((tmp_path / "reports-mx1").iterdir()) == []
