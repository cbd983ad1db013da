"""mailwarden.dnslist: one list definition and one answer reader for the
dnsbl and uribl checks, which therefore read the same answer the same way."""

from __future__ import annotations

import ast
import functools
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden import dnslist
from mailwarden.config import loads
from mailwarden.dns import Answer, Resolver, Status, ZoneBackend
from mailwarden.engine import Engine, run_offline

ROOT = Path(__file__).resolve().parents[2]

# The same list, in each check's grammar: one code, the Spamhaus error range
# and two more error codes (SURBL/URIBL's 127.0.0.1, DBL's 127.0.1.255).
CONFIG = """
[authserv]
id = mx.test.example
[check.iprev]
enabled = no
[check.helo]
enabled = no
[check.dnsbl.zen]
zone = zen.test.example
codes = 127.0.0.2:SBL
errors = 127.255.255.0/24 127.0.0.1 127.0.1.255
[check.uribl]
enabled = yes
lists = zen
[check.uribl.zen]
zone = zen.test.example
match = codes
codes = 127.0.0.2:ZEN_SBL
errors = 127.255.255.0/24, 127.0.0.1, 127.0.1.255
subdomains = no
"""
CLIENT = "198.51.100.20"
DNSBL_NAME = "20.100.51.198.zen.test.example."
URIBL_NAME = "listed.example.zen.test.example."

# answer records (or a pseudo type) -> (result, symbol) of both checks
CASES = {
    "spamhaus public resolver": (["A 127.255.255.254"], ("permerror", "ZEN_BLOCKED")),
    "spamhaus excessive queries": (["A 127.255.255.255"], ("permerror", "ZEN_BLOCKED")),
    "surbl/uribl refused 127.0.0.1": (["A 127.0.0.1"], ("permerror", "ZEN_BLOCKED")),
    "dbl ip queried 127.0.1.255": (["A 127.0.1.255"], ("permerror", "ZEN_BLOCKED")),
    "outside 127/8": (["A 192.0.2.1"], ("permerror", "ZEN_BLOCKED")),
    "listing beside a refusal": (["A 127.0.0.2", "A 127.255.255.254"],
                                 ("permerror", "ZEN_BLOCKED")),
    "listed": (["A 127.0.0.2"], ("fail", "ZEN_SBL")),
    "nxdomain": ([], None),
    "servfail": (["SERVFAIL"], ("temperror", "ZEN_FAIL")),
    "timeout": (["TIMEOUT"], ("temperror", "ZEN_FAIL")),
}


def _zone(records) -> str:
    return "".join(f"{name} {r}\n" for name in (DNSBL_NAME, URIBL_NAME) for r in records)


def _outcomes(records) -> dict:
    config = loads(CONFIG)
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(_zone(records))))
    message = (b"From: a@sender.example\r\nTo: b@test.example\r\nSubject: t\r\n"
               b"Content-Type: text/plain\r\n\r\nsee http://listed.example/ now\r\n")
    try:
        verdict, _, msg = run_offline(engine, client_ip=CLIENT, helo="mail.sender.example",
                                      mail_from="a@sender.example", rcpts=["b@test.example"],
                                      message=message)
        if msg is not None:
            msg.close()
    finally:
        engine.close()
    return {check: sorted((r.result, r.symbol) for r in verdict.results if r.check == check)
            for check in ("dnsbl", "uribl")}, verdict


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_checks_read_the_same_answer_the_same_way(case):
    records, expected = CASES[case]
    outcomes, verdict = _outcomes(records)
    want = [expected] if expected else []
    assert outcomes["dnsbl"] == want, outcomes
    assert outcomes["uribl"] == want, outcomes
    if expected and expected[0] != "fail":
        # an error is never a listing and never holds mail back
        assert verdict.action in ("accept", "add_header"), verdict


def test_refused_answers_are_logged_by_both(caplog):
    _outcomes(["A 127.255.255.254"])
    lines = [r.getMessage() for r in caplog.records if "refused or broke the query" in r.getMessage()]
    assert any("dnsbl zen.test.example" in line for line in lines), lines
    assert any("uribl zen.test.example" in line for line in lines), lines


def test_both_grammars_make_the_same_list():
    config = loads(CONFIG)
    a = config.check("dnsbl").subsections["zen"].dnslist
    b = config.check("uribl").subsections["zen"].dnslist
    assert (a.zone, a.prefix, a.codes, a.errors, a.fail_symbol, a.blocked_symbol) == \
        (b.zone, b.prefix, b.codes, b.errors, b.fail_symbol, b.blocked_symbol)
    # what the grammars differ in, as documented: dnsbl names an unnamed code
    assert (a.unnamed, b.unnamed) == ("ZEN_LISTED", "")


# -- structure: neither check keeps a list definition or reader of its own ---

def _tree(name: str) -> ast.Module:
    return ast.parse((ROOT / "mailwarden" / "checks" / f"{name}.py").read_text())


