"""spf: the ptr mechanism against the RFC 7208 test suite's PTR cases
(openspf.org suite, release 2014.04, "PTR mechanism syntax": their zone data,
SPF-type records published as TXT) and DNS errors met while validating names;
then the check through the engine on the fake resolver
(tests/data/zones/auth.zone): MAIL FROM and HELO identities, limits, auth."""

from __future__ import annotations

import re

import pytest
import spf as pyspf
from hypothesis import HealthCheck, given, settings, strategies as st

from mailwarden.checks.spf import SpfCheck
from mailwarden.config import loads as _loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from tests.unit.authcase import RELAY, STRANGER, ar_header, of, props, run

REGISTRY = {SpfCheck.name: SpfCheck}

# the suite's zone data for its PTR section
SUITE_PTR = """
mail.example.com. A 1.2.3.4
mail.example.com. AAAA 2001:db8::1
e1.example.com. TXT "v=spf1 ptr/0 -all"
e2.example.com. TXT "v=spf1 ptr:example.com -all"
4.3.2.1.in-addr.arpa. PTR e3.example.com.
4.3.2.1.in-addr.arpa. PTR e4.example.com.
4.3.2.1.in-addr.arpa. PTR mail.example.com.
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.E.B.A.B.E.F.A.C.ip6.arpa. PTR e3.example.com.
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.D.0.1.0.0.2.ip6.arpa. PTR mail.Example.com.
e3.example.com. TXT "v=spf1 ptr -all"
e3.example.com. A 1.2.3.4
e3.example.com. AAAA CAFE:BABE::1
e4.example.com. TXT "v=spf1 ptr -all"
e5.example.com. TXT "v=spf1 ptr:"
e6.example.com. TXT "v=spf1 ptr:example.Com -all"
loop.example.com. TXT "v=spf1 ptr"
4.2.0.192.in-addr.arpa. PTR loop4.example.com.
loop4.example.com. CNAME CNAME.example.com.
cname.example.com. CNAME CNAME.example.com.
"""

# (name, host, mailfrom, helo, expected): the suite's PTR tests
SUITE_CASES = [
    ("ptr-cidr", "1.2.3.4", "foo@e1.example.com", "mail.example.com", "permerror"),
    ("ptr-match-target", "1.2.3.4", "foo@e2.example.com", "mail.example.com", "pass"),
    ("ptr-match-implicit", "1.2.3.4", "foo@e3.example.com", "mail.example.com", "pass"),
    ("ptr-nomatch-invalid", "1.2.3.4", "foo@e4.example.com", "mail.example.com", "fail"),
    ("ptr-match-ip6", "CAFE:BABE::1", "foo@e3.example.com", "mail.example.com", "pass"),
    ("ptr-empty-domain", "1.2.3.4", "foo@e5.example.com", "mail.example.com", "permerror"),
    ("ptr-case-change", "2001:db8::1", "bar@e6.example.com", "mail.example.com", "pass"),
    ("ptr-cname-loop", "192.0.2.4", "postmaster@loop.example.com", "loop.example.com",
     "neutral"),
]


def spf_result(zone: str, ip: str, mail_from: str, helo: str) -> str:
    cfg = _loads("[authserv]\nid = mx.test.example\n[check.spf]\nhelo = no\n",
                 registry=REGISTRY)
    engine = Engine(cfg, registry=REGISTRY, hostname="mx.test.example",
                    resolver=Resolver(cfg.dns, backend=ZoneBackend(zone)))
    try:
        verdict, _conn, _msg = run_offline(engine, client_ip=ip, helo=helo,
                                           mail_from=mail_from, rcpts=["b@rcpt.example"],
                                           message=b"From: a@example.com\r\n\r\nhi\r\n")
    finally:
        engine.close()
    (result,) = [r for r in verdict.results if r.check == "spf"]
    assert "internal error" not in result.reason, result.reason
    return result.result


