"""SPF, DKIM and DMARC through a real Postfix, mailwarden and unbound.

DNS data is ``tests/data/zones/auth.zone`` plus DKIM keys made fresh for
this module (published by restarting unbound with them).  Every scenario is
also run through ``mailwarden scan`` with the same INI, and the two must
agree: same action, same Authentication-Results.
"""

from __future__ import annotations

import re

import dns.message
import pytest

from tests import dkimkeys
from tests.udpserver import UdpServer, forward

from tests.harness import AUTHSERV_ID, make_message, smtp_send

from tests.e2e.authscenario import (NOT_ALIGNED, RCPT, RELAY, STRANGER, assert_scan_agrees,
                                      our_ar, scenario)


@pytest.fixture(scope="module")
def keys(dns_server):
    made = {"rsa": dkimkeys.rsa_key(2048), "ed": dkimkeys.ed25519_key()}
    dns_server.add("\n".join([
        made["rsa"].zone_line("rsa", "mw-dkim.example"),
        made["ed"].zone_line("ed", "mw-dkim.example"),
        made["ed"].zone_line("ed", "mw-reject.example"),
    ]))
    return made


class DroppingDns(UdpServer):
    """A UDP DNS forwarder to unbound that never answers some names (a timeout)."""

    def __init__(self, upstream_port: int, drop: set):
        super().__init__()
        self.upstream_port = upstream_port
        self.drop = {n.lower().rstrip(".") for n in drop}

    def handle(self, data: bytes):
        try:
            name = dns.message.from_wire(data).question[0].name.to_text(True).lower()
        except (dns.exception.DNSException, IndexError):
            return None
        if name in self.drop:
            return None
        return forward(data, self.upstream_port)


# -- DKIM --------------------------------------------------------------------

def test_dkim_fresh_rsa_and_ed25519_pass(postfix, sink, mailwarden, keys):
    mw = mailwarden()
    outcome, ar, report = scenario(
        postfix, sink, mw, RELAY, "a@mw-dkim.example", "a@mw-dkim.example",
        sign=[(keys["rsa"], "rsa", "mw-dkim.example"), (keys["ed"], "ed", "mw-dkim.example")])
    assert outcome == "delivered"
    assert re.search(r"dkim=pass header\.d=mw-dkim\.example header\.i=@mw-dkim\.example "
                     r"header\.s=ed header\.a=ed25519-sha256 header\.b=\S{8,10};", ar), ar
    assert re.search(r"dkim=pass header\.d=mw-dkim\.example header\.i=@mw-dkim\.example "
                     r"header\.s=rsa header\.a=rsa-sha256", ar), ar
    assert_scan_agrees(outcome, ar, report)


@pytest.mark.parametrize("change,symbol_reason", [
    (lambda d: d.replace(b"Subject: auth e2e", b"Subject: [list] auth e2e"), "signature did not verify"),
    (lambda d: d + b"-- \r\nlist footer\r\n", "body hash mismatch"),
])
def test_dkim_fails_after_relay_changes(postfix, sink, mailwarden, keys, change, symbol_reason):
    mw = mailwarden()
    outcome, ar, report = scenario(
        postfix, sink, mw, RELAY, "a@mw-dkim.example", "a@mw-dkim.example",
        sign=[(keys["rsa"], "rsa", "mw-dkim.example"), (keys["ed"], "ed", "mw-dkim.example")],
        change=change)
    assert outcome == "delivered"
    assert len(re.findall(r"dkim=fail reason=\"" + symbol_reason, ar)) == 2, ar
    assert_scan_agrees(outcome, ar, report)


def test_dkim_folded_headers_reach_dkimpy_as_sent(postfix, sink, mailwarden, keys):
    """simple/simple canonicalization: any re-folding would break the signature."""
    mw = mailwarden()
    folded = ["X-Folded: one two\r\n\tthree   four\r\n  five"]
    data, msgid = make_message("folded", sender="a@mw-dkim.example", extra_headers=folded)
    data = dkimkeys.sign(data, keys["ed"], "ed", "mw-dkim.example",
                         headers=dkimkeys.SIGNED_HEADERS + [b"x-folded"],
                         canonicalize=(b"simple", b"simple"))
    result = smtp_send(postfix.smtp_port, xclient=RELAY, helo=RELAY["HELO"],
                       mail_from="a@mw-dkim.example", rcpts=[RCPT], data=data)
    assert result.accepted, result
    (ar,) = our_ar(sink.wait_for_match(msgid.encode()))
    assert "dkim=pass header.d=mw-dkim.example" in ar, (ar, mw.log_text()[-2000:])


# -- SPF ---------------------------------------------------------------------

def test_spf_mailfrom_and_helo(postfix, sink, mailwarden):
    mw = mailwarden()
    outcome, ar, report = scenario(postfix, sink, mw, STRANGER, "x@spf-soft.mw-auth.example",
                                   "x@spf-soft.mw-auth.example")
    assert outcome == "delivered"
    assert re.search(r"spf=softfail( reason=\"[^\"]*\")? "
                     r"smtp\.mailfrom=x@spf-soft\.mw-auth\.example", ar), ar
    assert re.search(r"spf=fail( reason=\"[^\"]*\")? smtp\.helo=relay\.mw-auth\.example", ar), ar
    assert_scan_agrees(outcome, ar, report)


