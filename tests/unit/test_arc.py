"""arc: chain verification (RFC 8617 §5.2) and sealing (§5.1).

Chains are made with dkimpy's arc_sign (another implementation than ours)
and checked by mailwarden; what mailwarden seals is checked by dkimpy's
arc_verify, on the message as it leaves (every header change made).
"""

import re

import dkim
import dkim.util
import pytest

from mailwarden import authresults
from mailwarden.config import ConfigError, loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, outgoing, run_offline
from mailwarden.checks import arc as arcmod
from tests.dkimkeys import rsa_key
from tests.unit.authcase import resinfo, strict_parse
from tests.unit.outboundcase import BASE, ZONE, keydir  # noqa: F401  (fixture)

SEALER = "lists.sealer.example"
SECOND = "fwd.second.example"
INBOUND_IP = "198.51.100.9"


@pytest.fixture(scope="module")
def sealer_keys():
    return {SEALER: rsa_key(), SECOND: rsa_key()}


def zone_for(keys, extra=""):
    return ZONE + "\n" + "\n".join(k.zone_line("arc", d) for d, k in keys.items()) + "\n" + extra


def original(body=b"Hello list.\r\n"):
    return (b"From: Author <author@origin.example>\r\nTo: list@lists.sealer.example\r\n"
            b"Subject: hello\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <a1@origin.example>\r\n\r\n" + body)


def seal_with(message, domain, key, ar="dkim=fail header.d=origin.example; spf=pass "
              "smtp.mailfrom=origin.example; dmarc=fail header.from=origin.example",
              arc="none"):
    """``message`` sealed by ``domain`` as another implementation does: an
    A-R of its own with arc=, then dkimpy's arc_sign."""
    head = f"Authentication-Results: {domain}; arc={arc}; {ar}\r\n".encode()
    signed = head + message
    made = dkim.arc_sign(signed, b"arc", domain.encode(), key.private, domain.encode(),
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert made, "dkimpy made no ARC set"
    return b"".join(made) + message


def scan(message, keys, *, text="", client_ip=INBOUND_IP, zone_extra="", **kw):
    cfg = loads(BASE + text)
    backend = ZoneBackend(zone_for(keys, zone_extra))
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=backend), hostname="mx.test.example")
    kw.setdefault("mail_from", "author@origin.example")
    kw.setdefault("rcpts", ["someone@outbound.example"])
    try:
        verdict, _conn, msg = run_offline(engine, client_ip=client_ip, message=message, **kw)
        left = outgoing(msg, verdict.headers_added, verdict.headers_removed)
        msg.close()
        return verdict, left, backend
    finally:
        engine.close()


def arc_of(verdict):
    (found,) = [r for r in verdict.results if r.check == "arc"]
    return found


def arc_resinfo(verdict):
    return resinfo(verdict, "arc")


def zone_dnsfunc(keys, extra=""):
    backend = ZoneBackend(zone_for(keys, extra))

    def get(name, timeout=5):
        answer = backend.lookup(name.decode().rstrip(".").lower(), "TXT", 1.0)
        return answer.records[0].encode() if answer.ok and answer.records else None
    return get


# -- verification --------------------------------------------------------------

def test_no_chain_is_none():
    verdict, _left, _b = scan(original(), {})
    found = arc_of(verdict)
    assert (found.result, found.symbol) == ("none", "ARC_NONE")
    assert not found.arc_valid and found.arc_chain == () and found.arc_last_valid == 0
    res = arc_resinfo(verdict)
    assert res.result == "none"
    assert [(p.type, p.name, p.value) for p in res.properties] == [
        ("smtp", "remote-ip", INBOUND_IP)]


