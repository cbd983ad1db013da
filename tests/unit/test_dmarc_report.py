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

from mailwarden import cli, command
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
    from mailwarden.dmarc_report import check_rua
    rua = ("mailto:a@x.example!10m, mailto:b%21c@y.example,https://z.example/r,"
           "mailto:d@w.example!5,mailto:e@v.example!5!6,mailto:f@u.example!x")
    destinations, refused = check_rua(rua)
    assert destinations == [Destination("a@x.example", 10 << 20), Destination("d@w.example", 5)]
    assert destinations == parse_rua(rua)
    # "!" is routing syntax (bang paths) and RFC 7489 §6.4's size separator
    assert dict(refused) == {
        "mailto:b%21c@y.example": "not a plain local part",
        "mailto:e@v.example!5!6": 'a "!" that is not a size suffix (RFC 7489 §6.4)',
        "mailto:f@u.example!x": 'a "!" that is not a size suffix (RFC 7489 §6.4)'}
    assert parse_rua("") == []
    # one mail per address, whatever its case; RFC 7489's size fits 64 bits
    assert parse_rua("mailto:a@x.example!1k,mailto:A@x.example") == [
        Destination("a@x.example", 1024)]
    assert parse_rua("mailto:a@x.example!18446744073709551616") == []


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


# --------------------------------------------------------------------------
# where reports may go (RFC 7489 §7.1), and that none is lost

import functools  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from mailwarden import dmarc_report  # noqa: E402
from mailwarden.dmarc_report import Report  # noqa: E402

SEND_ZONE = """
evil.example._report._dmarc.reports.example. TXT "v=DMARC1"
"""
# who may get evil.example's reports: its own organization, and
# reports.example, which published evil.example._report._dmarc
ALLOWED = {"evil.example", "sub.evil.example", "reports.example"}
# one strict addr-spec, as the test reads RFC 5322 §3.4.1 (dot-atom, host name)
ADDR_SPEC = re.compile(r"[A-Za-z0-9#$&'*+=?^_`{}~-]+(?:\.[A-Za-z0-9#$&'*+=?^_`{}~-]+)*"
                       r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
SEND_CONFIG = loads("[authserv]\nid = mx.test.example\n" + REPORTER
                    + "sender = dmarc-noreply@test.example\nsendmail = /usr/sbin/sendmail -oi\n")


ORGANIZATIONAL = (functools.lru_cache(maxsize=None)(dmarc_report.organizational)
                  if hasattr(dmarc_report, "organizational") else None)


class FakeRun:
    """subprocess.run as the report sender calls it: records each sendmail
    run, fails (exit 75) for the addresses in ``fail``."""

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.calls = []

    def __call__(self, argv, input=None, **kwargs):
        self.calls.append((list(argv), input))
        rc = 75 if argv[-1] in self.fail else 0
        return subprocess.CompletedProcess(argv, rc, b"", b"451 try later\n" if rc else b"")

    @property
    def recipients(self) -> list:
        return [argv[argv.index("--") + 1:] for argv, _ in self.calls]


def _report(policy_domain: str, rua: str) -> Report:
    return Report(policy_domain, 0, 3600, "r1@mx.test.example",
                  f"mx.test.example!{policy_domain}!0!3600!r1.xml.gz", b"<x/>",
                  gzip.compress(b"<x/>"), [1], 1, parse_rua(rua))


def _send_patched(report: Report, fake: FakeRun) -> list:
    resolver = Resolver(SEND_CONFIG.dns, backend=ZoneBackend(SEND_ZONE))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dmarc_report.subprocess, "run", fake)
            if ORGANIZATIONAL is not None:     # the same answers, without the rebuild per call
                mp.setattr(dmarc_report, "organizational", ORGANIZATIONAL)
            return send(SEND_CONFIG, report, resolver)
    finally:
        resolver.close()


def _assert_only_strict_allowed(fake: FakeRun, rua: str) -> None:
    assert len(fake.calls) <= rua.lower().count("mailto:")
    for argv, data in fake.calls:
        cut = argv.index("--")
        assert "-i" in argv[:cut]
        assert len(argv) == cut + 2, argv               # one recipient per run
        address = argv[-1]
        assert ADDR_SPEC.fullmatch(address), address
        assert not address.startswith("-")
        assert address.rpartition("@")[2].lower() in ALLOWED, address
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert msg["To"] == address


