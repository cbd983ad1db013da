"""DMARC aggregate reports from the dmarc check's history (RFC 7489 §7.2).

Messages run through the real engine (spf, dkim, dmarc on zone data) so the
history rows are the ones the milter writes; the XML is validated against
the Appendix C schema in ``tests/data/dmarc/rfc7489.xsd``.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import re
import stat
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import xmlschema

from mailwarden import cli
from mailwarden.config import loads
from mailwarden.dmarc_report import (NAMESPACE, Destination, ReportError, make_reports,
                                     parse_rua, save, send)
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).resolve().parents[1] / "data" / "dmarc"
                                 / "rfc7489.xsd"))
NS = {"d": NAMESPACE}
ZONE = """
rep-a.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-a.example. TXT "v=DMARC1; p=quarantine; sp=none; adkim=s; rua=mailto:dmarc@rep-a.example,mailto:agg@reports.example!50k,mailto:tiny@reports.example!1k,mailto:x@unauth.example"
rep-a.example._report._dmarc.reports.example. TXT "v=DMARC1"
sub.rep-a.example. A 198.51.100.200
rep-none.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-none.example. TXT "v=DMARC1; p=none"
other.example. TXT "v=spf1 -all"
"""
REPORTER = ("[dmarc_report]\norg_name = Test Receiver Org\ndomain = mx.test.example\n"
            "email = postmaster@test.example\n")


def config_for(tmp_path, extra=""):
    return loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                 f"{tmp_path / 'dmarc.sqlite'}\n" + REPORTER + extra)


def deliver(engine, ip, mail_from, header_from, n=1):
    for _ in range(n):
        message = (f"From: {header_from}\r\nTo: b@test.example\r\nSubject: s\r\n\r\nhi\r\n"
                   ).encode()
        verdict, _conn, msg = run_offline(engine, client_ip=ip, helo="mail.sender.example",
                                          mail_from=mail_from, rcpts=["b@test.example"],
                                          message=message)
        if msg is not None:
            msg.close()


@pytest.fixture
def history(tmp_path):
    config = config_for(tmp_path)
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    try:
        deliver(engine, "198.51.100.7", "a@rep-a.example", "a@rep-a.example", 3)     # pass
        deliver(engine, "198.51.100.8", "x@other.example", "a@rep-a.example", 2)     # fail
        deliver(engine, "2001:db8::5", "a@rep-a.example", "a@sub.rep-a.example", 1)  # sp=none
        deliver(engine, "198.51.100.9", "a@rep-none.example", "a@rep-none.example", 2)
    finally:
        engine.close()
    return config


def records(xml: bytes) -> list:
    root = ET.fromstring(xml)
    return root.findall("d:record", NS)


def test_one_valid_report_per_asking_domain_with_matching_counts(history, tmp_path):
    reports, skipped = make_reports(history, since=3600, now=time.time() + 1)
    assert [r.policy_domain for r in reports] == ["rep-a.example"]
    assert skipped == 2                      # rep-none.example asked for no report
    report = reports[0]
    assert report.messages == 6
    SCHEMA.validate(report.xml)
    assert gzip.decompress(report.gz) == report.xml
    assert b"rep-none.example" not in report.xml
    assert re.fullmatch(rf"mx\.test\.example!rep-a\.example!{report.begin}!{report.end}"
                        r"!\w+\.xml\.gz", report.filename), report.filename
    assert report.end - report.begin == 3600

    root = ET.fromstring(report.xml)
    assert root.findtext("d:report_metadata/d:org_name", namespaces=NS) == "Test Receiver Org"
    assert root.findtext("d:report_metadata/d:email", namespaces=NS) == "postmaster@test.example"
    assert root.findtext("d:report_metadata/d:report_id", namespaces=NS) == report.report_id
    assert root.findtext("d:policy_published/d:domain", namespaces=NS) == "rep-a.example"
    assert root.findtext("d:policy_published/d:p", namespaces=NS) == "quarantine"
    assert root.findtext("d:policy_published/d:sp", namespaces=NS) == "none"
    assert root.findtext("d:policy_published/d:adkim", namespaces=NS) == "s"

    seen = Counter()
    for rec in records(report.xml):
        ip = rec.findtext("d:row/d:source_ip", namespaces=NS)
        count = int(rec.findtext("d:row/d:count", namespaces=NS))
        ev = rec.find("d:row/d:policy_evaluated", NS)
        seen[(ip, ev.findtext("d:disposition", namespaces=NS),
              ev.findtext("d:spf", namespaces=NS),
              rec.findtext("d:identifiers/d:header_from", namespaces=NS),
              rec.findtext("d:auth_results/d:spf/d:result", namespaces=NS))] += count
    assert seen == Counter({
        ("198.51.100.7", "none", "pass", "rep-a.example", "pass"): 3,
        ("198.51.100.8", "quarantine", "fail", "rep-a.example", "fail"): 2,
        ("2001:0db8:0000:0000:0000:0000:0000:0005", "none", "fail", "sub.rep-a.example",
         "fail"): 1,
    })
    assert sum(seen.values()) == report.messages


def test_a_second_run_reports_nothing_again(history, tmp_path):
    reports, _ = make_reports(history, since=3600, now=time.time() + 1)
    save(history, reports, str(tmp_path / "out"))
    assert Path(reports[0].path).read_bytes() == reports[0].gz
    again, _ = make_reports(history, since=3600, now=time.time() + 1)
    assert again == []
    # a new message is reported alone next time
    engine = Engine(history, resolver=Resolver(history.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    try:
        deliver(engine, "198.51.100.7", "a@rep-a.example", "a@rep-a.example", 1)
    finally:
        engine.close()
    later, _ = make_reports(history, since=3600, now=time.time() + 1)
    assert len(later) == 1 and later[0].messages == 1
    SCHEMA.validate(later[0].xml)
    assert [int(r.findtext("d:row/d:count", namespaces=NS)) for r in records(later[0].xml)] == [1]


def test_records_outside_the_period_wait(history):
    reports, _ = make_reports(history, since=3600, now=time.time() + 7200)
    assert reports == []


def test_reporter_settings_are_required(tmp_path):
    config = loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{tmp_path / 'h.sqlite'}\n")
    with pytest.raises(ReportError, match="org_name, domain, email"):
        make_reports(config, since=3600)


def test_parse_rua_sizes_and_encoding():
    assert parse_rua("mailto:a@x.example!10m, mailto:b%21c@y.example,https://z.example/r,"
                     "mailto:d@w.example!5") == [
        Destination("a@x.example", 10 << 20), Destination("b!c@y.example", None),
        Destination("d@w.example", 5)]
    assert parse_rua("") == []


def _fake_sendmail(tmp_path) -> str:
    """A sendmail(1) that keeps each message as SPOOL/<n>.json (args + data)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    script = tmp_path / "sendmail"
    script.write_text(f"""#!{sys.executable}
import json, sys, pathlib
spool = pathlib.Path({str(spool)!r})
n = len(list(spool.iterdir()))
(spool / f"{{n}}.json").write_text(json.dumps({{"args": sys.argv[1:],
                                               "data": sys.stdin.buffer.read().decode()}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_send_honours_size_and_external_authorization(history, tmp_path):
    config = loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{tmp_path / 'dmarc.sqlite'}\n" + REPORTER
                   + f"sender = dmarc-noreply@test.example\nsendmail = {_fake_sendmail(tmp_path)} -oi\n")
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    resolver = Resolver(config.dns, backend=ZoneBackend(ZONE))
    try:
        outcomes = dict(send(config, reports[0], resolver))
    finally:
        resolver.close()
    assert outcomes["dmarc@rep-a.example"].startswith("sent")       # same organization
    assert outcomes["agg@reports.example"].startswith("sent")       # authorized by TXT
    assert "over its !1024 limit" in outcomes["tiny@reports.example"]
    assert "not authorized" in outcomes["x@unauth.example"]
    sent = [json.loads(p.read_text()) for p in sorted((tmp_path / "spool").iterdir())]
    assert len(sent) == 2
    for item in sent:
        assert item["args"][:4] == ["-oi", "-i", "-f", "dmarc-noreply@test.example"]
        msg = email.message_from_string(item["data"], policy=email.policy.default)
        assert msg["Subject"] == (f"Report Domain: rep-a.example Submitter: mx.test.example "
                                  f"Report-ID: <{reports[0].report_id}>")
        assert msg["To"] == item["args"][-1]
        parts = [p for p in msg.iter_attachments()]
        assert len(parts) == 1 and parts[0].get_content_type() == "application/gzip"
        assert parts[0].get_filename() == reports[0].filename
        SCHEMA.validate(gzip.decompress(parts[0].get_content()))


def test_command_writes_files_and_marks_rows(history, tmp_path, capsys):
    ini = tmp_path / "m.ini"
    ini.write_text(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{tmp_path / 'dmarc.sqlite'}\n" + REPORTER)
    out = tmp_path / "reports"
    assert cli.main(["dmarc-report", "-c", str(ini), "--since", "1h", "--out", str(out)]) == 0
    files = list(out.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mx.test.example!rep-a.example!")
    SCHEMA.validate(gzip.decompress(files[0].read_bytes()))
    text = capsys.readouterr().out
    assert "rep-a.example, 6 messages" in text and "2 records of domains" in text
    assert cli.main(["dmarc-report", "-c", str(ini), "--since", "1h", "--out", str(out)]) == 0
    assert "no records to report" in capsys.readouterr().out
    assert len(list(out.iterdir())) == 1
