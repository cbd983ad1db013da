"""DMARC failure reports (RFC 9991): mailwarden.dmarc_failure on the fake resolver."""

from __future__ import annotations

import email
import email.policy
import re
import types

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mailwarden import dmarc_failure
from mailwarden.config import ConfigError, FailureOptions, loads
from mailwarden.dmarc_failure import (Incident, Tally, build_report, kinds_wanted,
                                      redact_addresses)
from mailwarden.dmarc_report import Destination
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

ZONE = """
ruf-a.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.ruf-a.example. TXT "v=DMARC1; p=reject; ruf=mailto:ruf@ruf-a.example,mailto:forensic@reports.example,mailto:x@unauth.example; rua=mailto:agg@ruf-a.example"
ruf-a.example._report._dmarc.reports.example. TXT "v=DMARC1"
ruf-one.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.ruf-one.example. TXT "v=DMARC1; p=none; fo=1; ruf=mailto:ruf@ruf-one.example"
ruf-zero.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.ruf-zero.example. TXT "v=DMARC1; p=none; ruf=mailto:ruf@ruf-zero.example"
_dmarc.ruf-s.example. TXT "v=DMARC1; p=none; fo=s; ruf=mailto:ruf@ruf-s.example"
ruf-s.example. TXT "v=spf1 -all"
_dmarc.ruf-no.example. TXT "v=DMARC1; p=reject"
other.example. TXT "v=spf1 -all"
"""
INSIDE, OUTSIDE = "198.51.100.7", "203.0.113.9"
SENDER = "dmarc-failures@mx.test.example"


def config_text(extra=""):
    return ("[authserv]\nid = mx.test.example\n"
            f"[dmarc_failure]\nenabled = yes\nsender = {SENDER}\n" + extra)


class Clock:
    def __init__(self):
        self.now = 1_750_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def setup():
    """(make(extra INI) -> (engine, outbox, sent), clock)"""
    engines = []
    clock = Clock()

    def make(extra=""):
        config = loads(config_text(extra))
        engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                        hostname="mx.test.example", clock=clock)
        engines.append(engine)
        outbox = next(c for c in engine.checks if c.name == "dmarc").failure
        sent = []

        def runner(argv, data):
            sent.append((argv, data))
            return 0, ""
        outbox.runner = runner
        outbox.tally = Tally()
        return engine, outbox, sent
    yield make, clock
    for engine in engines:
        engine.close()


def deliver(engine, outbox, *, mail_from="x@other.example", header_from="a@ruf-a.example",
            ip=OUTSIDE, subject="test", extra=b"", body=b"Hello.\r\n",
            rcpts=("bob@rcpt.example",)):
    message = (f"From: Alice <{header_from}>\r\nTo: Bob <bob@rcpt.example>\r\n"
               f"Subject: {subject}\r\nMessage-ID: <m1@ruf-a.example>\r\n").encode() + extra \
        + b"\r\n" + body
    verdict, _conn, msg = run_offline(engine, client_ip=ip, helo="mail.sender.example",
                                      mail_from=mail_from, rcpts=list(rcpts), message=message,
                                      queue_id="4AE9D403CC")
    if msg is not None:
        msg.close()
    assert outbox.drain(), "the sender thread did not finish"
    return verdict


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def feedback(report):
    parts = list(report.iter_parts())
    (fields,) = parts[1].get_payload()
    return fields


# -- when, where, what ---------------------------------------------------------

def test_off_by_default():
    config = loads("[authserv]\nid = mx.test.example\n")
    assert config.dmarc_failure.enabled is False
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    try:
        assert next(c for c in engine.checks if c.name == "dmarc").failure is None
    finally:
        engine.close()