def test_spf_fail_rejected_at_mail_from_when_configured(postfix, sink, mailwarden):
    mw = mailwarden({"check.spf": {"reject_fail": "yes"}})
    result = smtp_send(postfix.smtp_port, xclient=RELAY, helo=RELAY["HELO"],
                       mail_from="x@spf-fail.mw-auth.example", rcpts=[RCPT], data=b"x\r\n")
    assert (result.stage, result.code, result.enhanced) == ("mail", 550, "5.7.23"), result
    assert "must come from its own servers" in result.text
    report = mw.scan(b"From: x@spf-fail.mw-auth.example\r\n\r\nx\r\n", client_ip=RELAY["ADDR"],
                     helo=RELAY["HELO"], mail_from="x@spf-fail.mw-auth.example", rcpts=[RCPT])
    assert report["smtp_reply"].startswith("550 5.7.23")


# -- DMARC -------------------------------------------------------------------

SCENARIOS = [
    # id, client, MAIL FROM, From, DKIM-sign with d=, overrides, outcome, A-R must contain
    ("aligned-spf-only", RELAY, "a@mw-reject.example", "a@mw-reject.example", None, None,
     "delivered", "dmarc=pass header.from=mw-reject.example policy.dmarc=reject"),
    ("aligned-dkim-only", STRANGER, NOT_ALIGNED, "a@mw-reject.example", "mw-reject.example",
     None, "delivered", "dmarc=pass header.from=mw-reject.example"),
    ("neither-p-none", STRANGER, NOT_ALIGNED, "a@mw-none.example", None, None,
     "delivered", "dmarc=fail reason=\"not aligned with mw-none.example\" "
                  "header.from=mw-none.example policy.dmarc=none"),
    ("neither-p-quarantine", STRANGER, NOT_ALIGNED, "a@mw-quar.example", None, None,
     "quarantined", None),
    ("neither-p-reject", STRANGER, NOT_ALIGNED, "a@mw-reject.example", None, None,
     "550 5.7.1", None),
    ("neither-p-reject-pct-0", STRANGER, NOT_ALIGNED, "a@mw-pct.example", None, None,
     "quarantined", None),
    ("neither-p-reject-scored", STRANGER, NOT_ALIGNED, "a@mw-reject.example", None,
     {"check.dmarc": {"on_reject": "score"}, "policy": {"reject_score": "100",
                                                        "quarantine_score": "100"}},
     "delivered", "dmarc=fail"),
    ("subdomain-sp", STRANGER, NOT_ALIGNED, "a@news.mw-sub.example", None, None,
     "quarantined", None),
    ("nonexistent-subdomain-np", STRANGER, NOT_ALIGNED, "a@ghost.mw-sub.example", None, None,
     "550 5.7.1", None),
    ("relaxed-spf", RELAY, "a@mail.mw-reject.example", "a@mw-reject.example", None, None,
     "delivered", "dmarc=pass header.from=mw-reject.example"),
    ("strict-spf", RELAY, "a@mail.mw-strict.example", "a@mw-strict.example", None, None,
     "550 5.7.1", None),
    ("co-uk-pass", RELAY, "bounce@mwshop.co.uk", "a@news.mwshop.co.uk", None, None,
     "delivered", "dmarc=pass header.from=news.mwshop.co.uk policy.dmarc=reject"),
    ("co-uk-fail", STRANGER, "bounce@mwshop.co.uk", "a@news.mwshop.co.uk", None, None,
     "550 5.7.1", None),
    # RFC 9989's DNS tree walk: the policy of mw-walk.example found from a.b.c
    # below it, and from ten labels down past the eight-label shortcut
    ("walk-deep-reject", STRANGER, NOT_ALIGNED, "a@a.b.c.mw-walk.example", None, None,
     "550 5.7.1", None),
    ("walk-ten-labels-reject", STRANGER, NOT_ALIGNED, "a@a.b.c.d.e.f.g.h.mw-walk.example",
     None, None, "550 5.7.1", None),
    ("walk-deep-pass", RELAY, "bounce@mw-walk.example", "a@a.b.c.mw-walk.example", None, None,
     "delivered", "dmarc=pass header.from=a.b.c.mw-walk.example policy.dmarc=reject "
                  "(p=reject from _dmarc.mw-walk.example by tree walk, dis=none)"),
    # psd=n at dept.mw-walk.example: its own organization, mw-walk.example's
    # SPF pass no longer aligns (with the PSL it did)
    ("walk-psd-n", RELAY, "bounce@mw-walk.example", "a@x.dept.mw-walk.example", None, None,
     "delivered", "dmarc=fail reason=\"not aligned with x.dept.mw-walk.example\" "
                  "header.from=x.dept.mw-walk.example policy.dmarc=none "
                  "(p=none from _dmarc.dept.mw-walk.example by tree walk, dis=none)"),
    # psd=y at mw-psd.example: giant and mega are two organizations, and a
    # name under it that does not exist gets the PSD's np=reject
    ("walk-psd-y-tenants", STRANGER, "bounce@mega.mw-psd.example", "a@giant.mw-psd.example",
     None, None, "delivered", "dmarc=fail reason=\"not aligned with giant.mw-psd.example\" "
                              "header.from=giant.mw-psd.example policy.dmarc=none"),
    ("walk-psd-y-np", STRANGER, NOT_ALIGNED, "a@ghost.mw-psd.example", None, None,
     "550 5.7.1", None),
    # t=y: testing, p=reject applied as quarantine
    ("testing-t-y", STRANGER, NOT_ALIGNED, "a@mw-test.example", None, None,
     "quarantined", None),
]


