"""DKIM verification: names that cannot exist, bounded work, RFC 6376 where
dkimpy departs from it.  On the fake resolver (tests/data/zones/auth.zone
plus keys made here)."""

from __future__ import annotations

import hashlib
import logging
import re

import dkim
import dns.name
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden import signing
from mailwarden.checks import dkim as dkimcheck
from tests import dkimkeys
from tests.unit.authcase import (DATA, STRANGER, ar_header, engine_for, message, of, props,
                                 run)

DOMAIN = "mw-dkim.example"


@pytest.fixture(scope="module")
def ed():
    return dkimkeys.ed25519_key()


def key_line(key, selector="sel", domain=DOMAIN, tags="v=DKIM1; k=ed25519"):
    return f'{selector}._domainkey.{domain}. TXT "{tags}; p={key.public}"'


def signed(key, *tags, sender=f"a@{DOMAIN}", selector=b"sel", domain=DOMAIN.encode(),
           body="Hello.\r\n", **kw):
    return dkimkeys.sign_tags(message(sender, body=body), key,
                              [(b"d", domain), (b"s", selector)] + list(tags), **kw)


def dkim_results(msg, zone="", text="", **kw):
    return of(run(text, zone_extra=zone, msg=msg, **kw), "dkim")


# -- point 4: a key name that cannot exist is a permanent error ------------------

BAD_NAMES = [
    (b"a" * 70, DOMAIN.encode(), "label of 70"),
    (b"sel", b"a" * 64 + b".example", "label of 64"),
    (b"a..b", DOMAIN.encode(), "empty label"),
    (b"sel", b"mw-dkim.example.", "empty label"),
    (b".sel", DOMAIN.encode(), "empty label"),
    (b".".join([b"a" * 63] * 4), DOMAIN.encode(), "253 at most"),
    (b"se\\l", DOMAIN.encode(), "character"),
    (b"s\x00l", DOMAIN.encode(), "character"),
    (b"sel", b"mw-d\xffkim.example", "UTF-8"),
]


@pytest.mark.parametrize("selector,domain,why", BAD_NAMES)
def test_a_key_name_that_cannot_exist_is_permerror_and_never_asked(ed, selector, domain, why):
    engine = engine_for()
    backend = engine.resolver.backend
    try:
        (r,) = dkim_results(signed(ed, selector=selector, domain=domain), engine=engine)
    finally:
        engine.close()
    assert (r.result, r.symbol) == ("permerror", "DKIM_BAD_NAME"), r
    assert why in r.reason
    assert not [q for q in backend.queries if "_domainkey" in q[0]]


@pytest.mark.parametrize("selector", [b"a" * 70, b".".join([b"a" * 63] * 4)],
                         ids=["label-70", "name-over-253"])
@pytest.mark.parametrize("temperror_action", ["tempfail", "accept"])
def test_a_bad_key_name_under_p_reject_is_refused_not_tempfailed(ed, temperror_action,
                                                                  selector):
    # (the zone resolver answers NXDOMAIN for a 70-octet label where a real
    # server's client refuses it: tests/e2e/test_dkim.py shows that case)
    msg = signed(ed, sender="ceo@mw-reject.example", selector=selector,
                 domain=b"mw-reject.example")
    v = run(f"[policy]\ntemperror_action = {temperror_action}\n", msg=msg, ip=STRANGER,
            mail_from="bounce@spf-none.mw-auth.example")
    (d,) = of(v, "dmarc")
    assert d.result == "fail", d
    assert v.action == "reject" and v.reply.code == 550, (v.action, v.reply)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_key_name_is_a_name_the_dns_can_carry_or_a_reason(selector, domain):
    name, why = dkimcheck.key_name(selector, domain)
    assert (name is None) != (why is None)
    if name is not None:
        parsed = dns.name.from_text(name)          # no EmptyLabel, LabelTooLong, BadEscape...
        assert len(name) <= 253 and all(0 < len(label) <= 63 for label in parsed.labels[:-1])
        assert name.endswith("." + dkimcheck.key_name(b"x", domain)[0].split(".", 2)[2])


def test_a_long_international_label_is_refused_before_it_is_encoded(monkeypatch):
    def no_idna(*_a, **_k):
        raise AssertionError("IDNA asked")
    monkeypatch.setattr(dkimcheck.idna, "encode", no_idna)
    name, why = dkimcheck.key_name("ü".encode() * 30000, b"x.example")
    assert name is None and "63 at most" in why


def test_key_name_accepts_ordinary_and_international_names():
    assert dkimcheck.key_name(b"s2048", b"Mail.Example.COM") == \
        ("s2048._domainkey.Mail.Example.COM", None)
    assert dkimcheck.key_name(b"sel", "bücher.example".encode()) == \
        ("sel._domainkey.xn--bcher-kva.example", None)
    # a signer folding inside a long selector: the white space is not part of it
    assert dkimcheck.key_name(b"abc\r\n def", b"x.example")[0] == "abcdef._domainkey.x.example"