def test_reject_failure_reports_to_each_authorized_destination(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    verdict = deliver(engine, outbox)
    assert verdict.action == "reject"
    to = sorted(argv[-1] for argv, _ in sent)
    assert to == ["forensic@reports.example", "ruf@ruf-a.example"]   # not x@unauth.example
    assert outbox.tally.snapshot()["unauthorized"] == 1
    assert outbox.tally.snapshot()["sent"] == 2
    argv, data = sent[0]
    assert argv[-4:-1] == ["-f", SENDER, "--"] and "-i" in argv
    report = parse(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "feedback-report"
    assert [p.get_content_type() for p in report.iter_parts()] == \
        ["text/plain", "message/feedback-report", "text/rfc822-headers"]
    assert report["Subject"] == "FW: test"
    assert report["From"] == SENDER and report["Auto-Submitted"] == "auto-generated"
    fields = feedback(report)
    assert fields["Feedback-Type"] == "auth-failure"
    assert fields["Version"] == "1"
    assert fields["User-Agent"].startswith("mailwarden/")
    assert fields["Auth-Failure"] == "dmarc"
    assert fields["Reported-Domain"] == "ruf-a.example"
    assert fields["Source-IP"] == OUTSIDE
    assert fields["Identity-Alignment"] == "none"       # nothing aligned was even tried
    assert fields["Delivery-Result"] == "reject"
    assert "Original-Envelope-Id" not in fields         # the client gave no ENVID
    assert "Our queue id: 4AE9D403CC" in list(report.iter_parts())[0].get_content()
    assert re.fullmatch(r"<[a-z2-7]{8}@other\.example>", fields["Original-Mail-From"])
    assert fields["Arrival-Date"].endswith("GMT")
    ar = " ".join(fields["Authentication-Results"].split())
    assert ar.startswith("mx.test.example;")
    assert "dmarc=fail" in ar and "header.from=ruf-a.example" in ar and "spf=fail" in ar
    assert "Original-Rcpt-To" not in fields
    # the real sender x@other.example is not named (a pseudonym may end in x)
    assert re.search(r"(?<![a-z2-7])x@other\.example", ar) is None
    assert re.search(r"smtp\.mailfrom=[a-z2-7]{8}@other\.example", ar)


def test_aligned_spf_failure_names_spf_and_its_record(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    deliver(engine, outbox, mail_from="bounce@ruf-a.example")
    fields = feedback(parse(sent[0][1]))
    assert fields["Identity-Alignment"] == "spf"
    assert fields["SPF-DNS"] == 'txt : ruf-a.example : "v=spf1 ip4:198.51.100.0/24 -all"'
    assert "DKIM-Domain" not in fields


def test_no_ruf_no_report(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    verdict = deliver(engine, outbox, header_from="a@ruf-no.example")
    assert verdict.action == "reject" and sent == []


# -- fo ------------------------------------------------------------------------

@pytest.mark.parametrize("fo,result,spf,dkim,dkim_failed,spf_failed,kinds", [
    ("0", "fail", False, False, False, False, ["dmarc"]),
    ("", "fail", False, False, False, False, ["dmarc"]),          # fo defaults to 0
    ("0", "pass", True, False, False, False, []),
    ("1", "pass", True, False, False, False, ["dmarc"]),          # one did not align
    ("1", "pass", True, True, False, False, []),
    ("d", "pass", True, True, True, False, ["signature"]),
    ("d", "fail", False, False, True, False, ["dmarc", "signature"]),
    ("0:s", "fail", False, False, False, True, ["dmarc", "spf"]),
    ("s", "pass", False, True, False, True, ["spf"]),
    ("1:d:s", "fail", False, False, True, True, ["dmarc", "signature", "spf"]),
])
def test_fo_semantics(fo, result, spf, dkim, dkim_failed, spf_failed, kinds):
    assert kinds_wanted(fo, result, spf, dkim, dkim_failed, spf_failed) == kinds


def test_fo_1_reports_a_dmarc_pass_without_aligned_dkim(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    verdict = deliver(engine, outbox, mail_from="a@ruf-one.example",
                      header_from="a@ruf-one.example", ip=INSIDE)
    assert verdict.action == "accept"
    (argv, data), = sent
    assert argv[-1] == "ruf@ruf-one.example"
    fields = feedback(parse(data))
    assert fields["Auth-Failure"] == "dmarc" and "dmarc=pass" in fields["Authentication-Results"]


def test_fo_0_does_not_report_a_pass(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    deliver(engine, outbox, mail_from="a@ruf-zero.example", header_from="a@ruf-zero.example",
            ip=INSIDE)
    assert sent == []


def test_fo_s_sends_an_spf_failure_report(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    deliver(engine, outbox, mail_from="a@ruf-s.example", header_from="a@ruf-s.example")
    # fo=s without 0 or 1: the default 0 applies as well, and the message fails DMARC
    reports = {feedback(parse(d))["Auth-Failure"]: feedback(parse(d)) for _a, d in sent}
    assert sorted(reports) == ["dmarc", "spf"]
    assert reports["spf"]["SPF-DNS"] == 'txt : ruf-s.example : "v=spf1 -all"'


def test_psd_record_is_never_asked():
    outbox = dmarc_failure.Outbox(FailureOptions(enabled=True, sender=SENDER),
                                  types.SimpleNamespace())
    record = types.SimpleNamespace(ruf="mailto:r@psd.example", psd="y", fo="1",
                                   domain="psd.example")
    row = ("a.psd.example", record, "fail", "none", "", False, False, [], [])
    assert outbox.offer(None, [row], {}, lambda a, b, m: False) == 0


# -- redaction -----------------------------------------------------------------

def test_headers_only_redacts_local_parts_and_keeps_ids(setup):
    make, _clock = setup
    engine, outbox, sent = make()
    deliver(engine, outbox, extra=b"Cc: carol.secret@rcpt.example\r\n")
    original = list(parse(sent[0][1]).iter_parts())[2]
    text = original.get_content()
    assert "carol.secret" not in text and "alice@" not in text.lower()
    assert "bob@" not in text and "@rcpt.example" in text and "@ruf-a.example" in text
    assert "Message-ID: <m1@ruf-a.example>" in text
    assert "Hello" not in text


def test_redacted_body_keeps_text_drops_attachments_defangs_urls(setup):
    make, _clock = setup
    engine, outbox, sent = make("content = redacted\n")
    body = (b"--B\r\nContent-Type: text/plain\r\n\r\nWrite to dave@private.example or "
            b"see https://evil.example/x\r\n--B\r\nContent-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename=secret.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--B--\r\n")
    deliver(engine, outbox, extra=b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=B\r\n", body=body)
    part = list(parse(sent[0][1]).iter_parts())[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_content()
    assert inner.get_content_type() == "text/plain"
    text = inner.get_content()
    assert "hxxps://evil.example/x" in text and "https://" not in text
    assert "dave@" not in text and "@private.example" in text
    assert "[ part removed: application/pdf" in text
    assert "JVBERi0" not in text and "secret.pdf" not in text
    assert "Write to" in text


def test_pseudonyms_are_stable_and_hide_the_local_part():
    key = b"k" * 16
    a = redact_addresses("alice@x.example", key)
    assert a == redact_addresses("Alice@x.example", key) and a.endswith("@x.example")
    assert "alice" not in a and a != redact_addresses("bob@x.example", key)


# -- rate limit, queue, loops ----------------------------------------------------

def test_rate_limit_per_destination_domain_and_period(setup):
    make, clock = setup
    engine, outbox, sent = make("rate_limit = 1\nrate_period = 1h\n")
    deliver(engine, outbox)
    assert len(sent) == 2
    deliver(engine, outbox)
    assert len(sent) == 2
    assert outbox.tally.snapshot()["rate_limited"] == 2
    clock.now += 3601
    deliver(engine, outbox)
    assert len(sent) == 4


def test_a_full_queue_drops_and_counts(setup):
    make, _clock = setup
    engine, outbox, sent = make("queue_size = 1\n")
    outbox._ensure_worker = lambda: None            # nobody takes from the queue
    for subject in ("one", "two"):
        run_offline(engine, client_ip=OUTSIDE, helo="h.example", mail_from="x@other.example",
                    rcpts=["bob@rcpt.example"],
                    message=f"From: a@ruf-a.example\r\nSubject: {subject}\r\n\r\nx\r\n".encode())
    assert outbox.queue.qsize() == 1
    assert outbox.tally.snapshot()["queue_full"] == 1
    assert sent == []


@pytest.mark.parametrize("how", ["multipart-report", "null-sender", "auto-submitted",
                                 "aggregate", "to-ruf", "from-us"])
def test_never_a_report_about_a_report(setup, how):
    make, _clock = setup
    engine, outbox, sent = make()
    kw = {}
    if how == "multipart-report":
        kw["extra"] = (b"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
                       b"report-type=feedback-report; boundary=Z\r\n")
        kw["body"] = b"--Z\r\nContent-Type: text/plain\r\n\r\nx\r\n--Z--\r\n"
    elif how == "null-sender":
        kw["mail_from"] = ""
    elif how == "auto-submitted":
        kw["extra"] = b"Auto-Submitted: auto-generated\r\n"
    elif how == "aggregate":
        kw["subject"] = "Report Domain: ruf-a.example Submitter: mx.example Report-ID: <1>"
    elif how == "to-ruf":
        kw["rcpts"] = ("ruf@ruf-a.example",)
    else:
        kw["mail_from"] = SENDER
    verdict = deliver(engine, outbox, **kw)
    assert verdict.action == "reject"
    assert sent == []
    assert outbox.tally.snapshot()["report_loop"] == 1


def test_a_failing_sendmail_is_counted(setup):
    make, _clock = setup
    engine, outbox, _sent = make()
    outbox.runner = lambda argv, data: (75, "queue file write error\n")
    deliver(engine, outbox)
    assert outbox.tally.snapshot()["failed"] == 2


# -- configuration ---------------------------------------------------------------

@pytest.mark.parametrize("text,key", [
    ("[dmarc_failure]\nenabled = yes\n", "sender"),
    ("[dmarc_failure]\nsender = a b@x.example\n", "sender"),
    ("[dmarc_failure]\nsender = a%b@x.example\n", "sender"),
    ("[dmarc_failure]\nsender = -f@x.example\n", "sender"),
    ("[dmarc_failure]\nsender = a@x.example, b@x.example\n", "sender"),
    ("[dmarc_failure]\ncontent = all\n", "content"),
    ("[dmarc_failure]\nrate_limit = 0\n", "rate_limit"),
    ("[dmarc_failure]\nrate_period = 0s\n", "rate_period"),
])
def test_bad_settings_are_refused_with_their_line(text, key):
    with pytest.raises(ConfigError) as err:
        loads("[authserv]\nid = mx.test.example\n" + text, "mw.ini")
    assert f"[dmarc_failure] {key}:" in str(err.value) and "mw.ini:" in str(err.value)


def test_metrics_show_what_was_withheld():
    from mailwarden.metrics import Metrics
    before = dmarc_failure.TALLY.snapshot()["rate_limited"]
    dmarc_failure.TALLY.add("rate_limited")
    page = Metrics().page().decode()
    assert f'mailwarden_dmarc_failure_reports_total{{outcome="rate_limited"}} {before + 1}.0' \
        in page


# -- hostile input is data ---------------------------------------------------------

_hostile = st.lists(st.sampled_from(list("aZ0 :;<>@\"\\\r\n\t-=.,()[]")
                                    + ["\x00", "\x7f", "\u2028", "é", "--", "Bcc: x@y.example",
                                       "\r\nX-Injected: 1", "\r\n\r\n--boundary\r\n",
                                       "Content-Type: text/html"]),
                    max_size=20).map("".join)

TOP = {"From", "To", "Date", "Message-ID", "Subject", "Auto-Submitted", "MIME-Version",
       "Content-Type"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(from_=_hostile, subject=_hostile, mail_from=_hostile, value=_hostile,
       content=st.sampled_from(["headers", "redacted"]))
def test_hostile_fields_cannot_add_headers_or_parts(from_, subject, mail_from, value, content):
    headers = (("From", (" " + from_).encode("utf-8", "surrogateescape")),
               ("Subject", (" " + subject).encode()),
               ("X-Other", (" " + value).encode()),
               ("Bad Name", b" x"))
    incident = Incident(
        auth_failure="dmarc", policy_domain="ruf-a.example", header_from="ruf-a.example",
        destinations=(), identity_alignment="none", dkim=(("ruf-a.example", value, value),),
        spf_domain="", authentication_results="mx.test.example; dmarc=fail",
        delivery_result="reject", mail_from=mail_from, source_ip=value, arrival=1e9,
        queue_id=value, envelope_id=value, headers=headers, body=value.encode(),
        body_size=len(value))
    options = FailureOptions(enabled=True, sender=SENDER, content=content)
    data = build_report(options, incident, Destination("ruf@ruf-a.example"), now=1e9,
                        key=b"k" * 16, reporting_mta="mx.test.example")
    report = parse(data)
    assert set(report.keys()) == TOP
    assert report["To"] == "ruf@ruf-a.example" and report["From"] == SENDER
    # a long Subject is folded after the colon: the parser keeps that white space
    assert "\n" not in report["Subject"] and report["Subject"].lstrip().startswith("FW: ")
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/feedback-report",
        "text/rfc822-headers" if content == "headers" else "message/rfc822"]
    fields = feedback(report)
    assert set(fields.keys()) <= {
        "Feedback-Type", "Version", "User-Agent", "Auth-Failure", "Authentication-Results",
        "Identity-Alignment", "Original-Mail-From", "Arrival-Date", "Reporting-MTA",
        "Reported-Domain", "Source-IP", "Original-Envelope-Id", "Delivery-Result",
        "DKIM-Domain", "DKIM-Identity", "DKIM-Selector"}
    assert len(fields.keys()) == len(set(fields.keys()))
    assert fields["Feedback-Type"] == "auth-failure" and fields["Auth-Failure"] == "dmarc"
    if content == "headers":
        shown = email.message_from_string(parts[2].get_content(), policy=email.policy.default)
        assert [k for k in shown.keys()] == ["From", "Subject", "X-Other"]
    else:
        inner = parts[2].get_content()
        assert sorted(inner.keys()) == sorted(["From", "Subject", "X-Other", "MIME-Version",
                                               "Content-Type", "Content-Transfer-Encoding"])
        assert not inner.is_multipart()
