"""The From field cannot be shaped to dodge a policy, nor break a parser open.

DMARC (RFC 7489 §6.6.1): every author domain of every From field is
evaluated and the strictest outcome applies; a From without any author
domain is refused by default.  bank.example publishes ``p=reject``; the
attacker sends from evil.example's own servers (SPF pass, aligned with
evil.example), so a check that looked at evil.example alone would pass.

Submission: a From the parser cannot read (a thousand ``:``, nested groups,
comments or brackets) is refused for an authenticated client, whatever
``temperror_action`` says; a crash of a policy check is a tempfail, never
an accept.  Names are mapped by UTS #46 everywhere.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden import address
from mailwarden.address import DomainSet, authors, header_addresses, normalize_domain
from mailwarden.checks.dmarc import _normalize, from_domains
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from mailwarden.urls import normalize_host

ROOT = Path(__file__).resolve().parents[2]
ZONE = """
bank.example.          TXT "v=spf1 ip4:203.0.113.0/24 -all"
_dmarc.bank.example.   TXT "v=DMARC1; p=reject"
evil.example.          TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.evil.example.   TXT "v=DMARC1; p=none"
outbound.example.      TXT "v=spf1 -all"
"""
ATTACKER = "198.51.100.66"
BASE = "[authserv]\nid = mx.test.example\n"
PROFILE = settings(max_examples=150, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])


def engine_for(text=""):
    cfg = loads(BASE + text)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                  hostname="mx.test.example")


def message(*froms: str) -> bytes:
    head = "".join(f"From: {f}\r\n" for f in froms)
    return (head + "To: bob@rcpt.example\r\nSubject: invoice\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@evil.example>\r\n"
            "\r\nPay now.\r\n").encode("utf-8", "surrogateescape")


def attack(engine, *froms: str, **kw):
    kw.setdefault("client_ip", ATTACKER)
    kw.setdefault("mail_from", "x@evil.example")
    kw.setdefault("rcpts", ["bob@rcpt.example"])
    verdict, conn, msg = run_offline(engine, helo="mail.evil.example",
                                     message=message(*froms), **kw)
    if msg is not None:
        msg.close()
    engine.close_connection(conn)
    return verdict


def of(verdict, check):
    return [r for r in verdict.results if r.check == check]


def crashes(verdict):
    return [r for r in verdict.results if "internal error" in (r.reason or "")]


@pytest.fixture(scope="module")
def engine():
    e = engine_for()
    yield e
    e.close()


# -- DMARC: the findings ---------------------------------------------------------

FINDINGS = {
    "two-identical-fields": ("service@bank.example", "service@bank.example"),
    "list-bank-then-evil": ("<service@bank.example>, x@evil.example",),
    "list-evil-then-bank": ("x@evil.example, Bank <service@bank.example>",),
    "two-fields-evil-first": ("x@evil.example", "service@bank.example"),
    "group": ("Bank: service@bank.example, x@evil.example;",),
    "nested-comments-65": ("service@bank.example " + "(" * 65 + ")" * 65,),
    "nested-comments-5000": ("service@bank.example " + "(" * 5000 + ")" * 5000,),
    "colons-1000": ("service@bank.example" + ":" * 1000,),
    "unterminated-quote": ('"Bank <service@bank.example>',),
    "encoded-word-only": ("=?utf-8?q?service=40bank.example?=",),
}


@pytest.mark.parametrize("froms", FINDINGS.values(), ids=FINDINGS.keys())
def test_bank_policy_applies_however_from_is_shaped(engine, froms):
    verdict = attack(engine, *froms)
    (r,) = of(verdict, "dmarc")
    assert verdict.action == "reject" and verdict.reply.line().startswith("550 5.7.1"), \
        (verdict.reply, r)
    assert (r.result, r.symbol) == ("fail", "DMARC_FAIL_REJECT"), r
    assert dict((p[0], p[1]) for p in r.properties)["header.from"] == "bank.example"
    assert not crashes(verdict)


def test_the_strictest_outcome_names_every_author_domain(engine):
    verdict = attack(engine, "x@evil.example, service@bank.example")
    (r,) = of(verdict, "dmarc")
    assert "evil.example=pass, bank.example=fail" in r.reason, r.reason
    assert "2 addresses in From" in r.reason
    # A-R carries one dmarc result, the strictest
    ar = dict(verdict.headers_added).get("Authentication-Results", "")
    assert ar.count("dmarc=") <= 1


def test_evil_alone_still_passes(engine):
    verdict = attack(engine, "x@evil.example")
    (r,) = of(verdict, "dmarc")
    assert r.result == "pass" and verdict.action != "reject"


@pytest.mark.parametrize("froms", [(), ("undisclosed-recipients:;",), ("nobody",),
                                   ("=?utf-8?q?nobody?=",),
                                   (", ".join(f"u@d{i}.example" for i in range(11)),)])
def test_no_author_domain_refused_by_default(froms):
    for text, refused in (("", True), ("[check.dmarc]\nreject_bad_from = no\n", False)):
        e = engine_for(text)
        try:
            verdict = attack(e, *froms)
        finally:
            e.close()
        (r,) = of(verdict, "dmarc")
        assert (r.result, r.symbol) == ("permerror", "DMARC_BAD_FROM"), r
        assert (verdict.action == "reject") is refused, verdict
        if refused:
            assert verdict.reply.line().startswith("550 5.7.1")


# -- DMARC: a property over From shapes -----------------------------------------

BANK = st.sampled_from([
    "service@bank.example", "<service@bank.example>", "Bank <service@bank.example>",
    '"Bank, Inc." <service@bank.example>', "Bank (support (desk)) <service@bank.example>",
    "=?utf-8?q?Bank?= <service@bank.example>", "=?utf-8?b?QmFuaw==?= <service@BANK.example>",
    '"x@evil.example"@bank.example', '"x@evil.example" <service@bank.example>',
    "service@bank.example.", "service @ bank.example", "<@evil.example:service@bank.example>",
    "Bank: service@bank.example;", "a: b: service@bank.example;;",
])
DECOY = st.sampled_from([
    "x@evil.example", '"service@bank.example" <x@evil.example>', "(service@bank.example) x@evil.example",
    "=?utf-8?q?service=40bank.example?= <x@evil.example>", "undisclosed-recipients:;",
    "nobody", '"@" <x@evil.example>', "x@[192.0.2.1]",
])
# garbage anywhere around any address; none of it can enclose an address in a
# quoted string, comment or domain literal (that would make it no author)
GARBAGE = st.sampled_from([
    "", " ", ")", "))", "<", ">", "<<<", ":", "::::", ":" * 300, ";", ",", "]", "@", "@@",
    "\x00", "\x7f", "\udcff", "=?x?q?", "=?utf-8?b?!!?=", "(x)", "(" * 80 + ")" * 80,
    "<" * 40 + ">" * 40, " a: b: c: d:",
])
# what opens and never closes: only at the end of a field
TAIL = st.sampled_from(["", "(", "((((", "\"", "[", "\\", "(" * 3000, '"' + "(" * 50])


@st.composite
def from_fields(draw):
    """(From field values, whether the shape is well formed)."""
    items = draw(st.lists(DECOY, max_size=3))
    items.insert(draw(st.integers(0, len(items))), draw(BANK))
    junk = draw(st.lists(st.tuples(st.integers(0, 7), GARBAGE), max_size=3))
    for where, text in junk:
        i = min(where // 2, len(items) - 1)
        items[i] = items[i] + text if where % 2 else text + items[i]
    nfields = draw(st.integers(1, min(3, len(items))))
    fields = [", ".join(items[i::nfields]) for i in range(nfields)]
    tail = draw(TAIL)
    fields[-1] += tail
    return fields, not (tail or any(g for _, g in junk))


@PROFILE
@given(from_fields())
def test_bank_reject_applies_to_every_from_shape(engine, shape):
    fields, clean = shape
    verdict = attack(engine, *fields)
    (r,) = of(verdict, "dmarc")
    assert not crashes(verdict), verdict.results
    # bank.example is an author: its p=reject applies, or nothing can be read
    # and the message is refused as having no author domain
    assert verdict.action == "reject" and verdict.reply.code == 550, (fields, r)
    assert r.symbol in ("DMARC_FAIL_REJECT", "DMARC_BAD_FROM"), (fields, r)
    if clean:
        assert r.symbol == "DMARC_FAIL_REJECT", (fields, r)
        assert ("header.from", "bank.example") in [p[:2] for p in r.properties]


# -- parsers: unreadable, never a crash ------------------------------------------

DEEP = st.one_of(
    st.integers(1, 3000).map(lambda n: ":" * n),
    st.integers(1, 500).map(lambda n: "g: " * n + "a@b.example" + ";" * n),
    st.integers(1, 2000).map(lambda n: "(" * n + ")" * n),
    st.integers(1, 2000).map(lambda n: "<" * n + "a@b.example" + ">" * n),
    st.integers(1, 2000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 1000).map(lambda n: '"' * n + "@" * n),
    st.integers(1, 1000).map(lambda n: '("' * n),
    st.integers(1, 1000).map(lambda n: "\\" * n),
    st.text(alphabet=':;,()<>[]"\\@. ag', max_size=3000),
)


def _glue(parts) -> str:
    """The parts after an address, a space first where one would lengthen its domain."""
    text = "".join(parts)
    return text if not text or text[0] in ':;,()<>[]"\\@ ' else " " + text


@PROFILE
@given(st.lists(DEEP, min_size=1, max_size=3))
def test_no_from_shape_crashes_the_readers(parts):
    value = "ceo@outbound.example" + _glue(parts)
    found = authors([value])                    # never raises
    header_addresses([value])                   # None or a list, never an exception
    assert len(found.domains) <= address.MAX_DOMAINS_KEPT
    assert "outbound.example" in found.domains, found


def _login_map(tmp_path):
    path = tmp_path / "logins"
    path.write_text("alice: alice@outbound.example\n")
    return (BASE + "[relay]\nlocal_domains = outbound.example\n"
            f"[check.submission]\nsender_login_map = {path}\nrequire_tls_for_auth = no\n")


@pytest.fixture(scope="module")
def submission_engine(tmp_path_factory):
    e = engine_for(_login_map(tmp_path_factory.mktemp("logins"))[len(BASE):])
    yield e
    e.close()


def alice_sends(engine, *froms):
    return attack(engine, *froms, client_ip="198.51.100.70", auth_user="alice",
                  mail_from="alice@outbound.example")


def test_colon_bomb_does_not_bypass_the_login_map(submission_engine):
    verdict = alice_sends(submission_engine, "ceo@outbound.example" + ":" * 1000)
    assert verdict.action == "reject" and verdict.reply.code == 553, verdict
    assert not crashes(verdict)
    (r,) = of(verdict, "submission")
    assert r.symbol == "SUBMISSION_FROM_MISMATCH"
    # her own address is still hers
    assert alice_sends(submission_engine, "Alice <alice@outbound.example>").action == "accept"


@PROFILE
@given(st.lists(DEEP, min_size=1, max_size=2), st.booleans())
def test_authenticated_sender_never_passes_as_someone_else(submission_engine, parts, before):
    junk = "".join(parts)
    value = junk + "ceo@outbound.example" if before else "ceo@outbound.example" + junk
    verdict = alice_sends(submission_engine, value)
    assert not crashes(verdict), verdict.results
    assert verdict.action == "reject" and verdict.reply.code == 553, (value[:80], verdict)


def test_unreadable_from_refused_whatever_the_temperror_setting(tmp_path):
    text = (_login_map(tmp_path)[len(BASE):] + "tempfail_on_error = no\n"
            "[policy]\ntemperror_action_authenticated = accept\n")
    e = engine_for(text)
    try:
        for value in ("ceo@outbound.example" + ":" * 1000,
                      "ceo@outbound.example" + "(" * 100 + ")" * 100,
                      'alice@outbound.example, "ceo@outbound.example',
                      "alice@outbound.example <ceo@outbound.example"):
            verdict = alice_sends(e, value)
            assert verdict.action == "reject" and verdict.reply.code == 553, (value[:60], verdict)
    finally:
        e.close()


def test_bounded_work_on_a_from_full_of_domains():
    # a From of Postfix's largest header (100 KB) of distinct IDNs: bounded
    # tokens read, the rest is overflow, which DMARC and submission refuse
    value = "".join(f"@{'ä' * 40}{i}.example " for i in range(1800))
    found = authors([value])
    assert found.overflow and len(found.domains) == address.MAX_DOMAINS_KEPT
    assert from_domains([value])[2].startswith("more than 10 author domains")


def test_a_second_domain_beside_her_address_is_refused(submission_engine):
    # the email package reads alice@; a reader may also see ceo@'s domain
    verdict = alice_sends(submission_engine, "alice@outbound.example (x) ceo@evil.example")
    assert verdict.action == "reject" and verdict.reply.code == 553, verdict


def test_dkim_sign_skips_an_unreadable_from(tmp_path):
    import shutil
    import os
    for name in ("outbound-ed2026.private",):
        shutil.copy(ROOT / "tests/data/keys" / name, tmp_path / name)
        os.chmod(tmp_path / name, 0o600)
    e = engine_for("[relay]\ntrusted_networks = 127.0.0.0/8\n[check.dkim_sign]\n"
                   f"keys = outbound.example:ed2026:{tmp_path}/outbound-ed2026.private\n"
                   "sign_trusted_networks = 127.0.0.0/8\n"
                   "sign_trusted_domains = outbound.example\n")
    try:
        verdict = attack(e, "ceo@outbound.example" + ":" * 1000, client_ip="127.0.0.1",
                         mail_from="ceo@outbound.example")
        assert not crashes(verdict)
        assert not of(verdict, "dkim_sign")
        signed = attack(e, "ceo@outbound.example", client_ip="127.0.0.1",
                        mail_from="ceo@outbound.example")
        assert [r.symbol for r in of(signed, "dkim_sign")] == ["DKIM_SIGNED"]
    finally:
        e.close()


# -- a policy check's crash fails closed ----------------------------------------

def _boom(*_args, **_kw):
    raise RuntimeError("a reading nobody foresaw")


@pytest.mark.parametrize("module,name", [("submission", "authors"), ("dmarc", "authors"),
                                         ("relay", "analyze")])
def test_policy_check_crash_tempfails_whatever_temperror_action(tmp_path, monkeypatch,
                                                                  module, name):
    import importlib
    # submission reads the From field through the login map's rule
    where = "mailwarden.loginmap" if module == "submission" else f"mailwarden.checks.{module}"
    monkeypatch.setattr(importlib.import_module(where), name, _boom)
    text = (_login_map(tmp_path)[len(BASE):] + "tempfail_on_error = no\n"
            f"[check.{module}]\ntempfail_on_error = no\n"
            "[policy]\ntemperror_action = accept\ntemperror_action_authenticated = accept\n")
    if module == "submission":
        text = text.replace(f"tempfail_on_error = no\n[check.{module}]\n", "")
    e = engine_for(text)
    try:
        kw = ({"client_ip": "198.51.100.70", "auth_user": "alice",
               "mail_from": "alice@outbound.example"} if module == "submission"
              else {"rcpts": ["bob@outbound.example"]})
        verdict = attack(e, "alice@outbound.example", **kw)
    finally:
        e.close()
    assert [r.check for r in crashes(verdict)] == [module]
    assert verdict.action == "tempfail" and verdict.reply.code == 451, verdict


# -- one IDNA rule: UTS #46 -------------------------------------------------------

def test_sharp_s_is_mapped_by_uts46_not_idna2003():
    # IDNA 2003 maps faß.de to fass.de, a different domain; UTS #46
    # (non-transitional) keeps the ß: xn--fa-hia.de
    assert normalize_domain("Faß.de") == "xn--fa-hia.de"
    assert normalize_host("faß.de") == ("name", "xn--fa-hia.de")
    assert _normalize("faß.de") == "xn--fa-hia.de"
    assert authors(["Grüße <info@faß.de>"]).domains == ("xn--fa-hia.de",)
    local = DomainSet.of(["faß.de"])
    assert "xn--fa-hia.de" in local and "fass.de" not in local
    assert address.analyze("u@fass.de").hops == ("fass.de",)
    from mailwarden.audit.domain import _domain_arg
    assert _domain_arg("Faß.de.") == "xn--fa-hia.de"


LABELS = st.text(alphabet=st.sampled_from("abcßäöüçéσςΣ٠١ﬁ-"), min_size=1, max_size=12)


@PROFILE
@given(st.lists(LABELS, min_size=1, max_size=3))
def test_addresses_and_urls_map_names_alike(labels):
    name = ".".join(labels + ["example"])
    try:
        domain = normalize_domain(name)
    except address.AddressProblem:
        return
    kind, host = normalize_host(name)
    # urls.py refuses more (LDH labels); what both take, both map alike
    if kind == "name":
        assert host == domain


def _declared() -> set:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for line in lines if line.strip()}


_UNLISTED = {"spf": ["pyspf"]}


def test_every_imported_distribution_is_declared():
    declared = _declared()
    assert "idna" in declared
    dists = importlib.metadata.packages_distributions()
    missing = set()
    for path in (ROOT / "mailwarden").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                if root in sys.stdlib_module_names or root == "mailwarden":
                    continue
                # Debian's python3-spf ships spf.py without distribution metadata
                names = {d.lower().replace("_", "-")
                         for d in dists.get(root, _UNLISTED.get(root, [root]))}
                if not names & declared and root not in ("redis",):      # redis: an extra
                    missing.add(f"{root} ({path.relative_to(ROOT)})")
    assert not missing, sorted(missing)


# -- relay: the recipient reader is bounded too -----------------------------------

@PROFILE
@given(st.lists(DEEP, min_size=1, max_size=2), st.booleans())
def test_analyze_reads_any_recipient_shape_without_raising(parts, before):
    junk = "".join(parts)
    route = address.analyze(junk + "u@evil.example" if before else "u@evil.example" + junk)
    assert route.problem or route.hops, route
    # what is read is never only local when a foreign domain was written
    assert route.problem or any(h != "outbound.example" for h in route.hops)


def test_overlong_recipient_is_unreadable_and_refused():
    route = address.analyze("a" * 2000 + "@outbound.example")
    assert route.problem.startswith("address longer than")
    e = engine_for("[relay]\nlocal_domains = outbound.example\n")
    try:
        verdict = attack(e, "x@evil.example", rcpts=["a" * 2000 + "@outbound.example"])
    finally:
        e.close()
    assert verdict.action == "reject" and verdict.reply.code == 554, verdict