@pytest.mark.parametrize("case", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_dmarc_scenarios(postfix, sink, mailwarden, keys, case):
    _id, client, mail_from, from_addr, dkim_domain, overrides, expected, ar_part = case
    mw = mailwarden(overrides)
    sign = [(keys["ed"], "ed", dkim_domain)] if dkim_domain else []
    outcome, ar, report = scenario(postfix, sink, mw, client, mail_from, from_addr, sign=sign)
    assert outcome == expected, (outcome, report, mw.log_text()[-2000:])
    if ar_part:
        assert ar_part in ar, ar
    assert_scan_agrees(outcome, ar, report)


def test_dmarc_tenants_of_a_private_suffix_do_not_align(postfix, sink, mailwarden):
    """eu.org is a private public suffix: a@attacker.eu.org passes SPF (its
    record covers the stranger), but that does not align with the From
    ceo@victim.eu.org, whose p=reject refuses the message."""
    mw = mailwarden()
    outcome, ar, report = scenario(postfix, sink, mw, STRANGER, "a@attacker.eu.org",
                                   "ceo@victim.eu.org")
    assert outcome == "550 5.7.1", (outcome, report, mw.log_text()[-2000:])
    symbols = {(r["check"], r["symbol"]) for r in report["results"]}
    assert {("spf", "SPF_PASS"), ("dmarc", "DMARC_FAIL_REJECT")} <= symbols, report
    assert report["smtp_reply"] == \
        "550 5.7.1 Message rejected: it fails the DMARC policy of victim.eu.org"
    assert_scan_agrees(outcome, ar, report)
    # the tenant's own subdomain still aligns with it
    outcome, ar, report = scenario(postfix, sink, mw, RELAY, "bounce@mail.victim.eu.org",
                                   "ceo@victim.eu.org")
    assert outcome == "delivered", (outcome, report)
    assert "dmarc=pass header.from=victim.eu.org policy.dmarc=reject" in ar, ar
    assert_scan_agrees(outcome, ar, report)


def test_dmarc_authenticated_client_never_rejected(postfix, sink, mailwarden):
    mw = mailwarden({"check.submission": {"require_tls_for_auth": "no"}})
    outcome, ar, report = scenario(postfix, sink, mw, STRANGER, NOT_ALIGNED,
                                   "a@mw-reject.example", xclient_extra={"LOGIN": "alice"})
    assert outcome == "delivered"
    assert "auth=pass smtp.auth=alice" in ar and "dmarc=" not in ar, ar
    assert_scan_agrees(outcome, ar, report)


def test_forged_authentication_results_removed(postfix, sink, mailwarden):
    mw = mailwarden()
    forged = f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=mw-reject.example"
    kept = "Authentication-Results: elsewhere.example; spf=pass smtp.mailfrom=a@x.example"
    outcome, ar, report = scenario(postfix, sink, mw, STRANGER, NOT_ALIGNED,
                                   "a@mw-none.example", extra_headers=[forged, kept])
    assert outcome == "delivered"
    assert "dmarc=fail" in ar
    got = sink.messages[-1]
    values = got.header_values("Authentication-Results")
    assert len(our_ar(got)) == 1 and any(v.startswith("elsewhere.example;") for v in values)
    assert [v for n, v in report["headers_removed"]] == [forged.split(": ", 1)[1]]


@pytest.mark.parametrize("overrides,expected", [
    (None, "451 4.7.1"),
    ({"check.dmarc": {"tempfail_on_error": "no"}}, "delivered"),
])
def test_dmarc_dns_timeout(postfix, sink, mailwarden, dns_server, overrides, expected):
    proxy = DroppingDns(dns_server.port, {"_dmarc.mw-dnsfail.example"}).start()
    try:
        mw = mailwarden(overrides, dns_port=proxy.port)
        outcome, ar, _report = scenario(postfix, sink, mw, RELAY, "a@mw-dnsfail.example",
                                        "a@mw-dnsfail.example")
    finally:
        proxy.stop()
    assert outcome == expected
    if ar is not None:
        assert "dmarc=temperror" in ar, ar
    assert_scan_agrees(outcome, ar, _report)