@pytest.mark.parametrize("name,ip,mail_from,helo,expected", SUITE_CASES,
                         ids=[c[0] for c in SUITE_CASES])
def test_rfc7208_suite_ptr_section(name, ip, mail_from, helo, expected):
    assert spf_result(SUITE_PTR, ip, mail_from, helo) == expected


# -- DNS errors while validating PTR names (RFC 7208 §5.5) --------------------

IP = "192.0.2.9"
PTR = "9.2.0.192.in-addr.arpa."

# how a name's address lookup can go wrong, as zone lines for NAME
FAULTS = {
    "cname-loop": "{n}. CNAME {n}.",
    "cname-pair": "{n}. CNAME x-{n}.\nx-{n}. CNAME {n}.",
    "timeout": "{n}. TIMEOUT",
    "servfail": "{n}. SERVFAIL",
    "nxdomain": "",
    "other-address": "{n}. A 198.51.100.1",
}


def _zone(names: list, good: bool) -> str:
    lines = ['ptr.example. TXT "v=spf1 ptr:ptr.example ?all"']
    for i, fault in enumerate(names):
        name = f"h{i}.ptr.example"
        lines.append(f"{PTR} PTR {name}.")
        lines.append(FAULTS[fault].format(n=name))
    if good:
        lines.append(f"{PTR} PTR good.ptr.example.")
        lines.append(f"good.ptr.example. A {IP}")
    return "\n".join(lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=st.lists(st.sampled_from(sorted(FAULTS)), min_size=1, max_size=8),
       good=st.booleans())
def test_a_name_whose_address_lookup_fails_is_skipped(faults, good):
    """Whatever the other PTR names do, a validated one matches and none of
    their errors turns the result into temperror."""
    result = spf_result(_zone(faults, good), IP, "a@ptr.example", "mail.ptr.example")
    if faults[:10].count("nxdomain") > 2:
        # a name that does not exist is a void lookup, not an error: the
        # third one is over the limit of §4.6.4 (the good name comes last)
        assert result == "permerror"
    else:
        assert result == ("pass" if good else "neutral")


def test_a_failed_ptr_lookup_does_not_match():
    # RFC 7208 §5.5: "If a DNS error occurs while doing the PTR RR lookup,
    # then this mechanism fails to match."
    zone = ('ptr.example. TXT "v=spf1 ptr:ptr.example ?all"\n'
            f"{PTR} TIMEOUT\n")
    assert spf_result(zone, IP, "a@ptr.example", "mail.ptr.example") == "neutral"


def test_a_dns_error_elsewhere_is_still_temperror():
    zone = 'ptr.example. TXT "v=spf1 a:slow.ptr.example -all"\nslow.ptr.example. TIMEOUT\n'
    assert spf_result(zone, IP, "a@ptr.example", "mail.ptr.example") == "temperror"


# -- SPF ---------------------------------------------------------------------

@pytest.mark.parametrize("domain,result", [
    ("spf-pass.mw-auth.example", "pass"),
    ("spf-fail.mw-auth.example", "fail"),
    ("spf-soft.mw-auth.example", "softfail"),
    ("spf-neutral.mw-auth.example", "neutral"),
    ("spf-none.mw-auth.example", "none"),
    ("spf-perm.mw-auth.example", "permerror"),
    ("spf-two.mw-auth.example", "permerror"),
    ("spf-temp.mw-auth.example", "temperror"),
    ("spf-many.mw-auth.example", "permerror"),
    ("spf-void.mw-auth.example", "permerror"),
])
def test_spf_mailfrom_results(domain, result):
    verdict = run("[check.dmarc]\nenabled = no\n[policy]\ntemperror_action = accept\n",
                  mail_from=f"x@{domain}")
    mailfrom = [r for r in of(verdict, "spf") if "smtp.mailfrom" in props(r)]
    assert len(mailfrom) == 1
    (r,) = mailfrom
    assert (r.result, r.symbol) == (result, "SPF_" + result.upper())
    assert props(r)["smtp.mailfrom"] == f"x@{domain}"
    assert re.search(rf'spf={result}( reason="[^"]*")? smtp\.mailfrom=x@{re.escape(domain)};',
                     ar_header(verdict)), ar_header(verdict)