def test_the_comma_list_of_the_issue_goes_to_no_victim():
    rua = ("mailto:ceo%40victim-one.example%2Cabuse%40victim-two.example%2C"
           "reports@evil.example")
    fake = FakeRun()
    outcomes = dict(_send_patched(_report("evil.example", rua), fake))
    assert fake.calls == []
    _assert_only_strict_allowed(fake, rua)
    assert outcomes == {} or all(o.startswith("skipped") for o in outcomes.values())


_LOCALS = st.sampled_from(["ceo", "abuse", "reports", "a.b", "x+y", "-oQ/tmp/q", "-C/etc/x",
                           "-bs", "%2D%2Dhelp", "-f", "--", "-", "%2DoQ", "a..b", ".a", ""])
_JUNK = st.sampled_from(["%2C", ",", "%0A", "%0D%0A", "%0a", "\n", "\r", "%3C", "<", "%3E", ">",
                         "%20", " ", "%3B", ";", "%00", "%22", '"', "%28x%29", "(", "%40", "@",
                         "%09", "\t", "!", "%21", "?to=ceo@victim-one.example", "%5C", "\\",
                         "%25", "%", "|", "%7C", "/", "%C3%A9", "\u00e9", "%FF", "%"])
_DOMAINS = st.sampled_from(["evil.example", "sub.evil.example", "reports.example",
                            "victim-one.example", "victim-two.example", "[127.0.0.1]",
                            "127.0.0.1", "evil.example.", "EVIL.example", "evil", "-evil.example"])
_SIZES = st.sampled_from(["", "!10m", "!1", "!99999k", "!x", "!!5", "!5k!6", "!"])
_URI = st.builds(lambda parts, size: "mailto:" + "".join(parts) + size,
                 st.lists(st.one_of(_LOCALS, _JUNK, _DOMAINS.map(lambda d: "@" + d)),
                          min_size=1, max_size=8), _SIZES)


@settings(max_examples=300, deadline=None)
@given(st.lists(_URI, min_size=1, max_size=4), st.sampled_from([",", " , ", ",\t"]))
def test_sendmail_only_ever_gets_one_strict_allowed_address(uris, sep):
    rua = sep.join(uris)
    fake = FakeRun()
    _send_patched(_report("evil.example", rua), fake)
    _assert_only_strict_allowed(fake, rua)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z0-9]{1,5})?", fullmatch=True),
                          st.sampled_from(sorted(ALLOWED | {"victim-one.example"}))),
                min_size=1, max_size=5, unique=True))
def test_plain_addresses_are_sent_where_allowed(pairs):
    rua = ",".join(f"mailto:{local}@{domain}" for local, domain in pairs)
    fake = FakeRun()
    _send_patched(_report("evil.example", rua), fake)
    assert fake.recipients == [[f"{local}@{domain}"] for local, domain in pairs
                               if domain in ALLOWED]


# --------------------------------------------------------------------------
# delivery state: a report is sent once sendmail took it, retried otherwise

def _send_config(tmp_path, extra=""):
    return config_for(tmp_path, "sender = dmarc-noreply@test.example\n"
                                "sendmail = /usr/sbin/sendmail\n" + extra)


def _states(config) -> dict:
    with sqlite3.connect(config.checks["dmarc"].history) as conn:
        return {a: (s, n) for a, s, n in conn.execute(
            "SELECT address, state, attempts FROM dmarc_delivery")}


def _deliver(config, fake, zone=ZONE):
    from mailwarden.dmarc_report import deliver
    resolver = Resolver(config.dns, backend=ZoneBackend(zone))
    try:
        return deliver(config, resolver, runner=lambda argv, data: fake(argv, data))
    finally:
        resolver.close()


class FakeRunner(FakeRun):
    def __call__(self, argv, data):
        self.calls.append((list(argv), data))
        return (75, "451 4.3.0 try later") if argv[-1] in self.fail else (0, "")


