"""DMARC aggregate reports from the dmarc check's history (RFC 9990).

Messages run through the real engine (spf, dkim, dmarc on zone data) so the
history rows are the ones the milter writes; the XML is validated against
the schema of RFC 9990 Appendix A in ``tests/data/dmarc/rfc9990.xsd``.
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
                                 / "rfc9990.xsd"))
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
    # RFC 9990 "Email": receiver!policy-domain!begin!end!unique-id.xml.gz, the
    # unique-id (1*(ALPHA / DIGIT)) being the Report-ID itself
    assert re.fullmatch(r"[0-9a-f]{32}", report.report_id)
    assert report.filename == (f"mx.test.example!rep-a.example!{report.begin}!{report.end}"
                               f"!{report.report_id}.xml.gz")
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
        # a DMARC pass under p=quarantine: disposition "pass" (RFC 9990)
        ("198.51.100.7", "pass", "pass", "rep-a.example", "pass"): 3,
        ("198.51.100.8", "quarantine", "fail", "rep-a.example", "fail"): 2,
        ("2001:db8::5", "none", "fail", "sub.rep-a.example", "fail"): 1,
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
    # "!" is routing syntax (bang paths) and the obsolete size separator
    # (RFC 7489; RFC 9989 keeps it as obs-dmarc-report-size, to be ignored)
    assert dict(refused) == {
        "mailto:b%21c@y.example": "not a plain local part",
        "mailto:e@v.example!5!6": 'a "!" that is not a size suffix (RFC 9989)',
        "mailto:f@u.example!x": 'a "!" that is not a size suffix (RFC 9989)'}
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


def test_send_ignores_the_obsolete_size_and_checks_external_authorization(history, tmp_path):
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
    # !1k: RFC 9989 says reporters ignore the size; the report is larger
    assert outcomes["tiny@reports.example"].startswith("sent")
    assert "not authorized" in outcomes["x@unauth.example"]
    sent = [json.loads(p.read_text()) for p in sorted((tmp_path / "spool").iterdir())]
    assert len(sent) == 3 and all(len(item["data"]) > 1024 for item in sent)
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
# where reports may go (RFC 9990, "Verifying External Destinations"), and
# that none is lost

import functools  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import types  # noqa: E402

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from mailwarden import dmarc_report  # noqa: E402
from mailwarden.dmarc_report import Report  # noqa: E402

SEND_ZONE = """
_dmarc.evil.example. TXT "v=DMARC1; p=none"
evil.example._report._dmarc.reports.example. TXT "v=DMARC1"
"""
# who may get evil.example's reports: its own organization (by the tree
# walk: evil.example publishes the record above it), and
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
        "tiny@reports.example": ("sent", 0), "x@unauth.example": ("skipped", 0)}

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
    assert second.recipients == [["agg@reports.example"], ["tiny@reports.example"]]


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
    for _ in range(4):
        fake = FakeRunner()
        _deliver(config, fake)
        runs.append(fake.recipients)
    assert runs == [[["dmarc@rep-a.example"]], [["agg@reports.example"]],
                    [["tiny@reports.example"]], []]


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
    assert sorted(_spooled(tmp_path)) == ["agg@reports.example", "dmarc@rep-a.example",
                                          "tiny@reports.example"]
    assert cli.main(argv) == 0
    assert len(_spooled(tmp_path)) == 3                       # sent once, not again


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


# --------------------------------------------------------------------------
# the format of RFC 9990, field by field, from rows written as the check
# writes them (mailwarden.dmarc_records.Evaluation)

from mailwarden.dmarc_records import Evaluation, open_records  # noqa: E402

RFC9990 = "{urn:ietf:params:xml:ns:dmarc-2.0}"


def _evaluation(received, **kw):
    values = dict(received=int(received), queue_id="Q", source_ip="198.51.100.7",
                  header_from="f.example", envelope_from="f.example",
                  envelope_to="test.example", policy_domain="f.example", p="reject",
                  sp=None, np=None, pct=100, adkim="r", aspf="r", fo="0",
                  rua="mailto:agg@f.example", result="fail", dkim_aligned=False,
                  spf_aligned=False, disposition="reject", override="",
                  dkim=(), spf=(("f.example", "mfrom", "fail"),))
    values.update(kw)
    return Evaluation(**values)


def _report_of(tmp_path, *evaluations, now=None):
    config = config_for(tmp_path)
    records = open_records(config.checks["dmarc"].history)
    try:
        for evaluation in evaluations:
            records.record(evaluation)
    finally:
        records.close()
    reports, _ = make_reports(config, since=3600, now=now or time.time() + 1)
    assert len(reports) == 1
    SCHEMA.validate(reports[0].xml)
    return reports[0], ET.fromstring(reports[0].xml)


def _names(element) -> list:
    return [child.tag.replace(RFC9990, "") for child in element]


def test_the_report_has_the_rfc9990_namespace_elements_and_order(tmp_path):
    now = time.time()
    report, root = _report_of(tmp_path, _evaluation(now, sp="quarantine"))
    assert root.tag == RFC9990 + "feedback"
    assert _names(root) == ["version", "report_metadata", "policy_published", "record"]
    assert root.findtext("d:version", namespaces=NS) == "1.0"
    meta = root.find("d:report_metadata", NS)
    assert _names(meta) == ["org_name", "email", "report_id", "date_range", "generator"]
    assert meta.findtext("d:generator", namespaces=NS).startswith("mailwarden ")
    # RFC 9989 defaults for what the record did not publish; no pct, rf, ri
    pub = root.find("d:policy_published", NS)
    assert {el.tag.replace(RFC9990, ""): el.text for el in pub} == {
        "domain": "f.example", "p": "reject", "sp": "quarantine", "np": "quarantine",
        "fo": "0", "adkim": "r", "aspf": "r"}
    record = root.find("d:record", NS)
    assert _names(record) == ["row", "identifiers", "auth_results"]
    assert _names(record.find("d:row", NS)) == ["source_ip", "count", "policy_evaluated"]
    assert _names(record.find("d:row/d:policy_evaluated", NS)) == ["disposition", "dkim", "spf"]
    assert _names(record.find("d:auth_results/d:spf", NS)) == ["domain", "scope", "result"]


def test_the_fields_the_evaluation_records_reach_the_report(tmp_path):
    now = time.time()
    report, root = _report_of(
        tmp_path,
        _evaluation(now, header_from="gone.f.example", np="quarantine", discovery_method="treewalk",
                    testing="y", policy_tag="np", disposition="none", override="policy_test_mode",
                    override_comment="t=y: none instead of quarantine",
                    record_error="pct=50 is no longer part of DMARC (RFC 9989)",
                    dkim=(("f.example", "s1", "fail", "body hash did not verify"),),
                    spf=(("f.example", "mfrom", "softfail", "matched ~all"),)))
    pub = root.find("d:policy_published", NS)
    assert pub.findtext("d:discovery_method", namespaces=NS) == "treewalk"
    assert pub.findtext("d:testing", namespaces=NS) == "y"
    assert pub.findtext("d:np", namespaces=NS) == "quarantine"
    assert root.findtext("d:report_metadata/d:error", namespaces=NS) == \
        "pct=50 is no longer part of DMARC (RFC 9989)"
    evaluated = root.find("d:record/d:row/d:policy_evaluated", NS)
    assert evaluated.findtext("d:disposition", namespaces=NS) == "none"
    assert [(r.findtext("d:type", namespaces=NS), r.findtext("d:comment", namespaces=NS))
            for r in evaluated.findall("d:reason", NS)] == \
        [("policy_test_mode", "t=y: none instead of quarantine")]
    dkim = root.find("d:record/d:auth_results/d:dkim", NS)
    assert _names(dkim) == ["domain", "selector", "result", "human_result"]
    assert dkim.findtext("d:human_result", namespaces=NS) == "body hash did not verify"
    assert root.findtext("d:record/d:auth_results/d:spf/d:human_result", namespaces=NS) == \
        "matched ~all"


@pytest.mark.parametrize("override, comment, expected", [
    ("local_policy", "", ("local_policy", None)),
    ("mailing_list", "list.example", ("mailing_list", "list.example")),
    ("trusted_forwarder", "", ("trusted_forwarder", None)),
    ("policy_test_mode", "", ("policy_test_mode", None)),
    ("other", "", ("other", None)),
    # RFC 7489 types that RFC 9990 no longer has
    ("sampled_out", "", ("other", "sampled out by the record's pct (RFC 7489)")),
    ("forwarded", "", ("other", "forwarded (the RFC 7489 override type)")),
    ("something_new", "", ("other", "something_new")),
])
def test_override_words_map_onto_rfc9990_reason_types(tmp_path, override, comment, expected):
    _report, root = _report_of(tmp_path, _evaluation(time.time(), disposition="none",
                                                     override=override,
                                                     override_comment=comment))
    reasons = root.findall("d:record/d:row/d:policy_evaluated/d:reason", NS)
    assert [(r.findtext("d:type", namespaces=NS), r.findtext("d:comment", namespaces=NS))
            for r in reasons] == [expected]
    assert set(dmarc_report.OVERRIDE_TYPES) == {
        "local_policy", "mailing_list", "other", "policy_test_mode", "trusted_forwarder"}


def test_a_disposition_other_than_requested_always_has_a_reason(tmp_path):
    """RFC 9990: if alignment fails and the policy applied is not the one
    the record asks for, the reason element MUST be there."""
    now = time.time()
    _report, root = _report_of(
        tmp_path,
        _evaluation(now, disposition="quarantine"),                              # p=reject
        _evaluation(now, source_ip="198.51.100.8", disposition="none", testing="y"),
        _evaluation(now, source_ip="198.51.100.9", disposition="reject"),       # as asked
        _evaluation(now, source_ip="198.51.100.10", header_from="x.f.example", sp="none",
                    np="reject", disposition="reject"))                        # np, by value
    got = {rec.findtext("d:row/d:source_ip", namespaces=NS):
           [r.findtext("d:type", namespaces=NS)
            for r in rec.findall("d:row/d:policy_evaluated/d:reason", NS)]
           for rec in root.findall("d:record", NS)}
    assert got == {"198.51.100.7": ["other"], "198.51.100.8": ["policy_test_mode"],
                   "198.51.100.9": [], "198.51.100.10": []}


def test_disposition_pass_is_for_a_pass_under_an_enforcing_policy(tmp_path):
    now = time.time()
    passing = dict(result="pass", dkim_aligned=True, disposition="none")
    _report, root = _report_of(
        tmp_path,
        _evaluation(now, **passing),                                            # p=reject
        _evaluation(now, source_ip="198.51.100.8", header_from="s.f.example", sp="none",
                    **passing))                                                 # sp=none
    got = {rec.findtext("d:row/d:source_ip", namespaces=NS):
           rec.findtext("d:row/d:policy_evaluated/d:disposition", namespaces=NS)
           for rec in root.findall("d:record", NS)}
    assert got == {"198.51.100.7": "pass", "198.51.100.8": "none"}


def test_dkim_results_come_aligned_passes_first(tmp_path):
    sigs = (("other.example", "a", "fail"), ("esp.example", "b", "pass"),
            ("mail.f.example", "c", "pass"), ("f.example", "d", "fail"), ("f.example", "e", "pass"))
    _report, root = _report_of(tmp_path, _evaluation(time.time(), dkim=sigs))
    order = [(d.findtext("d:domain", namespaces=NS), d.findtext("d:selector", namespaces=NS))
             for d in root.findall("d:record/d:auth_results/d:dkim", NS)]
    assert order[:3] == [("f.example", "e"), ("mail.f.example", "c"), ("esp.example", "b")]
    assert sorted(order[3:]) == [("f.example", "d"), ("other.example", "a")]


def test_the_null_sender_has_an_empty_envelope_from_and_its_helo_as_mfrom(tmp_path):
    _report, root = _report_of(tmp_path, _evaluation(
        time.time(), envelope_from="", spf=(("mail.sender.example", "helo", "pass"),)))
    ids = root.find("d:record/d:identifiers", NS)
    assert _names(ids) == ["header_from", "envelope_from", "envelope_to"]
    assert ids.findtext("d:envelope_from", namespaces=NS) in ("", None)
    spf = root.find("d:record/d:auth_results/d:spf", NS)
    assert (spf.findtext("d:domain", namespaces=NS), spf.findtext("d:scope", namespaces=NS)) == \
        ("mail.sender.example", "mfrom")


def test_refused_rua_uris_are_named_in_the_error_element(tmp_path):
    _report, root = _report_of(tmp_path, _evaluation(
        time.time(), rua="mailto:agg@f.example,mailto:a%2Cb@f.example"))
    error = root.findtext("d:report_metadata/d:error", namespaces=NS)
    assert error == "rua: 1 URI(s) not used: 'mailto:a%2Cb@f.example' (a list of addresses " \
                    "(','), not one address)"


def test_extra_contact_info_comes_from_the_config(tmp_path):
    config = config_for(tmp_path, "extra_contact_info = https://test.example/dmarc\n")
    records = open_records(config.checks["dmarc"].history)
    try:
        records.record(_evaluation(time.time()))
    finally:
        records.close()
    (report,), _ = make_reports(config, since=3600, now=time.time() + 1)
    SCHEMA.validate(report.xml)
    assert ET.fromstring(report.xml).findtext("d:report_metadata/d:extra_contact_info",
                                              namespaces=NS) == "https://test.example/dmarc"


def test_a_domains_next_period_begins_where_its_last_report_ended(tmp_path):
    config = config_for(tmp_path)
    now = int(time.time())
    records = open_records(config.checks["dmarc"].history)
    try:
        records.record(_evaluation(now - 1000))
    finally:
        records.close()
    first, _ = make_reports(config, since=3600, now=now - 900)
    save(config, first, str(tmp_path / "out"))
    records = open_records(config.checks["dmarc"].history)
    try:
        records.record(_evaluation(now - 100))
    finally:
        records.close()
    second, _ = make_reports(config, since=3600, now=now)
    assert (second[0].begin, second[0].end) == (first[0].end, now)
    assert second[0].filename.startswith(f"mx.test.example!f.example!{first[0].end}!{now}!")
    # a period never starts after the rows it holds (a late row, an early end)
    records = open_records(config.checks["dmarc"].history)
    try:
        records.record(_evaluation(now - 50))
    finally:
        records.close()
    save(config, second, str(tmp_path / "out"))
    third, _ = make_reports(config, since=3600, now=now - 10)
    assert third[0].begin <= now - 50 and third[0].end == now - 10


_SUBJECT = re.compile(   # RFC 9990 "Email": dmarc-subject, FWS unfolded to one space
    r"Report Domain: (?P<domain>[A-Za-z0-9.-]+) Submitter: (?P<submitter>[A-Za-z0-9.-]+)"
    r"( Report-ID: <?(?P<rid>[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+(@[A-Za-z0-9.-]+)?)>?)?")


def test_the_report_mail_follows_rfc9990(history, tmp_path):
    config = loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{tmp_path / 'dmarc.sqlite'}\n" + REPORTER
                   + f"sender = dmarc-noreply@test.example\nsendmail = {_fake_sendmail(tmp_path)}\n")
    (report,), _ = make_reports(config, since=3600, now=time.time() + 1)
    resolver = Resolver(config.dns, backend=ZoneBackend(ZONE))
    try:
        send(config, report, resolver)
    finally:
        resolver.close()
    item = json.loads(sorted((tmp_path / "spool").iterdir())[0].read_text())
    msg = email.message_from_string(item["data"], policy=email.policy.default)
    m = _SUBJECT.fullmatch(" ".join(str(msg["Subject"]).split()))
    assert m and (m["domain"], m["submitter"], m["rid"]) == \
        ("rep-a.example", "mx.test.example", report.report_id)
    assert msg["Message-ID"] == f"<{report.report_id}@mx.test.example>"
    assert msg.get_content_type() == "multipart/mixed"
    text, attachment = list(msg.iter_parts())
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/gzip"
    assert attachment.get_filename() == report.filename
    assert gzip.decompress(attachment.get_content()) == report.xml


# external destinations: RFC 9990, "Verifying External Destinations"

VERIFY_ZONE = """
_dmarc.f.example. TXT "v=DMARC1; p=none; rua=mailto:agg@f.example"
f.example._report._dmarc.plain.example. TXT "v=DMARC1"
f.example._report._dmarc.redirect.example. TXT "v=DMARC1; rua=mailto:inbox@redirect.example,mailto:copy@redirect.example"
f.example._report._dmarc.elsewhere.example. TXT "v=DMARC1; rua=mailto:inbox@elsewhere.example,mailto:victim@victim.example"
f.example._report._dmarc.notfirst.example. TXT "p=none; v=DMARC1"
f.example._report._dmarc.garbage.example. TXT "v=DMARC1; this is no tag list"
f.example._report._dmarc.lower.example. TXT "v=dmarc1"
f.example._report._dmarc.two.example. TXT "spf1 whatever"
f.example._report._dmarc.two.example. TXT "v=DMARC1;"
"""


@pytest.mark.parametrize("address, expected", [
    ("agg@f.example", (True, None)),                          # same organizational domain
    ("agg@reports.f.example", (True, None)),
    ("agg@plain.example", (True, None)),
    ("agg@two.example", (True, None)),                        # one record of two passes
    ("agg@redirect.example", (True, ("inbox@redirect.example", "copy@redirect.example"))),
    ("agg@elsewhere.example", (False, None)),                 # override names another host
    ("agg@notfirst.example", (False, None)),                  # v=DMARC1 MUST come first
    ("agg@garbage.example", (False, None)),
    ("agg@lower.example", (False, None)),
    ("agg@nothing.example", (False, None)),
])
def test_external_destination_verification(address, expected):
    resolver = Resolver(SEND_CONFIG.dns, backend=ZoneBackend(VERIFY_ZONE))
    try:
        verdict = dmarc_report.verify(resolver, "f.example", Destination(address))
    finally:
        resolver.close()
    instead = None if verdict.instead is None else tuple(d.address for d in verdict.instead)
    assert (verdict.ok, instead) == expected, verdict.why


def test_a_name_over_the_dns_limits_is_not_authorized():
    resolver = Resolver(SEND_CONFIG.dns, backend=ZoneBackend(VERIFY_ZONE))
    try:
        verdict = dmarc_report.verify(resolver, ("a" * 60 + ".") * 3 + "example",
                                      Destination("agg@" + "b" * 50 + ".plain.example"))
    finally:
        resolver.close()
    assert not verdict.ok and "too long" in verdict.why


def test_the_override_rua_gets_the_report_and_the_original_does_not():
    fake = FakeRun()
    report = _report("f.example", "mailto:agg@redirect.example,mailto:agg@elsewhere.example")
    resolver = Resolver(SEND_CONFIG.dns, backend=ZoneBackend(VERIFY_ZONE))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(dmarc_report.subprocess, "run", fake)
            outcomes = dict(send(SEND_CONFIG, report, resolver))
    finally:
        resolver.close()
    assert fake.recipients == [["inbox@redirect.example"], ["copy@redirect.example"]]
    assert outcomes["agg@redirect.example"].startswith("sent: to the rua of its _report._dmarc")
    assert outcomes["agg@elsewhere.example"].startswith("skipped: the rua of")


def test_the_attachment_name_is_one_plain_parameter(history, tmp_path):
    """About 100 characters: not cut into RFC 2231 pieces with "!" %-encoded."""
    (report,), _ = make_reports(history, since=3600, now=time.time() + 1)
    data = dmarc_report.report_message(history.dmarc_report, report,
                                       Destination("agg@rep-a.example"))
    assert f'filename="{report.filename}"'.encode() in data
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))


_WORD = st.one_of(st.sampled_from(["", "y", "n", "p", "sp", "np", "psl", "treewalk", "pass",
                                   "none", "quarantine", "reject", "local_policy",
                                   "sampled_out", "policy_test_mode"]),
                  st.text(max_size=12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({
    "p": _WORD, "sp": _WORD, "np": _WORD, "adkim": _WORD, "aspf": _WORD, "result": _WORD,
    "disposition": _WORD, "override": _WORD, "override_comment": _WORD, "testing": _WORD,
    "discovery_method": _WORD, "policy_tag": _WORD, "record_error": _WORD, "fo": _WORD}),
    st.lists(st.tuples(_WORD, _WORD, _WORD, _WORD), max_size=4),
    st.lists(st.tuples(_WORD, _WORD, _WORD, _WORD), max_size=2))
def test_whatever_a_row_holds_the_report_is_valid(tmp_path_factory, fields, dkim, spf):
    path = tmp_path_factory.mktemp("any")
    report, root = _report_of(path, _evaluation(time.time(), dkim=tuple(dkim), spf=tuple(spf),
                                                **fields))
    assert report.messages == 1


@pytest.mark.parametrize("text, tags", [
    ("v=DMARC1", {"v": "DMARC1"}),
    ("v=DMARC1;", {"v": "DMARC1"}),
    ("V=DMARC1", {"v": "DMARC1"}),                 # as orgdomain.is_dmarc_record reads it
    ("v = DMARC1 ; rua=mailto:a@b.example", {"v": "DMARC1", "rua": "mailto:a@b.example"}),
    ("v=DMARC1; rua=mailto:a@b.example; rua=mailto:c@b.example", None),   # which rua?
    ("p=none; v=DMARC1", None),
    ("v=DMARC2", None),
    ("v=DMARC1; junk", None),
    ("", None),
])
def test_the_authorizing_record_is_a_dmarc_tag_list(text, tags):
    assert dmarc_report.dmarc_tags(text) == tags