# -- point 5: bounded CPU --------------------------------------------------------

def test_h_is_capped_per_signature(ed):
    names = [b"from"] + [b"x-h%d" % i for i in range(120)]
    msg = signed(ed, headers=names)
    zone = key_line(ed)
    (r,) = dkim_results(msg, zone)
    assert (r.result, r.symbol) == ("permerror", "DKIM_TOO_MANY_HEADERS"), r
    assert "121" in r.reason
    (r,) = dkim_results(msg, zone, "[check.dkim]\nmax_signed_headers = 200\n")
    assert r.result == "pass", r


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["from", "to", "subject", "x", "date"]), max_size=25),
       st.lists(st.sampled_from(["from", "to", "subject", "x", "y"]), max_size=25))
def test_header_selection_is_dkimpys(fields, names):
    headers = [(n.encode() if i % 2 else n.title().encode(), b" v%d\r\n" % i)
               for i, n in enumerate(fields)]
    lowered = [(n.lower(), v) for n, v in headers]
    wanted = [n.encode() for n in names]
    assert dkimcheck.select_headers(lowered, wanted) == dkim.select_headers(lowered, wanted)


@pytest.mark.parametrize("varied", [False, True])
def test_the_body_is_hashed_once_per_canonicalization_and_hash(ed, monkeypatch, varied):
    body = "".join(f"line {i}  of\tthe body \r\n" for i in range(2000))
    base = message(body=body)
    sigs = b""
    for i in range(10):
        c = (b"relaxed/relaxed", b"relaxed/simple")[i % 2] if varied else b"relaxed/relaxed"
        limit = 40000 - 1000 * i if varied else None
        one = dkimkeys.sign_tags(base, ed, [(b"d", DOMAIN.encode()), (b"s", b"sel")],
                                 canonicalize=c, limit=limit)
        sigs += one[:len(one) - len(base)]
    made = []

    class CountingPrefixes(signing._Prefixes):
        """Each running body hash made, and the bytes it hashed."""

        def __init__(self, hasher, limits):
            super().__init__(hasher, limits)
            self.bytes = 0
            made.append(self)

        def update(self, data):
            self.bytes += len(data)
            super().update(data)

    monkeypatch.setattr(signing, "_Prefixes", CountingPrefixes)
    results = dkim_results(sigs + base, key_line(ed))
    assert [r.result for r in results] == ["pass"] * 10
    assert len(made) == (2 if varied else 1)
    canonical_sizes = {len(dkim.canonicalization.CanonicalizationPolicy.from_c_value(c)
                           .canonicalize_body(base.split(b"\r\n\r\n", 1)[1]))
                       for c in ((b"relaxed/relaxed", b"relaxed/simple") if varied
                                 else (b"relaxed/relaxed",))}
    assert sorted(p.bytes for p in made) == sorted(canonical_sizes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["From", "from ", "TO", "x", "X\t"]),
                          st.sampled_from([" a\r\n", "  b \r\n c\r\n"])), max_size=20),
       st.lists(st.sampled_from(["from", "to", "x", "y"]), max_size=20),
       st.sampled_from([b"relaxed/relaxed", b"simple/simple"]))
def test_selecting_raw_fields_then_canonicalizing_is_dkimpys_order(fields, names, c):
    raw = [(n.encode(), v.encode()) for n, v in fields]
    wanted = [n.encode() for n in names]
    canon = dkim.canonicalization.CanonicalizationPolicy.from_c_value(c)
    relaxed = canon.header_algorithm is dkim.canonicalization.Relaxed
    ours = canon.canonicalize_headers(dkimcheck.select_headers(
        raw, wanted, dkimcheck.relaxed_name if relaxed else bytes.lower))
    assert ours == dkim.select_headers(canon.canonicalize_headers(raw), wanted)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"  ", b"\r\n", b"\n", b"\r", b"ab", b"c"]),
                max_size=60),
       st.lists(st.tuples(st.booleans(), st.sampled_from([b"rsa-sha256", b"rsa-sha1"]),
                          st.one_of(st.none(), st.integers(0, 80))), min_size=1, max_size=6),
       st.integers(1, 17))
