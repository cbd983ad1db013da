"""Operability through the real Postfix: the JSON verdict line carries the
queue id Postfix gave, the metrics page counts what went through, and
``mailwarden dmarc-report --send`` mails reports through Postfix's sendmail."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import re
import subprocess
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema

from tests.harness import MAILWARDEN_BIN, ROOT, free_port, make_message, smtp_send, wait_until

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"
CLIENT = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "HELO": "mail.sender.example"}
SCHEMA = xmlschema.XMLSchema(str(ROOT / "tests" / "data" / "dmarc" / "rfc9990.xsd"))
NS = {"d": "urn:ietf:params:xml:ns:dmarc-2.0"}


def _page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _value(page: str, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} (\S+)$", page, re.M)
    return float(m.group(1)) if m else 0.0


def test_json_log_line_and_metrics_page(postfix, sink, mailwarden):
    port = free_port()
    mw = mailwarden({"milter": {"log_format": "json"}, "metrics": {"listen": f"127.0.0.1:{port}"},
                     "check.iplist": {"block": "198.51.100.66"}})
    queued = []
    for i in range(2):
        data, msgid = make_message(f"operability {i}")
        result = smtp_send(postfix.smtp_port, xclient=CLIENT, mail_from=SENDER, rcpts=[RCPT],
                           data=data)
        assert result.accepted, result
        queued.append(re.search(r"queued as (\w+)", result.text).group(1))
        sink.wait_for_match(msgid.encode())
    data, _ = make_message("blocked")
    refused = smtp_send(postfix.smtp_port, xclient=dict(CLIENT, ADDR="198.51.100.66"),
                        mail_from=SENDER, rcpts=[RCPT], data=data)
    assert refused.code == 554, refused

    lines = [json.loads(line) for line in mw.log_text(since_start=True).splitlines()
             if line.startswith("{")]
    verdicts = [l for l in lines if "action" in l]
    eom = [v for v in verdicts if "stage" not in v]
    # one line per message, under the queue id Postfix announced
    assert sorted(v["queue_id"] for v in eom) == sorted(queued), verdicts
    for v in eom:
        assert v["client_ip"] == "198.51.100.7" and v["client_name"] == "mail.sender.example"
        assert v["from"] == SENDER and v["rcpts"] == 1 and v["action"] == "accept"
        assert "IPREV_PASS" in v["symbols"]
    stops = [v for v in verdicts if v.get("stage") == "connect"]
    assert len(stops) == 1 and stops[0]["reason"].startswith("iplist:"), verdicts

    def settled():
        return _value(_page(port), "mailwarden_connections_open") == 0
    wait_until(settled, 15, "milter connections to close")
    page = _page(port)
    assert _value(page, 'mailwarden_messages_total{action="accept"}') == 2
    assert _value(page, 'mailwarden_verdicts_total{action="reject",cause="iplist",'
                        'stage="connect"}') == 1
    assert _value(page, 'mailwarden_symbols_total{symbol="IPLIST_BLOCK"}') == 1
    assert _value(page, 'mailwarden_check_results_total{check="iprev",result="pass"}') >= 2
    assert _value(page, "mailwarden_dns_query_seconds_count") > 0
    assert _value(page, 'mailwarden_dns_queries_total{outcome="noerror"}') > 0
    assert _value(page, "mailwarden_message_seconds_count") == 2
    assert _value(page, 'mailwarden_stage_seconds_count{stage="eom"}') == 2
    assert _value(page, "mailwarden_connections_total") >= 3


def _reporting_mailwarden(postfix, mailwarden, history):
    """mailwarden keeping DMARC history in ``history`` and sending its
    reports through the private Postfix's sendmail."""
    sendmail = subprocess.run(["postconf", "-h", "sendmail_path"], capture_output=True,
                              text=True).stdout.strip() or "/usr/sbin/sendmail"
    return mailwarden({
        "check.dmarc": {"history": str(history)},
        "dmarc_report": {"org_name": "Test Receiver Org", "domain": "mx.test.example",
                         "email": "postmaster@test.example",
                         "sendmail": f"{sendmail} -C {postfix.config_dir}"},
    })