def test_a_failing_destination_stays_pending_and_the_others_are_sent(history, tmp_path):
    config = _send_config(tmp_path)
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    save(config, reports, str(tmp_path / "out"), queue=True)
    assert {a: s for a, (s, _n) in _states(config).items()} == {
        "dmarc@rep-a.example": "pending", "agg@reports.example": "pending",
        "tiny@reports.example": "pending", "x@unauth.example": "pending"}

    first = FakeRunner(fail={"agg@reports.example"})
    outcomes = {a: o for _r, _p, a, o in _deliver(config, first)}
    assert outcomes["agg@reports.example"].startswith("failed: sendmail exited 75")
    assert outcomes["dmarc@rep-a.example"].startswith("sent")
    assert _states(config) == {
        "dmarc@rep-a.example": ("sent", 0), "agg@reports.example": ("pending", 1),
        "tiny@reports.example": ("skipped", 0), "x@unauth.example": ("skipped", 0)}

    second = FakeRunner()
    _deliver(config, second)
    assert second.recipients == [["agg@reports.example"]]     # only what was not sent
    assert _states(config)["agg@reports.example"] == ("sent", 1)
    msg = email.message_from_bytes(second.calls[0][1], policy=email.policy.default)
    part = next(msg.iter_attachments())
    assert part.get_content() == reports[0].gz                 # the saved report, unchanged

    third = FakeRunner()
    assert _deliver(config, third) == [] and third.calls == []


def test_a_destination_failing_every_run_is_given_up_after_max_attempts(history, tmp_path):
    config = _send_config(tmp_path)
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    save(config, reports, str(tmp_path / "out"), queue=True)
    failing = FakeRunner(fail={"agg@reports.example"})
    for _ in range(dmarc_report.MAX_ATTEMPTS + 2):
        _deliver(config, failing)
    tries = [r for r in failing.recipients if r == ["agg@reports.example"]]
    assert len(tries) == dmarc_report.MAX_ATTEMPTS
    assert _states(config)["agg@reports.example"] == ("abandoned", dmarc_report.MAX_ATTEMPTS)


def test_a_dns_failure_on_the_authorization_is_tried_again(history, tmp_path):
    config = _send_config(tmp_path)
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    save(config, reports, str(tmp_path / "out"), queue=True)
    line = 'rep-a.example._report._dmarc.reports.example. TXT "v=DMARC1"'
    assert line in ZONE
    broken = ZONE.replace(line, "rep-a.example._report._dmarc.reports.example. SERVFAIL")
    first = FakeRunner()
    outcomes = {a: o for _r, _p, a, o in _deliver(config, first, broken)}
    assert outcomes["agg@reports.example"].startswith("failed: ")
    assert ["agg@reports.example"] not in first.recipients
    assert _states(config)["agg@reports.example"] == ("pending", 1)
    second = FakeRunner()
    _deliver(config, second)
    assert second.recipients == [["agg@reports.example"]]


def test_cap_on_mails_per_destination_domain_leaves_the_rest_for_the_next_run(tmp_path):
    zone = ZONE.replace("mailto:tiny@reports.example!1k,", "mailto:other@reports.example,")
    config = _send_config(tmp_path, "max_mails_per_domain = 1\n")
    _history_from(config, zone)
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    save(config, reports, str(tmp_path / "out"), queue=True)
    first = FakeRunner()
    outcomes = {a: o for _r, _p, a, o in _deliver(config, first, zone)}
    assert sorted(first.recipients) == [["agg@reports.example"], ["dmarc@rep-a.example"]]
    assert outcomes["other@reports.example"].startswith("deferred: max_mails_per_domain")
    second = FakeRunner()
    _deliver(config, second, zone)
    assert second.recipients == [["other@reports.example"]]


def test_cap_on_mails_per_run(history, tmp_path):
    config = _send_config(tmp_path, "max_mails_per_run = 1\n")
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    save(config, reports, str(tmp_path / "out"), queue=True)
    runs = []
    for _ in range(3):
        fake = FakeRunner()
        _deliver(config, fake)
        runs.append(fake.recipients)
    assert runs == [[["dmarc@rep-a.example"]], [["agg@reports.example"]], []]


