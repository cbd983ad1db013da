"""spf, dkim, dmarc and auth on the fake resolver (tests/data/zones/auth.zone)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import authres
import pytest
import spf as pyspf

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from tests import dkimkeys

DATA = Path(__file__).resolve().parents[1] / "data"
ZONE = (DATA / "zones" / "auth.zone").read_text()
BASE = "[authserv]\nid = mx.test.example\n"
RELAY = "198.51.100.141"
STRANGER = "198.51.100.142"


@pytest.fixture(scope="module")
def keys():
    """Fresh keys, published under mw-dkim.example and the DMARC test domains."""
    made = {"rsa": dkimkeys.rsa_key(2048), "ed": dkimkeys.ed25519_key(),
            "rsa1024": dkimkeys.rsa_key(1024)}
    lines = [made["rsa"].zone_line("rsa", "mw-dkim.example"),
             made["ed"].zone_line("ed", "mw-dkim.example"),
             made["rsa1024"].zone_line("short", "mw-dkim.example"),
             made["ed"].zone_line("ed", "mw-reject.example"),
             made["ed"].zone_line("ed", "mail.mw-strict.example"),
             made["ed"].zone_line("ed", "mail.mw-reject.example")]
    made["zone"] = "\n".join(lines)
    return made


def message(sender="a@mw-dkim.example", subject="test", body="Hello.\r\n", extra=b""):
    return (f"From: Alice <{sender}>\r\nTo: bob@rcpt.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x.example>\r\n"
            ).encode() + extra + b"\r\n" + body.encode()


def engine_for(text="", zone_extra="", **kw):
    cfg = loads(BASE + text)
    backend = ZoneBackend(ZONE + "\n" + zone_extra)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=backend),
                  hostname="mx.test.example", **kw)


def run(text="", zone_extra="", *, ip=RELAY, helo="relay.mw-auth.example",
        mail_from="a@mw-dkim.example", msg=None, engine=None, **kw):
    own = engine is None
    engine = engine or engine_for(text, zone_extra)
    try:
        verdict, _conn, _msg = run_offline(
            engine, client_ip=ip, helo=helo, mail_from=mail_from,
            rcpts=kw.pop("rcpts", ["bob@rcpt.example"]),
            message=msg if msg is not None else message(), **kw)
    finally:
        if own:
            engine.close()
    return verdict


def of(verdict, check):
    return [r for r in verdict.results if r.check == check]


def props(result):
    return {p[0]: p[1] for p in result.properties}


def ar_header(verdict):
    return dict(verdict.headers_added)["Authentication-Results"]


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


# -- DKIM --------------------------------------------------------------------

def test_rfc8463_example_both_signatures_pass():
    raw = (DATA / "dkim" / "rfc8463-a3.eml").read_bytes()
    verdict = run(msg=raw, mail_from="joe@football.example.com")
    results = of(verdict, "dkim")
    assert [(r.result, props(r)["header.a"], props(r)["header.s"]) for r in results] == [
        ("pass", "ed25519-sha256", "brisbane"), ("pass", "rsa-sha256", "test")]
    ar = ar_header(verdict)
    assert "dkim=pass header.d=football.example.com header.i=@football.example.com " \
           "header.s=brisbane header.a=ed25519-sha256 header.b=\"/gCrinpc\"" in ar


def test_rfc8463_example_fails_after_one_body_byte_changes():
    raw = (DATA / "dkim" / "rfc8463-a3.eml").read_bytes()
    changed = raw.replace(b"We lost the game.", b"We lost the gamE.")
    assert len(changed) == len(raw) and changed != raw
    results = of(run(msg=changed, mail_from="joe@football.example.com"), "dkim")
    assert [(r.result, r.symbol) for r in results] == [("fail", "DKIM_BODY_MISMATCH")] * 2


@pytest.mark.parametrize("which,selector", [("rsa", "rsa"), ("ed", "ed")])
def test_dkim_fresh_keys_pass_then_fail_after_relay_changes(keys, which, selector):
    signed = dkimkeys.sign(message(), keys[which], selector, "mw-dkim.example")
    (ok,) = of(run(zone_extra=keys["zone"], msg=signed), "dkim")
    assert (ok.result, ok.symbol) == ("pass", "DKIM_PASS")
    rewritten = signed.replace(b"Subject: test", b"Subject: [list] test")
    (bad,) = of(run(zone_extra=keys["zone"], msg=rewritten), "dkim")
    assert (bad.result, bad.symbol) == ("fail", "DKIM_FAIL")
    appended = signed + b"-- \r\nA mailing list footer\r\n"
    (bad,) = of(run(zone_extra=keys["zone"], msg=appended), "dkim")
    assert (bad.result, bad.symbol) == ("fail", "DKIM_BODY_MISMATCH")


@pytest.mark.parametrize("which,selector", [("rsa", "rsa"), ("ed", "ed")])
def test_dkim_a_from_added_above_the_signed_one_breaks_the_signature(keys, which, selector):
    """RFC 6376 §8.15: a verifier asks for one From more than was signed."""
    signed = dkimkeys.sign(message(), keys[which], selector, "mw-dkim.example")
    forged = b"From: <boss@mw-dkim.example>\r\n" + signed
    (bad,) = of(run(zone_extra=keys["zone"], msg=forged), "dkim")
    assert (bad.result, bad.symbol) == ("fail", "DKIM_FAIL")


def test_dkim_a_damaged_rsa_signature_fails(keys):
    signed = dkimkeys.sign(message(), keys["rsa"], "rsa", "mw-dkim.example")
    head, _, rest = signed.partition(b" b=")
    damaged = head + b" b=" + (b"A" if rest[:1] != b"A" else b"B") + rest[1:]
    (bad,) = of(run(zone_extra=keys["zone"], msg=damaged), "dkim")
    assert (bad.result, bad.symbol) == ("fail", "DKIM_FAIL")
    unreadable = head + b" b=!!" + rest[2:]
    (bad,) = of(run(zone_extra=keys["zone"], msg=unreadable), "dkim")
    assert (bad.result, bad.symbol) == ("neutral", "DKIM_INVALID")


def test_dkim_body_length_tag_covers_only_what_was_signed(keys):
    import dkim
    msg = message()
    signature = dkim.sign(msg, b"rsa", b"mw-dkim.example", keys["rsa"].private,
                          include_headers=list(dkimkeys.SIGNED_HEADERS), length=True,
                          canonicalize=(b"relaxed", b"relaxed"))
    appended = signature + msg + b"-- \r\nA mailing list footer\r\n"
    (ok,) = of(run(zone_extra=keys["zone"], msg=appended), "dkim")
    assert (ok.result, ok.symbol) == ("pass", "DKIM_PASS")


def test_dkim_folding_whitespace_is_verified_as_received(keys):
    """simple header canonicalization: a re-folded header would break it."""
    msg = message(extra=b"X-Long: one\r\n\ttwo  three\r\n")
    signed = dkimkeys.sign(msg, keys["ed"], "ed", "mw-dkim.example",
                           headers=dkimkeys.SIGNED_HEADERS + [b"x-long"],
                           canonicalize=(b"simple", b"simple"))
    (ok,) = of(run(zone_extra=keys["zone"], msg=signed), "dkim")
    assert ok.result == "pass"


def _with_selector(keys, selector, domain="mw-dkim.example"):
    return dkimkeys.sign(message(), keys["ed"], selector, domain)


@pytest.mark.parametrize("selector,result,symbol", [
    ("nokey", "permerror", "DKIM_NO_KEY"),
    ("revoked", "fail", "DKIM_KEY_REVOKED"),
    ("broken", "permerror", "DKIM_KEY_INVALID"),
    ("slow", "temperror", "DKIM_TEMPERROR"),
])
def test_dkim_key_problems(keys, selector, result, symbol):
    (r,) = of(run("[policy]\ntemperror_action = accept\n", zone_extra=keys["zone"],
                  msg=_with_selector(keys, selector)), "dkim")
    assert (r.result, r.symbol) == (result, symbol)
    assert props(r)["header.s"] == selector


def test_dkim_key_type_must_match_the_algorithm(keys):
    # an Ed25519 signature pointing at the RSA key's selector
    (r,) = of(run(zone_extra=keys["zone"], msg=_with_selector(keys, "rsa")), "dkim")
    assert (r.result, r.symbol) == ("permerror", "DKIM_KEY_INVALID")


def test_dkim_short_key_is_policy(keys):
    signed = dkimkeys.sign(message(), keys["rsa1024"], "short", "mw-dkim.example")
    (r,) = of(run("[check.dkim]\nmin_key_bits = 2048\n", zone_extra=keys["zone"],
                  msg=signed), "dkim")
    assert (r.result, r.symbol) == ("policy", "DKIM_KEY_TOO_SHORT")
    (r,) = of(run(zone_extra=keys["zone"], msg=signed), "dkim")
    assert r.result == "pass"


@pytest.mark.parametrize("setting,result,symbol", [
    ("fail", "fail", "DKIM_SHA1"), ("policy", "policy", "DKIM_SHA1"), ("pass", "pass", "DKIM_PASS"),
])
def test_dkim_rsa_sha1_as_configured(keys, setting, result, symbol):
    signed = dkimkeys.sign(message(), keys["rsa"], "rsa", "mw-dkim.example",
                           algorithm=b"rsa-sha1")
    (r,) = of(run(f"[check.dkim]\nrsa_sha1 = {setting}\n", zone_extra=keys["zone"],
                  msg=signed), "dkim")
    assert (r.result, r.symbol) == (result, symbol)


def test_dkim_expired_signature_is_neutral(keys):
    signed = _with_selector(keys, "ed")
    expired = signed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1000;", 1)
    (r,) = of(run(zone_extra=keys["zone"], msg=expired), "dkim")
    assert (r.result, r.symbol) == ("neutral", "DKIM_EXPIRED")


def test_dkim_signature_without_from_is_neutral(keys):
    signed = dkimkeys.sign(message(), keys["ed"], "ed", "mw-dkim.example",
                           headers=[b"from", b"subject"])
    unsigned_from = signed.replace(b"h=from : subject", b"h=subject", 1)
    assert unsigned_from != signed
    (r,) = of(run(zone_extra=keys["zone"], msg=unsigned_from), "dkim")
    assert (r.result, r.symbol) == ("neutral", "DKIM_INVALID")


def test_dkim_syntax_error_is_neutral():
    msg = b"DKIM-Signature: v=1; a=rsa-sha256; d=x.example\r\n" + message()
    (r,) = of(run(msg=msg), "dkim")
    assert (r.result, r.symbol) == ("neutral", "DKIM_INVALID")


def test_dkim_unsigned_message_is_none():
    (r,) = of(run(), "dkim")
    assert (r.result, r.symbol) == ("none", "DKIM_NONE")


def test_dkim_checks_every_signature_up_to_the_maximum(keys):
    twice = dkimkeys.sign(_with_selector(keys, "ed"), keys["rsa"], "rsa", "mw-dkim.example")
    assert [r.result for r in of(run(zone_extra=keys["zone"], msg=twice), "dkim")] == \
        ["pass", "pass"]
    assert len(of(run("[check.dkim]\nmax_signatures = 1\n", zone_extra=keys["zone"],
                      msg=twice), "dkim")) == 1


# -- DMARC -------------------------------------------------------------------

def dmarc_of(verdict):
    (r,) = of(verdict, "dmarc")
    return r


def test_dmarc_aligned_spf_only():
    v = run(mail_from="x@mw-reject.example", msg=message("a@mw-reject.example"))
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("pass", "DMARC_PASS")
    assert v.action == "accept"
    assert "dmarc=pass header.from=mw-reject.example policy.dmarc=reject" in ar_header(v)


def test_dmarc_aligned_dkim_only(keys):
    signed = dkimkeys.sign(message("a@mw-reject.example"), keys["ed"], "ed", "mw-reject.example")
    v = run(zone_extra=keys["zone"], ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=signed)
    assert dmarc_of(v).result == "pass"
    assert v.action == "accept"


@pytest.mark.parametrize("domain,action,symbol", [
    ("mw-none.example", "accept", "DMARC_FAIL_NONE"),
    ("mw-quar.example", "quarantine", "DMARC_FAIL_QUARANTINE"),
    ("mw-reject.example", "reject", "DMARC_FAIL_REJECT"),
    ("mw-pct.example", "quarantine", "DMARC_FAIL_QUARANTINE"),     # pct=0: one step milder
    ("mw-nop.example", "accept", "DMARC_FAIL_NONE"),               # no p=, a rua: p=none
])
def test_dmarc_neither_aligned(domain, action, symbol):
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=message(f"a@{domain}"))
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("fail", symbol)
    assert v.action == action
    if action == "reject":
        assert v.reply.line() == \
            "550 5.7.1 Message rejected: it fails the DMARC policy of mw-reject.example"


@pytest.mark.parametrize("draw,action", [(0.3, "reject"), (0.7, "quarantine")])
def test_dmarc_pct_sampling_uses_the_injected_random_source(draw, action):
    class Fixed:
        def random(self):
            return draw
    engine = engine_for()
    next(c for c in engine.checks if c.name == "dmarc").random = Fixed()
    v = run(engine=engine, ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@mw-pct50.example"))
    engine.close()
    assert v.action == action


def test_dmarc_subdomain_uses_sp():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@news.mw-sub.example"))
    r = dmarc_of(v)
    assert r.symbol == "DMARC_FAIL_QUARANTINE" and v.action == "quarantine"
    assert props(r)["policy.dmarc"] == "quarantine"


def test_dmarc_nonexistent_subdomain_uses_np():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@ghost.mw-sub.example"))
    assert dmarc_of(v).symbol == "DMARC_FAIL_REJECT" and v.action == "reject"


def test_dmarc_subdomain_with_its_own_record():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@own.mw-sub.example"))
    assert dmarc_of(v).symbol == "DMARC_FAIL_NONE" and v.action == "accept"


def test_dmarc_relaxed_and_strict_spf_alignment():
    relaxed = run(mail_from="x@mail.mw-reject.example", msg=message("a@mw-reject.example"))
    assert dmarc_of(relaxed).result == "pass"
    strict = run(mail_from="x@mail.mw-strict.example", msg=message("a@mw-strict.example"))
    assert dmarc_of(strict).result == "fail" and strict.action == "reject"


def test_dmarc_relaxed_and_strict_dkim_alignment(keys):
    def signed(domain):
        return dkimkeys.sign(message(f"a@{domain.split('.', 1)[1]}"), keys["ed"], "ed", domain)
    relaxed = run(zone_extra=keys["zone"], ip=STRANGER, mail_from="",
                  msg=signed("mail.mw-reject.example"))
    assert dmarc_of(relaxed).result == "pass"
    strict = run(zone_extra=keys["zone"], ip=STRANGER, mail_from="",
                 msg=signed("mail.mw-strict.example"))
    assert dmarc_of(strict).result == "fail"


def test_dmarc_organizational_domain_under_multi_label_suffix():
    engine = engine_for()
    dmarc = next(c for c in engine.checks if c.name == "dmarc")
    assert dmarc.organizational("a.news.mwshop.co.uk") == "mwshop.co.uk"
    assert dmarc.organizational("mwshop.co.uk") == "mwshop.co.uk"
    assert dmarc.organizational("co.uk") == "co.uk"
    assert dmarc.organizational("deep.sub.mw-sub.example") == "mw-sub.example"
    engine.close()
    ok = run(mail_from="bounce@mwshop.co.uk", msg=message("a@news.mwshop.co.uk"))
    assert dmarc_of(ok).result == "pass"
    bad = run(ip=STRANGER, mail_from="bounce@mwshop.co.uk", msg=message("a@news.mwshop.co.uk"))
    assert dmarc_of(bad).result == "fail" and bad.action == "reject"   # p=reject of mwshop.co.uk


def test_dmarc_several_records_mean_none():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=message("a@mw-two.example"))
    assert dmarc_of(v).result == "none" and v.action == "accept"


def test_dmarc_no_record_is_none():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@spf-none.mw-auth.example"))
    assert dmarc_of(v).result == "none"


def test_dmarc_dns_timeout_tempfails_or_accepts_per_policy():
    args = dict(mail_from="x@mw-dnsfail.example", msg=message("a@mw-dnsfail.example"))
    v = run(**args)
    assert dmarc_of(v).result == "temperror"
    assert v.action == "tempfail" and v.reply.code == 451
    v = run("[check.dmarc]\ntempfail_on_error = no\n", **args)
    assert dmarc_of(v).result == "temperror" and v.action == "accept"
    v = run("[policy]\ntemperror_action = accept\n", **args)
    assert v.action == "accept"


def test_dmarc_temperror_of_an_aligned_identity_is_not_a_fail():
    signed = dkimkeys.sign(message("a@mw-reject.example"), dkimkeys.ed25519_key(), "slow",
                           "mw-reject.example")
    v = run("[policy]\ntemperror_action = accept\n", "slow._domainkey.mw-reject.example. SERVFAIL",
            ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=signed)
    assert of(v, "dkim")[0].result == "temperror"
    assert dmarc_of(v).result == "temperror"
    assert v.action == "accept"


def test_dmarc_two_from_fields_evaluate_both_domains():
    # SPF aligns with mw-reject.example (pass); mw-none.example fails (p=none):
    # the strictest outcome is the verdict, naming both domains
    msg = message("a@mw-reject.example", extra=b"From: b@mw-none.example\r\n")
    r = dmarc_of(run(mail_from="x@mw-reject.example", msg=msg))
    assert (r.result, r.symbol) == ("fail", "DMARC_FAIL_NONE")
    assert props(r)["header.from"] == "mw-none.example"
    assert "2 From header fields" in r.reason
    assert "mw-reject.example=pass, mw-none.example=fail" in r.reason


@pytest.mark.parametrize("sender", ["undisclosed-recipients:;", "nobody", "a@[192.0.2.1]"])
def test_dmarc_from_without_domain_refused_unless_relaxed(sender):
    msg = message().replace(b"From: Alice <a@mw-dkim.example>", b"From: " + sender.encode())
    v = run(mail_from="x@mw-reject.example", msg=msg)
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("permerror", "DMARC_BAD_FROM")
    assert v.action == "reject" and v.reply.line().startswith("550 5.7.1"), v.reply
    v = run("[check.dmarc]\nreject_bad_from = no\n", mail_from="x@mw-reject.example", msg=msg)
    assert dmarc_of(v).result == "permerror" and v.action != "reject"


def test_dmarc_missing_from_is_permerror():
    msg = b"To: bob@rcpt.example\r\nSubject: no from\r\n\r\nhi\r\n"
    assert dmarc_of(run(msg=msg)).result == "permerror"


@pytest.mark.parametrize("setting,action", [("quarantine", "quarantine"), ("score", "accept")])
def test_dmarc_enforcement_is_the_admins_choice(setting, action):
    v = run(f"[check.dmarc]\non_reject = {setting}\n[policy]\nreject_score = 100\n"
            "quarantine_score = 100\nadd_header_score = 50\n",
            ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=message("a@mw-reject.example"))
    assert dmarc_of(v).symbol == "DMARC_FAIL_REJECT"
    assert v.action == action


def test_dmarc_never_rejects_authenticated_or_trusted_clients():
    for kw in ({"auth_user": "alice", "tls_version": "TLSv1.3"}, {"ip": "127.0.0.1"}):
        v = run(mail_from="x@spf-none.mw-auth.example", msg=message("a@mw-reject.example"),
                **{"ip": STRANGER, **kw})
        assert of(v, "dmarc") == [] and v.action == "accept"


def test_dmarc_history_records_what_reports_need(tmp_path, keys):
    db = tmp_path / "dmarc.sqlite"
    engine = engine_for(f"[check.dmarc]\nhistory = {db}\n", keys["zone"])
    signed = dkimkeys.sign(message("a@mw-reject.example"), keys["ed"], "ed", "mw-reject.example")
    run(engine=engine, mail_from="x@mw-reject.example", msg=signed)
    run(engine=engine, ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
        msg=message("a@mw-reject.example"))
    run(engine=engine, msg=message("a@spf-none.mw-auth.example"))     # no policy: not recorded
    engine.close()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM dmarc_message ORDER BY id").fetchall()
    assert [(r["header_from"], r["result"], r["disposition"], r["source_ip"]) for r in rows] == [
        ("mw-reject.example", "pass", "none", RELAY),
        ("mw-reject.example", "fail", "reject", STRANGER)]
    first = rows[0]
    assert (first["policy_domain"], first["p"], first["pct"], first["adkim"], first["aspf"],
            first["rua"], first["envelope_from"], first["spf_aligned"], first["dkim_aligned"]) == \
        ("mw-reject.example", "reject", 100, "r", "r", "mailto:dmarc@mw-reject.example",
         "mw-reject.example", 1, 1)
    assert [tuple(x) for x in conn.execute(
        "SELECT domain, selector, result FROM dmarc_dkim WHERE message_id = ?",
        (first["id"],))] == [("mw-reject.example", "ed", "pass")]
    assert [tuple(x) for x in conn.execute(
        "SELECT domain, scope, result FROM dmarc_spf WHERE message_id = ?",
        (rows[1]["id"],))] == [("spf-none.mw-auth.example", "mfrom", "none")]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


# -- Authentication-Results --------------------------------------------------

def test_authentication_results_round_trip(keys):
    signed = dkimkeys.sign(message("a@mw-reject.example"), keys["ed"], "ed", "mw-reject.example")
    signed = dkimkeys.sign(signed, keys["rsa"], "rsa", "mw-dkim.example")
    v = run(zone_extra=keys["zone"], mail_from="x@mw-reject.example", msg=signed,
            auth_user="carol", tls_version="TLSv1.3")
    value = ar_header(v)
    parsed = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + re.sub(r"\n\t", " ", value))
    assert parsed.authserv_id == "mx.test.example"
    methods = [(r.method, r.result) for r in parsed.results]
    assert ("auth", "pass") in methods
    assert [m for m in methods if m[0] == "dkim"] == [("dkim", "pass"), ("dkim", "pass")]
    dkim_props = [{(p.type, p.name): p.value for p in r.properties}
                  for r in parsed.results if r.method == "dkim"]
    assert dkim_props[0][("header", "d")] == "mw-dkim.example"
    assert dkim_props[0][("header", "a")] == "rsa-sha256"
    assert len(dkim_props[0][("header", "b")]) == 8
    order = [r.method for r in parsed.results]
    assert order == sorted(order, key=["iprev", "auth", "spf", "dkim", "dmarc"].index)


def test_full_header_round_trip_without_auth():
    v = run(mail_from="x@mw-reject.example", msg=message("a@mw-reject.example"))
    value = ar_header(v)
    parsed = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + re.sub(r"\n\t", " ", value))
    got = {(r.method, r.result) for r in parsed.results}
    assert {("spf", "pass"), ("dkim", "none"), ("dmarc", "pass")} <= got
    dmarc = next(r for r in parsed.results if r.method == "dmarc")
    assert {(p.type, p.name): p.value for p in dmarc.properties} == {
        ("header", "from"): "mw-reject.example", ("policy", "dmarc"): "reject"}
    spf = [r for r in parsed.results if r.method == "spf"]
    assert [(p.type, p.name) for r in spf for p in r.properties] == [
        ("smtp", "mailfrom"), ("smtp", "helo")]


def test_forged_authentication_results_removed_others_kept():
    extra = (b"Authentication-Results: mx.test.example; dkim=pass header.d=mw-reject.example\r\n"
             b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@y.example\r\n")
    v = run(mail_from="x@mw-reject.example", msg=message("a@mw-reject.example", extra=extra))
    assert [(n, val) for n, val, _ in v.headers_removed] == [
        ("Authentication-Results", "mx.test.example; dkim=pass header.d=mw-reject.example")]


@pytest.mark.parametrize("relaxed", [True, False])
def test_dkim_body_hash_in_chunks_is_byte_for_byte_dkimpys(relaxed):
    import hashlib
    import random
    import re
    from dkim.canonicalization import Relaxed, Simple
    from mailwarden.checks.dkim import BodyHash
    canon = Relaxed if relaxed else Simple
    pieces = [b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r", b"\n", b"word", b"x", b"\r\n\r\n"]
    rng = random.Random(6376)
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"a", b"a  \r\n", b" \r\n", b"\t", b"a\r\n \t"]
    bodies += [b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
               for _ in range(3000)]
    for body in bodies:
        # dkimpy's reading of a body: lines split at CR? LF, joined by CRLF
        expected = canon.canonicalize_body(b"\r\n".join(re.split(b"\r?\n", body)))
        for limit in (None, 7):
            h = BodyHash(hashlib.sha256, relaxed, limit)
            cuts = sorted(rng.sample(range(len(body) + 1), min(3, len(body) + 1)))
            for start, end in zip([0] + cuts, cuts + [len(body)]):
                h.update(body[start:end])
            want = expected if limit is None else expected[:limit]
            assert h.digest() == hashlib.sha256(want).digest(), (body, limit)


def test_a_spooled_body_is_read_by_several_threads_at_once_without_mixing():
    import threading
    from mailwarden.model import Body
    body = Body(spool_threshold=1000)
    data = b"".join(b"line %06d of the body\r\n" % i for i in range(20000))
    for start in range(0, len(data), 4096):
        body.write(data[start:start + 4096])
    assert body.spooled
    seen: list = []

    def reader(kind):
        got = body.read() if kind == "read" else b"".join(body.chunks(777))
        seen.append(got == data)
    threads = [threading.Thread(target=reader, args=(k,)) for k in ("read", "chunks") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [True] * 8
    body.close()


@pytest.mark.parametrize("size", [0, 5000, 300_000])
def test_the_message_buffer_is_the_message_bytes(size):
    from mailwarden.model import Body, Message
    msg = Message(body=Body(spool_threshold=100_000))
    msg.add_header("From", b" <a@example.org>")
    msg.add_header("X-Folded", b" one\n\ttwo")
    payload = bytes(range(256)) * (size // 256) + b"end\r\n"
    for start in range(0, len(payload), 65000):
        msg.body.write(payload[start:start + 65000])
    assert bytes(msg.as_buffer()) == msg.as_bytes()
    msg.close()