def test_dmarc_report_sent_through_postfix(postfix, sink, mailwarden, tmp_path):
    history = tmp_path / "dmarc.sqlite"
    mw = _reporting_mailwarden(postfix, mailwarden, history)
    for i in range(3):
        data, msgid = make_message(f"dmarc report {i}", sender="a@rep-e2e.example")
        result = smtp_send(postfix.smtp_port, xclient=CLIENT, mail_from="a@rep-e2e.example",
                           rcpts=[RCPT], data=data)
        assert result.accepted, result
        got = sink.wait_for_match(msgid.encode())
        assert "dmarc=pass" in " ".join(got.header_values("Authentication-Results"))

    out = tmp_path / "reports"
    run = subprocess.run([str(MAILWARDEN_BIN), "dmarc-report", "-c", str(mw.config_path),
                          "--since", "1h", "--out", str(out), "--send"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "rep-e2e.example, 3 messages" in run.stdout, run.stdout
    assert re.search(r"agg@rep-e2e\.example: sent", run.stdout), run.stdout
    assert re.search(r"agg@reports-e2e\.example: sent", run.stdout), run.stdout
    assert re.search(r"no@unauth-e2e\.example: skipped: external destination not authorized",
                     run.stdout), run.stdout
    files = list(out.iterdir())
    assert len(files) == 1

    for rcpt in ("agg@rep-e2e.example", "agg@reports-e2e.example"):
        def arrived():
            # the sink is shared: this run's report mail, by its file name
            return [m for m in sink.messages if rcpt in m.rcpts and b"Report Domain:" in m.data
                    and next(email.message_from_bytes(m.data, policy=email.policy.default)
                             .iter_attachments()).get_filename() == files[0].name]
        wait_until(lambda: bool(arrived()), 60, f"the report mail to {rcpt}", interval=0.2)
        msg = email.message_from_bytes(arrived()[0].data, policy=email.policy.default)
        # RFC 9990: the Report-ID is the file name's unique-id
        subject = re.fullmatch(r"Report Domain: rep-e2e\.example Submitter: mx\.test\.example "
                               r"Report-ID: <([0-9a-f]{32})>", msg["Subject"])
        assert subject, msg["Subject"]
        assert files[0].name.endswith(f"!{subject.group(1)}.xml.gz"), files[0].name
        part = next(msg.iter_attachments())
        assert part.get_filename() == files[0].name
        xml = gzip.decompress(part.get_content())
        SCHEMA.validate(xml)
        counts = [int(c.text) for c in ET.fromstring(xml).findall("d:record/d:row/d:count", NS)]
        assert sum(counts) == 3
    assert not any("unauth-e2e" in r for m in sink.messages for r in m.rcpts)

    again = subprocess.run([str(MAILWARDEN_BIN), "dmarc-report", "-c", str(mw.config_path),
                            "--since", "1h", "--out", str(out), "--send"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "no records to report" in again.stdout, again.stdout


def test_dmarc_report_rua_list_reaches_no_victim_through_postfix(postfix, sink, mailwarden,
                                                                 tmp_path):
    """Postfix's sendmail splits one argument with commas into several
    recipients: an encoded comma list in a rua must never get that far."""
    history = tmp_path / "dmarc.sqlite"
    mw = _reporting_mailwarden(postfix, mailwarden, history)
    data, msgid = make_message("dmarc report evil", sender="a@rep-evil-e2e.example")
    result = smtp_send(postfix.smtp_port, xclient=CLIENT, mail_from="a@rep-evil-e2e.example",
                       rcpts=[RCPT], data=data)
    assert result.accepted, result
    sink.wait_for_match(msgid.encode())

    run = subprocess.run([str(MAILWARDEN_BIN), "dmarc-report", "-c", str(mw.config_path),
                          "--since", "1h", "--out", str(tmp_path / "reports"), "--send"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.stdout, run.stderr)

    def reports():
        return [m for m in sink.messages if b"Report Domain: rep-evil-e2e.example" in m.data]
    wait_until(lambda: bool(reports()), 60, "the report mail to agg@rep-evil-e2e.example",
               interval=0.2)
    postfix.wait_queue_empty(60)          # whatever sendmail was given has been delivered
    rcpts = sorted(r for m in reports() for r in m.rcpts)
    assert rcpts == ["agg@rep-evil-e2e.example"], rcpts
    assert not any("victim" in r for m in sink.messages for r in m.rcpts)
    assert "skipped: refused rua URI: a list of addresses" in run.stdout, run.stdout
    assert re.search(r"agg@rep-evil-e2e\.example: sent", run.stdout), run.stdout