def test_one_pass_gives_every_signatures_body_hash(pieces, sigs, chunk):
    """_body_digests (one canonicalization per c=, one hash per (c=, a=),
    l= from copies) gives what dkimpy's canonicalization and a hash of each
    prefix give."""
    from types import SimpleNamespace

    from mailwarden.model import Body
    raw = b"".join(pieces)
    body = Body()
    body.write(raw)
    work = [SimpleNamespace(algorithm=a, limit=limit,
                            body_key=(relaxed, a.partition(b"-")[2], limit))
            for relaxed, a, limit in sigs]
    body.chunks = lambda size=chunk: (raw[i:i + size] for i in range(0, len(raw), size))
    got = dkimcheck.body_digests(body, work, lambda: False)
    for w in work:
        policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(
            b"simple/relaxed" if w.body_key[0] else b"simple/simple")
        canonical = policy.canonicalize_body(b"\r\n".join(re.split(b"\r?\n", raw)))
        if w.limit is not None:
            canonical = canonical[:w.limit]
        assert got[w.body_key] == getattr(hashlib, w.body_key[1].decode())(canonical).digest()
    body.close()


class StepClock:
    """A CPU clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step):
        self.now, self.step, self.reads = 0.0, step, 0

    def __call__(self):
        self.reads += 1
        self.now += self.step
        return self.now


def _with_clock(text, clock):
    engine = engine_for(text)
    (check,) = [c for c in engine.checks if c.name == "dkim"]
    check.cpu_clock = clock
    return engine


def test_past_the_cpu_budget_the_remaining_signatures_are_policy_and_logged(ed, caplog):
    base = message()
    msg = base
    for _ in range(5):
        msg = dkimkeys.sign_tags(msg, ed, [(b"d", DOMAIN.encode()), (b"s", b"sel")])
    engine = _with_clock("[check.dkim]\ncpu_budget = 2.5\n", StepClock(1.0))
    engine.resolver.backend.add(key_line(ed))
    try:
        with caplog.at_level(logging.WARNING, logger="mailwarden"):
            results = dkim_results(msg, engine=engine)
    finally:
        engine.close()
    # spent: 1 s after the body's one block, 2 s before signature 1, 3 s > 2.5 before 2
    assert [(r.result, r.symbol) for r in results] == \
        [("pass", "DKIM_PASS")] + [("policy", "DKIM_CPU_BUDGET")] * 4
    assert props(results[-1])["header.d"] == DOMAIN
    assert "CPU budget of 2.5s used up" in caplog.text and "4 of 5 signatures" in caplog.text


def test_the_budget_also_stops_a_long_body(ed, caplog):
    body = "x" * 70 + "\r\n"
    msg = dkimkeys.sign_tags(message(body=body * 4000), ed,
                             [(b"d", DOMAIN.encode()), (b"s", b"sel")])
    clock = StepClock(1.0)
    engine = _with_clock("[check.dkim]\ncpu_budget = 2.5\n", clock)
    engine.resolver.backend.add(key_line(ed))
    try:
        with caplog.at_level(logging.WARNING, logger="mailwarden"):
            (r,) = dkim_results(msg, engine=engine)
    finally:
        engine.close()
    assert (r.result, r.symbol) == ("policy", "DKIM_CPU_BUDGET")
    assert clock.reads < 8           # stopped after a few blocks of the ~290 KB body
    (r,) = dkim_results(msg, key_line(ed))      # the real clock: well within 5 s
    assert r.result == "pass"


def test_cpu_budget_and_header_cap_are_checked_at_start_up():
    from mailwarden.config import ConfigError, loads
    with pytest.raises(ConfigError, match="max_signed_headers"):
        loads("[check.dkim]\nmax_signed_headers = 0\n")
    for bad in ("soon", "0", "0ms"):
        with pytest.raises(ConfigError, match="cpu_budget"):
            loads(f"[check.dkim]\ncpu_budget = {bad}\n")
    good = loads("[authserv]\nid = mx.test.example\n[check.dkim]\ncpu_budget = 250ms\n")
    assert good.checks["dkim"].cpu_budget == 0.25


# -- point 12: RFC 6376 where dkimpy departs from it -------------------------------

def test_q_is_a_list_and_unknown_methods_are_ignored(ed):
    zone = key_line(ed)
    (r,) = dkim_results(signed(ed, (b"q", b"dns/txt:foo")), zone)
    assert r.result == "pass", r
    (r,) = dkim_results(signed(ed, (b"q", b"foo/bar:dns/txt:exam/ple")), zone)
    assert r.result == "pass", r
    (r,) = dkim_results(signed(ed, (b"q", b"http:dns/special")), zone)
    assert (r.result, r.symbol) == ("neutral", "DKIM_INVALID"), r


@pytest.mark.parametrize("services,result,symbol", [
    ("email:web:fine", "pass", "DKIM_PASS"),
    ("web : * ", "pass", "DKIM_PASS"),
    ("web:fine", "permerror", "DKIM_KEY_INVALID"),
    ("tlsrpt", "neutral", "DKIM_INVALID"),
])
def test_key_s_is_a_list(ed, services, result, symbol):
    zone = key_line(ed, tags=f"v=DKIM1; k=ed25519; s={services}")
    (r,) = dkim_results(signed(ed), zone)
    assert (r.result, r.symbol) == (result, symbol), r


@pytest.mark.parametrize("flags,identity,result", [
    ("s", b"a@sub.mw-dkim.example", "permerror"),
    ("y:s", b"@sub.mw-dkim.example", "permerror"),
    ("s", b"a@MW-DKIM.example", "pass"),
    ("y", b"a@sub.mw-dkim.example", "pass"),
])
def test_key_t_s_refuses_an_identity_in_a_subdomain(ed, flags, identity, result):
    zone = key_line(ed, tags=f"v=DKIM1; k=ed25519; t={flags}")
    (r,) = dkim_results(signed(ed, (b"i", identity)), zone)
    assert r.result == result, r


@pytest.mark.parametrize("encoded,decoded", [
    (b"jlong=40mw-dkim.example", "jlong@mw-dkim.example"),
    (b"=6Along@mw-dkim.example", "jlong@mw-dkim.example"),
    (b"jlong@mw-dkim=2Eexample", "jlong@mw-dkim.example"),
])
def test_i_is_dkim_quoted_printable(ed, encoded, decoded):
    (r,) = dkim_results(signed(ed, (b"i", encoded)), key_line(ed))
    assert r.result == "pass", r
    assert props(r)["header.i"] == decoded


def test_a_decoded_identity_that_is_no_plain_address_is_not_shown(ed):
    import authres
    forged = b"x=22=3B=20dkim=3Dpass=20header.d=3Dpaypal.com=3B=40mw-dkim.example"
    v = run(zone_extra=key_line(ed), msg=signed(ed, (b"i", forged)))
    (r,) = of(v, "dkim")
    assert r.result == "pass" and "header.i" not in props(r), r
    parsed = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + ar_header(v))
    assert [res.method for res in parsed.results].count("dkim") == 1


@pytest.mark.parametrize("identity", [b"a=4", b"a@evil=2Eexample", b"mw-dkim.example", b"a=ZZ"])
def test_a_bad_or_foreign_i_is_neutral(ed, identity):
    (r,) = dkim_results(signed(ed, (b"i", identity)), key_line(ed))
    assert (r.result, r.symbol) == ("neutral", "DKIM_INVALID"), r


@pytest.mark.parametrize("hashes_allowed,result", [
    ("sha1", "permerror"), ("md5:sha1", "permerror"), ("sha1:sha256", "pass"),
    (" SHA256 ", "pass"),
])
def test_key_h_must_list_the_signatures_hash(ed, hashes_allowed, result):
    zone = key_line(ed, tags=f"v=DKIM1; k=ed25519; h={hashes_allowed}")
    (r,) = dkim_results(signed(ed), zone)
    assert r.result == result, r
    if result == "permerror":
        assert r.symbol == "DKIM_KEY_INVALID" and "sha256" in r.reason


def test_a_key_without_p_is_a_syntax_error_an_empty_p_a_revoked_key(ed):
    (r,) = dkim_results(signed(ed), f'sel._domainkey.{DOMAIN}. TXT "v=DKIM1; k=ed25519"')
    assert (r.result, r.symbol) == ("permerror", "DKIM_KEY_INVALID"), r
    (r,) = dkim_results(signed(ed), f'sel._domainkey.{DOMAIN}. TXT "v=DKIM1; k=ed25519; p="')
    assert (r.result, r.symbol) == ("fail", "DKIM_KEY_REVOKED"), r


TAG_TEXT = st.binary(max_size=80).filter(lambda b: b";" not in b)


KEY_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126,
                                 blacklist_characters='"\\'), max_size=60)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=TAG_TEXT, i=TAG_TEXT, s=TAG_TEXT, d=TAG_TEXT, key_tags=KEY_TEXT)
def test_any_tag_text_gives_a_result_never_a_crash(ed, q, i, s, d, key_tags):
    tags = [(b"q", q), (b"i", i)]
    msg = dkimkeys.sign_tags(message(), ed, [(b"d", d), (b"s", s)] + tags)
    engine = engine_for()
    engine.resolver.backend.add(key_line(ed, tags=f"v=DKIM1; k=ed25519; {key_tags}"))
    try:
        results = dkim_results(msg, engine=engine)
    finally:
        engine.close()
    assert len(results) == 1
    assert results[0].symbol != "DKIM_ERROR" and results[0].result in {
        "pass", "fail", "neutral", "policy", "permerror", "temperror"}, results[0]


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


@pytest.mark.parametrize("relaxed", [True, False])
def test_dkim_body_hash_in_chunks_is_byte_for_byte_dkimpys(relaxed):
    import hashlib
    import random
    import re
    from dkim.canonicalization import Relaxed, Simple
    from mailwarden.signing import BodyHash
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