def test_cap_on_reports_per_run_keeps_the_other_domains_for_later(tmp_path):
    zone = ZONE + ('rep-b.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"\n'
                   '_dmarc.rep-b.example. TXT "v=DMARC1; p=none; rua=mailto:d@rep-b.example"\n')
    config = _send_config(tmp_path, "max_reports_per_run = 1\n")
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(zone)),
                    hostname="mx.test.example")
    try:
        deliver(engine, "198.51.100.7", "a@rep-b.example", "a@rep-b.example", 1)   # oldest
        deliver(engine, "198.51.100.7", "a@rep-a.example", "a@rep-a.example", 2)
    finally:
        engine.close()
    first, _ = make_reports(config, since=3600, now=time.time() + 1)
    assert [(r.policy_domain, r.messages) for r in first] == [("rep-b.example", 1)]
    save(config, first, str(tmp_path / "out"))
    second, _ = make_reports(config, since=3600, now=time.time() + 1)
    assert [(r.policy_domain, r.messages) for r in second] == [("rep-a.example", 2)]


def _history_from(config, zone):
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(zone)),
                    hostname="mx.test.example")
    try:
        deliver(engine, "198.51.100.7", "a@rep-a.example", "a@rep-a.example", 1)
    finally:
        engine.close()


def _sendmail_script(tmp_path, fail_flag=None) -> Path:
    """A sendmail(1) that spools each message as SPOOL/<n>.json, or exits 75
    while ``fail_flag`` exists."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    script = tmp_path / "sendmail-flag"
    script.write_text(f"""#!{sys.executable}
import json, os, sys, pathlib
if {str(fail_flag)!r} != 'None' and os.path.exists({str(fail_flag)!r}):
    sys.stderr.write("451 4.3.0 queue file write error\\n")
    sys.exit(75)