def test_one_hop_chain_passes_with_remote_ip_oldest_pass_and_chain(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    verdict, _left, _b = scan(sealed, sealer_keys)
    found = arc_of(verdict)
    assert (found.result, found.symbol) == ("pass", "ARC_PASS"), found.reason
    assert found.arc_valid
    assert found.arc_chain == (SEALER,)
    assert found.arc_last_valid == 1
    (hop,) = found.arc_hops
    assert (hop.instance, hop.sealer, hop.authserv_id) == (1, SEALER, SEALER)
    assert hop.result_of("dmarc") == "fail" and hop.result_of("spf") == "pass"
    assert hop.result_of("dkim") == "fail" and not hop.passed("dkim")
    assert hop.result_of("arc") == "none"
    res = arc_resinfo(verdict)
    assert res.result == "pass"
    props = {(p.type, p.name): p.value for p in res.properties}
    assert props == {("smtp", "remote-ip"): INBOUND_IP, ("header", "oldest-pass"): "0"}
    ar = dict(verdict.headers_added)["Authentication-Results"]
    assert f"(arc.chain={SEALER})" in ar


def test_two_hops_and_a_change_between_them_gives_oldest_pass(sealer_keys):
    first = seal_with(original(), SEALER, sealer_keys[SEALER])
    # the second hop changes the body (a footer), then seals: AMS 1 breaks
    changed = first + b"-- \r\nfooter of the forwarder\r\n"
    second = seal_with(changed, SECOND, sealer_keys[SECOND], arc="pass")
    verdict, _left, _b = scan(second, sealer_keys)
    found = arc_of(verdict)
    assert found.result == "pass", found.reason
    assert found.arc_chain == (SEALER, SECOND) and found.arc_last_valid == 2
    assert [h.sealer for h in found.arc_hops] == [SEALER, SECOND]
    props = {(p.type, p.name): p.value for p in arc_resinfo(verdict).properties}
    assert props[("header", "oldest-pass")] == "2"
    assert f"(arc.chain={SEALER}:{SECOND})" in dict(verdict.headers_added)[
        "Authentication-Results"]


def test_change_after_the_last_seal_fails(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    tampered = sealed.replace(b"Hello list.", b"Hello, list")
    found = arc_of(scan(tampered, sealer_keys)[0])
    assert (found.result, found.symbol) == ("fail", "ARC_FAIL")
    assert "ARC-Message-Signature i=1" in found.reason
    # the seal itself still verifies: set 1 is whole and sealed
    assert found.arc_last_valid == 1 and not found.arc_valid


def test_seal_tampered_fails_and_last_valid_says_where(sealer_keys):
    first = seal_with(original(), SEALER, sealer_keys[SEALER])
    second = seal_with(first, SECOND, sealer_keys[SECOND], arc="pass")
    # the AAR of set 2 (on top) is rewritten to claim DMARC passed: seal 2
    # breaks, set 1 and its seal hold, and AMS 2 does not sign the AAR
    forged = second.replace(b"dmarc=fail header.from=origin.example",
                            b"dmarc=pass header.from=origin.example", 1)
    assert forged.index(b"dmarc=pass") < forged.index(b"i=1;")
    found = arc_of(scan(forged, sealer_keys)[0])
    assert found.result == "fail"
    assert found.arc_last_valid == 1
    assert found.reason == "ARC-Seal i=2 did not verify"
    # set 1 rewritten instead: no seal holds
    at = second.index(b"i=1;")
    forged1 = second[:at] + second[at:].replace(b"dmarc=fail", b"dmarc=pass", 1)
    found = arc_of(scan(forged1, sealer_keys)[0])
    assert found.result == "fail" and found.arc_last_valid == 0


def test_sets_are_hashed_in_instance_order_wherever_they_stand(sealer_keys):
    first = seal_with(original(), SEALER, sealer_keys[SEALER])
    second = seal_with(first, SECOND, sealer_keys[SECOND], arc="pass")
    head, _, body = second.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?=[^ \t])", head)
    arc_fields = [f for f in fields if f.lower().startswith(b"arc-")]
    rest = [f for f in fields if not f.lower().startswith(b"arc-")]
    # set 1 above set 2: RFC 8617 orders by instance, not by place
    moved = b"\r\n".join(arc_fields[3:] + arc_fields[:3] + rest) + b"\r\n\r\n" + body
    assert moved != second
    found = arc_of(scan(moved, sealer_keys)[0])
    assert found.result == "pass", found.reason
    cv, _res, _why = dkim.arc_verify(moved, dnsfunc=zone_dnsfunc(sealer_keys))
    assert cv == dkim.CV_Fail          # dkimpy hashes by place: why verification is ours


def test_terminated_chain_is_fail(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    broken = sealed.replace(b"Hello list.", b"Changed")
    top = seal_with(broken, SECOND, sealer_keys[SECOND], arc="fail")
    found = arc_of(scan(top, sealer_keys)[0])
    assert found.result == "fail" and found.reason == "ARC-Seal i=2 says cv=fail"
    assert found.arc_terminated


@pytest.mark.parametrize("make, why", [
    (lambda m: b"ARC-Seal: i=51; cv=pass; a=rsa-sha256; d=x.example; s=a; b=AAAA\r\n" + m,
     "instance i=51 outside 1..50"),
    (lambda m: b"ARC-Seal: cv=pass; a=rsa-sha256; d=x.example; s=a; b=AAAA\r\n" + m,
     "an arc-seal field without a valid instance (i=)"),
    (lambda m: b"ARC-Authentication-Results: x.example; spf=pass\r\n" + m,
     "an arc-authentication-results field without a valid instance (i=)"),
    (lambda m: b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=x.example; s=a; b=AAAA\r\n" + m,
     "ARC set 1 has no arc-authentication-results field"),
    (lambda m: b"".join(b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=x.example; s=a; b=AAAA\r\n"
                        % (i % 50 + 1) for i in range(151)) + m,
     "more than 150 ARC header fields"),
])
def test_malformed_chains_fail_before_any_lookup(make, why):
    verdict, _left, backend = scan(make(original()), {})
    found = arc_of(verdict)
    assert (found.result, found.reason) == ("fail", why)
    assert not [q for q in backend.queries if "_domainkey" in q[0]]


def test_duplicate_set_fails(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    first_line = sealed.split(b"\r\n", 1)[0]
    found = arc_of(scan(first_line + b"\r\n" + sealed, sealer_keys)[0])
    assert found.result == "fail" and "has 2 arc-seal fields" in found.reason


def test_key_servfail_is_temperror_and_does_not_hold_mail(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    keys = {SECOND: sealer_keys[SECOND]}
    verdict, _left, _b = scan(sealed, keys, zone_extra=f"arc._domainkey.{SEALER}. SERVFAIL\n")
    found = arc_of(verdict)
    assert (found.result, found.symbol) == ("temperror", "ARC_TEMPERROR")
    assert verdict.action != "tempfail"        # tempfail_on_error = no by default


def test_missing_key_fails(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    found = arc_of(scan(sealed, {SECOND: sealer_keys[SECOND]})[0])
    assert found.result == "fail"


def test_cpu_budget_stops_verification(sealer_keys, monkeypatch):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    ticks = iter(range(0, 1000, 5))
    monkeypatch.setattr(arcmod.ArcCheck, "cpu_clock", staticmethod(lambda: next(ticks)))
    found = arc_of(scan(sealed, sealer_keys)[0])
    assert found.result == "fail" and found.reason.startswith("not checked: the CPU budget")


def test_sender_text_in_the_chain_is_quoted(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER],
                       ar='spf=pass (a comment; with) smtp.mailfrom="x;y z"@origin.example')
    verdict, _left, _b = scan(sealed, sealer_keys)
    found = arc_of(verdict)
    assert found.result == "pass"
    assert found.arc_hops[0].result_of("spf") == "pass"
    strict_parse(dict(verdict.headers_added)["Authentication-Results"])


# -- sealing -------------------------------------------------------------------

def seal_text(keydir, extra="", dkim_sign=True):
    text = ("[check.arc]\n"
            f"keys = outbound.example:rsa2026:{keydir}/outbound-rsa2026.private\n" + extra)
    if dkim_sign:
        text += ("[check.dkim_sign]\n"
                 f"keys = outbound.example:rsa2026:{keydir}/outbound-rsa2026.private\n"
                 "sign_trusted_networks = 127.0.0.1/32\nsign_trusted_domains = outbound.example\n")
    return text


def outbound_message(extra=b""):
    return (b"From: Alice <alice@outbound.example>\r\nTo: bob@elsewhere.example\r\n"
            b"Subject: forwarded\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <f1@outbound.example>\r\n" + extra + b"\r\nHello.\r\n")


def arc_fields(verdict):
    return [(n, v) for n, v in verdict.headers_added if n.startswith("ARC-")]


def test_forward_is_sealed_last_and_verifies(keydir):
    forged = b"Authentication-Results: mx.test.example; dkim=pass\r\n"
    verdict, left, _b = scan(outbound_message(forged), {}, text=seal_text(keydir),
                             client_ip="127.0.0.1", mail_from="alice@outbound.example",
                             rcpts=["bob@elsewhere.example"])
    names = [n for n, _v in verdict.headers_added]
    # the set is on top of everything the milter adds
    assert names[:3] == ["ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]
    assert "DKIM-Signature" in names and verdict.headers_removed
    fields = dict(arc_fields(verdict))
    assert re.search(r"\bi=1;", fields["ARC-Seal"]) and "cv=none" in fields["ARC-Seal"]
    assert "dkim-signature" in fields["ARC-Message-Signature"]
    # the AAR is our own A-R, as it leaves
    ours = dict(verdict.headers_added)["Authentication-Results"]
    assert fields["ARC-Authentication-Results"] == "i=1; " + ours
    assert forged not in left                     # the forged A-R went before sealing
    cv, results, why = dkim.arc_verify(left, dnsfunc=zone_dnsfunc({}))
    assert cv == dkim.CV_Pass, why
    assert results[0]["as-domain"] == b"outbound.example"
    # and it breaks when the message changes after it
    cv, _r, _w = dkim.arc_verify(left.replace(b"Hello.", b"Hullo"), dnsfunc=zone_dnsfunc({}))
    assert cv == dkim.CV_Fail


def test_a_valid_chain_is_continued(keydir, sealer_keys):
    sealed = seal_with(outbound_message(), SEALER, sealer_keys[SEALER])
    verdict, left, _b = scan(sealed, sealer_keys, text=seal_text(keydir, dkim_sign=False),
                             client_ip="127.0.0.1", mail_from="alice@outbound.example",
                             rcpts=["bob@elsewhere.example"])
    fields = dict(arc_fields(verdict))
    assert "i=2;" in fields["ARC-Seal"] and "cv=pass" in fields["ARC-Seal"]
    assert "arc=pass" in fields["ARC-Authentication-Results"]
    cv, results, why = dkim.arc_verify(left, dnsfunc=zone_dnsfunc(sealer_keys))
    assert cv == dkim.CV_Pass, why
    assert [r["instance"] for r in results] == [2, 1]


def test_a_broken_chain_is_sealed_with_cv_fail_covering_our_set(keydir, sealer_keys):
    sealed = seal_with(outbound_message(), SEALER, sealer_keys[SEALER])
    broken = sealed.replace(b"Hello.", b"Changed.")
    verdict, left, _b = scan(broken, sealer_keys, text=seal_text(keydir, dkim_sign=False),
                             client_ip="127.0.0.1", mail_from="alice@outbound.example",
                             rcpts=["bob@elsewhere.example"])
    fields = dict(arc_fields(verdict))
    assert "i=2;" in fields["ARC-Seal"] and "cv=fail" in fields["ARC-Seal"]
    cv, results, _why = dkim.arc_verify(left, dnsfunc=zone_dnsfunc(sealer_keys))
    # dkimpy ends a chain at cv=fail (and its verifier would hash every set
    # for that seal); our AMS verifies, and our seal over our own set alone
    # (RFC 8617 §5.1.2) verifies with dkimpy's signature check
    assert cv is None
    assert results[0]["instance"] == 2 and results[0]["ams-valid"]
    headers, _body = dkim.rfc822_parse(left)
    ours = [h for h in headers if h[0].lower().startswith(b"arc-") and b"i=2;" in h[1]]
    seal, ams, aar = ours
    checker = dkim.ARC(left)
    checker.headers = [ams, aar]            # taken from the bottom up: AAR, then AMS
    tags = dkim.util.parse_tag_value(seal[1])
    tags[b"c"] = b"relaxed/relaxed"
    assert checker.verify_sig(tags, [b"arc-authentication-results", b"arc-message-signature"],
                              seal, zone_dnsfunc(sealer_keys))
    # a chain that already failed gets no further set
    verdict2, _left2, _b2 = scan(left, sealer_keys, text=seal_text(keydir, dkim_sign=False),
                                 client_ip="127.0.0.1", mail_from="alice@outbound.example",
                                 rcpts=["carol@elsewhere.example"])
    assert arc_of(verdict2).arc_terminated
    assert arc_fields(verdict2) == []


@pytest.mark.parametrize("extra, client_ip, rcpt, sealed", [
    ("", INBOUND_IP, "someone@outbound.example", False),       # inbound mail
    ("", "127.0.0.1", "colleague@outbound.example", False),    # trusted, local recipient
    ("", "127.0.0.1", "bob@elsewhere.example", True),          # a forward
    ("", "127.0.0.1", "bob%elsewhere.example@outbound.example", True),   # routes out
    ("seal = never\n", "127.0.0.1", "bob@elsewhere.example", False),
    ("seal = always\n", INBOUND_IP, "someone@outbound.example", True),
])
def test_what_is_sealed(keydir, extra, client_ip, rcpt, sealed):
    verdict, _left, _b = scan(outbound_message(), {}, text=seal_text(keydir, extra, False),
                              client_ip=client_ip, mail_from="alice@outbound.example",
                              rcpts=[rcpt])
    assert bool(arc_fields(verdict)) is sealed


def test_authenticated_forward_is_sealed(keydir):
    verdict, left, _b = scan(outbound_message(), {}, text=seal_text(keydir, dkim_sign=False),
                             client_ip=INBOUND_IP, auth_user="alice", tls_version="TLSv1.3",
                             mail_from="alice@outbound.example", rcpts=["bob@elsewhere.example"])
    assert arc_fields(verdict)
    cv, _r, why = dkim.arc_verify(left, dnsfunc=zone_dnsfunc({}))
    assert cv == dkim.CV_Pass, why


def test_ed25519_key_refused_at_start_up(keydir):
    text = BASE + (f"[check.arc]\nkeys = outbound.example:ed2026:"
                   f"{keydir}/outbound-ed2026.private\n")
    with pytest.raises(ConfigError) as info:
        loads(text, "/etc/mailwarden.ini")
    assert "[check.arc] keys" in str(info.value) and "rsa-sha256" in str(info.value)


def test_bad_seal_value_refused(keydir):
    with pytest.raises(ConfigError) as info:
        loads(BASE + "[check.arc]\nseal = sometimes\n", "/etc/mailwarden.ini")
    assert "[check.arc] seal" in str(info.value)


def test_consolidated_aar_keeps_order_and_comments():
    headers = [("Authentication-Results", "lists.example.org; arc=none;\r\n spf=pass "
                "smtp.mfrom=jqd@d1.example"),
               ("Authentication-Results", "lists.example.org; dkim=pass (1024-bit key) "
                "header.i=@d1.example"),
               ("Authentication-Results", "nobody.example.org; something=ignored")]
    got = arcmod.consolidated_aar("lists.example.org", headers)
    assert " ".join(got.split()) == ("lists.example.org; arc=none; spf=pass "
                                     "smtp.mfrom=jqd@d1.example; dkim=pass (1024-bit key) "
                                     "header.i=@d1.example")


def test_resinfo_reader_is_lenient_and_bounded():
    ident, infos = authresults.resinfo_texts('x.example (c;) ; dkim=pass header.d="a;b" '
                                             '(x;y); none')
    assert ident == "x.example"
    assert infos == ['dkim=pass header.d="a;b" (x;y)']
    assert authresults.read_resinfo(infos[0]) == ("dkim", "pass", "", (("header.d", "a;b"),))
    assert authresults.read_resinfo("garbage") is None


def test_ams_with_instance_last_is_judged_not_a_crash(sealer_keys):
    # dkimpy's arc_verify raises IndexError on this (it looks for " i=N;")
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    m = re.search(rb"ARC-Message-Signature: i=1; (.*?)\r\n(?=[^ \t])", sealed, re.S)
    moved = sealed.replace(m.group(0), b"ARC-Message-Signature: " + m.group(1) + b"; i=1\r\n")
    with pytest.raises(IndexError):
        dkim.arc_verify(moved, dnsfunc=zone_dnsfunc(sealer_keys))
    found = arc_of(scan(moved, sealer_keys)[0])
    assert (found.result, found.reason) == ("fail", "ARC-Message-Signature i=1 did not verify")


def test_ams_naming_too_many_fields_does_not_verify(sealer_keys):
    many = [b"from"] + [b"x-h%d" % i for i in range(arcmod.MAX_SIGNED)]
    head = f"Authentication-Results: {SEALER}; arc=none\r\n".encode()
    made = dkim.arc_sign(head + original(), b"arc", SEALER.encode(),
                         sealer_keys[SEALER].private, SEALER.encode(), include_headers=many)
    found = arc_of(scan(b"".join(made) + original(), sealer_keys)[0])
    assert (found.result, found.reason) == ("fail", "ARC-Message-Signature i=1 did not verify")


def test_hostile_sealer_domain_never_reaches_the_header_as_structure(sealer_keys):
    sealed = seal_with(original(), SEALER, sealer_keys[SEALER])
    hostile = sealed.replace(f"d={SEALER};".encode(), b"d=x.example) (; arc=pass;", 1)
    assert hostile != sealed
    verdict, _left, _b = scan(hostile, sealer_keys)
    found = arc_of(verdict)
    assert found.result == "fail" and found.arc_chain == ("",)
    ar = dict(verdict.headers_added)["Authentication-Results"]
    assert "(arc.chain=invalid)" in ar
    parsed = strict_parse(ar)
    assert [r.result for r in parsed.results if r.method == "arc"] == ["fail"]