@pytest.mark.parametrize("name", ["dnsbl", "uribl"])
def test_the_checks_have_no_list_definition_or_answer_reader_of_their_own(name):
    tree = _tree(name)
    list_fields = {"zone", "codes", "errors"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            fields = {t.target.id for t in node.body
                      if isinstance(t, ast.AnnAssign) and isinstance(t.target, ast.Name)}
            assert not fields & list_fields, f"{name}.{node.name} defines a DNS list"
        if isinstance(node, ast.FunctionDef):
            assert not node.name.lstrip("_").startswith(("parse_codes", "parse_zone",
                                                         "parse_errors", "read")), \
                f"{name}.{node.name} parses or reads a DNS list itself"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert "127.0.0.0/8" not in node.value or node in _docstrings(tree), \
                f"{name} decides what an answer code means itself"
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names}
    assert ("dnslist", "read") in imported
    assert not any(isinstance(n, ast.Import) and any(a.name == "ipaddress" for a in n.names)
                   for n in ast.walk(tree)), f"{name} reads answer addresses itself"


def _docstrings(tree) -> list:
    return [n.body[0].value for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)]


# -- the reader, on any answer -------------------------------------------------

_records = st.lists(st.one_of(
    st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
    st.integers(0, 0xFFFFFF).map(lambda i: str(ipaddress.IPv4Address(0x7F000000 + i))),
    st.sampled_from(["127.0.0.2", "127.255.255.254", "127.0.0.1", "127.0.1.2"]),
    st.text(max_size=40),                       # not an address: DNS text is data
), max_size=6)

@functools.lru_cache(maxsize=None)
def _lists() -> tuple:
    config = loads(CONFIG)
    return (
        config.check("dnsbl").subsections["zen"].dnslist,
        config.check("uribl").subsections["zen"].dnslist,
        dnslist.UrlSection(name="surbl", zone="multi.surbl.org", match="bitmask",
                           codes=dnslist.parse_symbol_codes("8:SURBL_PH, 16:SURBL_MW"),
                           errors=dnslist.parse_ipv4_networks("127.0.0.1"))
        .resolve(lambda key, message: AssertionError(message)).dnslist,
    )


def _good(dl, record) -> bool:
    try:
        code = ipaddress.IPv4Address(record)
    except ValueError:
        return False
    return code in dnslist.LOOPBACK and code not in dl.errors


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, 2), records=_records, seed=st.randoms())
def test_no_error_answer_is_ever_a_listing(which, records, seed):
    dl = _lists()[which]
    reading = dnslist.read(dl, Answer("q.example", "A", Status.NOERROR, tuple(records)))
    if all(_good(dl, r) for r in records):
        assert not reading.blocked and reading.problem is None
        for symbol in reading.listed:
            assert symbol in dl.listing_symbols()
    else:
        assert reading.blocked and not reading.listed
        assert reading.problem[0] == dnslist.BLOCKED == "permerror"
    shuffled = list(records)
    seed.shuffle(shuffled)             # servers vary the RRset's order; readings must not
    again = dnslist.read(dl, Answer("q.example", "A", Status.NOERROR, tuple(shuffled)))
    assert dict(again.listed) == dict(reading.listed)
    assert sorted(again.blocked) == sorted(reading.blocked)


@pytest.mark.parametrize("status", [Status.SERVFAIL, Status.TIMEOUT, Status.ERROR,
                                    Status.BUDGET])
def test_a_list_that_does_not_answer_fails_temporarily(status):
    for dl in _lists():
        reading = dnslist.read(dl, Answer("q.example", "A", status))
        assert reading.problem == (dnslist.FAILED, "fail", status.value)
        assert not reading.listed


@pytest.mark.parametrize("status", [Status.NXDOMAIN, Status.NODATA])
def test_nxdomain_and_nodata_are_not_listed(status):
    for dl in _lists():
        reading = dnslist.read(dl, Answer("q.example", "A", status))
        assert reading.problem is None and not reading.listed


def test_bits_are_read_only_from_127_0_0_x():
    dl = _lists()[2]
    listed = dnslist.read(dl, Answer("q", "A", Status.NOERROR, ("127.0.0.24",))).listed
    assert set(listed) == {"SURBL_PH", "SURBL_MW"}
    assert not dnslist.read(dl, Answer("q", "A", Status.NOERROR, ("127.0.1.24",))).listed


@settings(max_examples=100, deadline=None)
@given(record=st.text(max_size=80), subject=st.text(max_size=80))
def test_the_blocked_log_line_is_one_line_of_escaped_text(record, subject):
    """A list's answer text and the name asked about are data: no control
    character or line break reaches the log record."""
    lines = []

    class Catch:
        def warning(self, fmt, *args):
            lines.append(fmt % args)

    dl = _lists()[0]
    reading = dnslist.read(dl, Answer("q.example", "A", Status.NOERROR, (record,)))
    if reading.blocked:
        dnslist.log_blocked(Catch(), "dnsbl", dl, subject, reading.problem[2])
        assert len(lines) == 1
        assert not any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in lines[0]), lines[0]