spool = pathlib.Path({str(spool)!r})
n = len(list(spool.iterdir()))
(spool / f"{{n}}.json").write_text(json.dumps({{"args": sys.argv[1:],
                                               "data": sys.stdin.buffer.read().decode()}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def zone_dns(monkeypatch):
    """The command's resolver answers from a zone: no lookup leaves the process."""
    import mailwarden.dns
    real = mailwarden.dns.Resolver
    zones = {"text": ZONE}
    monkeypatch.setattr(mailwarden.dns, "Resolver",
                        lambda cfg: real(cfg, backend=ZoneBackend(zones["text"])))
    return zones


def _spooled(tmp_path) -> list:
    return [json.loads(p.read_text())["args"][-1]
            for p in sorted((tmp_path / "spool").iterdir(), key=lambda p: int(p.stem))]


NEWLINE_ZONE = """
rep-b.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-b.example. TXT "v=DMARC1; p=none; rua=mailto:bad%0aline@rep-b.example,mailto:agg@rep-b.example"
rep-c.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-c.example. TXT "v=DMARC1; p=none; rua=mailto:agg@rep-c.example"
"""


def test_a_newline_in_one_rua_loses_no_report(tmp_path, capsys, zone_dns):
    """A %0a used to raise in the middle of --send, after every report had
    been marked as reported: the reports after it were never sent."""
    zone_dns["text"] = NEWLINE_ZONE
    ini = tmp_path / "m.ini"
    ini.write_text(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{tmp_path / 'dmarc.sqlite'}\n" + REPORTER
                   + f"sendmail = {_sendmail_script(tmp_path)}\n")
    config = loads(ini.read_text())
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(NEWLINE_ZONE)),
                    hostname="mx.test.example")
    try:
        deliver(engine, "198.51.100.7", "a@rep-b.example", "a@rep-b.example", 1)
        deliver(engine, "198.51.100.7", "a@rep-c.example", "a@rep-c.example", 1)
    finally:
        engine.close()
    rc = cli.main(["dmarc-report", "-c", str(ini), "--since", "1h", "--out",
                   str(tmp_path / "out"), "--send"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert sorted(_spooled(tmp_path)) == ["agg@rep-b.example", "agg@rep-c.example"]
    assert "'mailto:bad%0aline@rep-b.example': skipped: refused rua URI" in out


def test_reports_sendmail_refused_are_sent_by_the_next_run(history, tmp_path, capsys,
                                                           zone_dns):
    flag = tmp_path / "mta-down"
    flag.touch()
    ini = tmp_path / "m.ini"
    ini.write_text(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{tmp_path / 'dmarc.sqlite'}\n" + REPORTER
                   + f"sendmail = {_sendmail_script(tmp_path, flag)}\n")
    argv = ["dmarc-report", "-c", str(ini), "--since", "1h", "--out", str(tmp_path / "out"),
            "--send"]
    assert cli.main(argv) == command.EXIT_FAIL
    out = capsys.readouterr().out
    assert "dmarc@rep-a.example: failed: sendmail exited 75: 451 4.3.0" in out
    assert _spooled(tmp_path) == []
    flag.unlink()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "no records to report" in out and "of an earlier run, tried again" in out
    assert sorted(_spooled(tmp_path)) == ["agg@reports.example", "dmarc@rep-a.example"]
    assert cli.main(argv) == 0
    assert len(_spooled(tmp_path)) == 2                       # sent once, not again


# --------------------------------------------------------------------------
# what the history keeps of sender-controlled fields

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40).map(lambda t: t * 30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_TEXT, _TEXT), min_size=0, max_size=40), _TEXT, _TEXT, _TEXT)
def test_the_history_keeps_bounded_fields_and_reports_stay_valid(sigs, from_domain, fo, rua):
    from mailwarden.checks.dmarc import History, Record
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/h.sqlite"
        history = History(path)
        ctx = types.SimpleNamespace(
            msg=types.SimpleNamespace(mail_from="x@" + from_domain, rcpts=["b@" + from_domain],
                                      queue_id="Q1"),
            conn=types.SimpleNamespace(client_ip="198.51.100.7"), now=time.time,
            log=types.SimpleNamespace(warning=lambda *a: None))
        record = Record(domain="bounded.example", p="none", fo=fo,
                        rua="mailto:a@bounded.example," + rua)
        try:
            history.record(ctx, from_domain, record, "fail", "none", "", False, False,
                           [(from_domain, "fail")], [(d, s, "fail") for d, s in sigs])
        finally:
            history.close()
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT header_from, envelope_from, envelope_to, fo, rua"
                               " FROM dmarc_message").fetchone()
            dkim = conn.execute("SELECT domain, selector FROM dmarc_dkim").fetchall()
            spf = conn.execute("SELECT domain FROM dmarc_spf").fetchall()
        assert all(len(v) <= 253 for v in row[:3])
        assert len(row[3]) <= 32 and len(row[4]) <= 1024
        assert row[4].startswith("mailto:a@bounded.example")
        assert len(dkim) == min(len(sigs), 20)
        assert all(len(d) <= 253 and len(s) <= 253 for d, s in dkim + [(d, "") for d, in spf])
        config = loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = {path}\n"
                       + REPORTER)
        reports, _ = make_reports(config, since=3600, now=time.time() + 1)
        assert [r.policy_domain for r in reports] == ["bounded.example"]
        SCHEMA.validate(reports[0].xml)


def test_long_dkim_tags_of_a_real_message_are_kept_bounded(tmp_path):
    """Through the engine: 30 signatures whose d= and s= run to 1,600 and
    900 characters, with control characters, reach the history bounded."""
    config = config_for(tmp_path)
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    sigs = b"".join(b"DKIM-Signature: v=1; a=rsa-sha256; d=" + b"x\x01y" * 400
                    + b"%d.example; s=" % i + b"s" * 900 + b"; h=from; bh=AAAA; b=AAAA\r\n"
                    for i in range(30))
    message = sigs + b"From: a@rep-a.example\r\nTo: b@test.example\r\nSubject: s\r\n\r\nhi\r\n"
    try:
        _verdict, _conn, msg = run_offline(engine, client_ip="198.51.100.7",
                                           helo="mail.sender.example",
                                           mail_from="a@rep-a.example",
                                           rcpts=["b@test.example"], message=message)
        if msg is not None:
            msg.close()
    finally:
        engine.close()
    with sqlite3.connect(config.checks["dmarc"].history) as conn:
        rows = conn.execute("SELECT domain, selector FROM dmarc_dkim").fetchall()
    assert 1 <= len(rows) <= 20
    assert all(len(d) <= 253 and len(s) <= 253 and "\x01" not in d for d, s in rows), \
        max(len(d) for d, _s in rows)
    reports, _ = make_reports(config, since=3600, now=time.time() + 1)
    SCHEMA.validate(reports[0].xml)