def test_spf_fail_carries_the_domains_explanation():
    verdict = run(mail_from="x@spf-fail.mw-auth.example")
    (r,) = [r for r in of(verdict, "spf") if r.symbol == "SPF_FAIL"]
    assert r.reason == "Mail from spf-fail.mw-auth.example must come from its own servers"
    assert verdict.action != "reject"          # scored, not refused, by default


def test_spf_fail_rejected_at_mail_from_when_configured():
    verdict = run("[check.spf]\nreject_fail = yes\n", mail_from="x@spf-fail.mw-auth.example")
    assert verdict.action == "reject"
    assert verdict.stage.name == "MAIL"
    assert verdict.reply.line() == ("550 5.7.23 Mail from spf-fail.mw-auth.example must "
                                    "come from its own servers")


def test_spf_limits_are_per_request_options():
    before = (pyspf.MAX_LOOKUP, pyspf.MAX_VOID_LOOKUPS)
    loose = run("[check.spf]\nmax_lookups = 20\nmax_void_lookups = 3\n",
                mail_from="x@spf-many.mw-auth.example")
    assert [r.result for r in of(loose, "spf") if r.symbol.startswith("SPF_") and
            "smtp.mailfrom" in props(r)] == ["pass"]
    loose_void = run("[check.spf]\nmax_void_lookups = 3\n", mail_from="x@spf-void.mw-auth.example")
    assert of(loose_void, "spf")[0].result == "pass"
    strict = run(mail_from="x@spf-void.mw-auth.example")
    assert of(strict, "spf")[0].result == "permerror"
    assert "Void lookup limit of 2" in of(strict, "spf")[0].reason
    assert (pyspf.MAX_LOOKUP, pyspf.MAX_VOID_LOOKUPS) == before


@pytest.mark.parametrize("ip,result", [(RELAY, "pass"), (STRANGER, "fail")])
def test_spf_helo_identity(ip, result):
    verdict = run(ip=ip, mail_from="x@spf-pass.mw-auth.example")
    (helo,) = [r for r in of(verdict, "spf") if "smtp.helo" in props(r)]
    assert (helo.result, helo.symbol) == (result, "SPF_HELO_" + result.upper())
    assert re.search(rf'spf={result}( reason="[^"]*")? smtp\.helo=relay\.mw-auth\.example',
                     ar_header(verdict))


def test_spf_null_sender_uses_the_helo_identity():
    verdict = run(mail_from="")
    (mailfrom,) = [r for r in of(verdict, "spf") if "smtp.mailfrom" in props(r)]
    assert mailfrom.result == "pass"
    assert props(mailfrom)["smtp.mailfrom"] == "postmaster@relay.mw-auth.example"


def test_spf_address_literal_helo_is_not_checked():
    verdict = run(helo="[198.51.100.141]", mail_from="x@spf-pass.mw-auth.example")
    (helo,) = [r for r in of(verdict, "spf") if "smtp.helo" in props(r)]
    assert helo.result == "none"


def test_spf_ipv6_client():
    verdict = run(ip="2001:db8::77", mail_from="x@spf-fail.mw-auth.example")
    assert of(verdict, "spf")[0].result == "fail"


def test_spf_skips_authenticated_clients_and_auth_is_reported():
    verdict = run(auth_user="alice", tls_version="TLSv1.3", mail_from="x@spf-fail.mw-auth.example")
    assert of(verdict, "spf") == []
    assert of(verdict, "dmarc") == []
    (auth,) = of(verdict, "auth")
    assert auth.result == "pass"
    assert "auth=pass smtp.auth=alice" in ar_header(verdict)
