"""dmarc: tree walks kept between messages (per engine) within the TTL of
the answers they read, never one a failed lookup cut short; parsed records
and From fields kept by their text, the same as parsed afresh."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from mailwarden.checks import dmarc as dmarcmod
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

GOOD, BAD = "192.0.2.1", "192.0.2.9"
ZONE = """
d.example. 300 TXT "v=spf1 ip4:192.0.2.1 -all"
_dmarc.d.example. 30 TXT "v=DMARC1; p=reject"
e.example. 300 TXT "v=spf1 ip4:192.0.2.1 -all"
_dmarc.e.example. 300 TXT "v=DMARC1; p=reject"
"""


class Swappable:
    def __init__(self, text: str):
        self.zone = ZoneBackend(text)

    def lookup(self, name, rdtype, timeout):
        return self.zone.lookup(name, rdtype, timeout)


class Bench:
    def __init__(self, zone: str = ZONE):
        self.now = 1000.0
        self.backend = Swappable(zone)
        cfg = loads("[authserv]\nid = mx.test.example\n")
        self.engine = Engine(cfg, hostname="mx.test.example",
                             resolver=Resolver(cfg.dns, backend=self.backend,
                                               clock=lambda: self.now))
        (self.check,) = [c for c in self.engine.checks if c.name == "dmarc"]

    def dmarc(self, domain: str = "d.example", ip: str = GOOD):
        verdict, _conn, _msg = run_offline(
            self.engine, client_ip=ip, helo="mail.helo.example", mail_from=f"a@{domain}",
            rcpts=["b@rcpt.example"],
            message=f"From: <a@{domain}>\r\nSubject: x\r\n\r\nhi\r\n".encode())
        (result,) = [r for r in verdict.results if r.check == "dmarc"]
        return result.result, verdict.action.name.lower()

    def close(self):
        self.engine.close()


@pytest.fixture
def walks(monkeypatch):
    """The domains the check walked the tree from."""
    calls = []
    original = dmarcmod.tree_walk

    def tree_walk(domain, lookup):
        calls.append(domain)
        return original(domain, lookup)
    monkeypatch.setattr(dmarcmod, "tree_walk", tree_walk)
    return calls


@pytest.fixture
def bench():
    benches = []

    def make(zone=ZONE):
        benches.append(Bench(zone))
        return benches[-1]
    yield make
    for b in benches:
        b.close()


def test_a_walk_is_kept_from_one_message_to_the_next(bench, walks):
    b = bench()
    assert b.dmarc() == ("pass", "accept")
    assert b.dmarc(ip=BAD) == ("fail", "reject")
    assert walks == ["d.example"]
    assert b.dmarc("e.example") == ("pass", "accept")
    assert walks == ["d.example", "e.example"]


def test_kept_until_the_first_answer_it_read_expires(bench, walks):
    b = bench()
    b.dmarc()
    b.now += 29.9
    b.dmarc()
    assert walks == ["d.example"]
    b.now += 0.1                    # _dmarc.d.example's 30 s are over
    b.dmarc()
    assert walks == ["d.example"] * 2


def test_a_changed_record_is_seen_once_its_ttl_has_passed(bench, walks):
    b = bench()
    assert b.dmarc(ip=BAD) == ("fail", "reject")
    b.backend.zone = ZoneBackend(ZONE.replace("p=reject", "p=none"))
    b.now += 29
    assert b.dmarc(ip=BAD) == ("fail", "reject")      # within the TTL: as the DNS cache
    b.now += 1
    assert b.dmarc(ip=BAD)[1] != "reject"                # p=none now


@pytest.mark.parametrize("fault", ["_dmarc.d.example. SERVFAIL", "_dmarc.example. TIMEOUT"])
def test_a_walk_a_failed_lookup_cut_short_is_never_kept(bench, walks, fault):
    zone = ZONE if "TIMEOUT" in fault else ZONE.replace("_dmarc.d.example. 30 TXT", "; ")
    b = bench(zone + fault + "\n")
    first = b.dmarc(ip=BAD)
    assert b.dmarc(ip=BAD) == first
    assert walks == ["d.example"] * 2
    assert len(b.check.walks) == 0
    # the domain's own record decides even when the walk above it failed
    assert first == (("fail", "reject") if "TIMEOUT" in fault else ("temperror", "tempfail"))


def test_the_walk_cache_is_bounded(bench, walks, monkeypatch):
    monkeypatch.setattr(dmarcmod, "WALK_CACHE_SIZE", 2)
    b = bench(ZONE + "".join(f'x{n}.example. 300 TXT "v=spf1 -all"\n' for n in range(4)))
    for n in range(4):
        b.dmarc(f"x{n}.example")
    assert len(b.check.walks) == 2
    b.dmarc("x3.example")
    assert len(walks) == 4
    b.dmarc("x0.example")
    assert len(walks) == 5


def test_a_new_engine_starts_empty(bench, walks):
    bench().dmarc()
    bench().dmarc()
    assert walks == ["d.example"] * 2


def test_a_parsed_record_is_kept_by_name_and_text():
    text = "v=DMARC1; p=quarantine; sp=none; pct=0"
    first = dmarcmod.parse_record("k.example", text)
    assert dmarcmod.parse_record("k.example", text) is first
    assert dmarcmod.parse_record("j.example", text).domain == "j.example"
    long = text + "; x=" + "y" * dmarcmod.PARSE_CACHE_TEXT
    misses = dmarcmod._parse_record_kept.cache_info().misses
    assert dmarcmod.parse_record("k.example", long) == dmarcmod._parse_record("k.example", long)
    assert dmarcmod._parse_record_kept.cache_info().misses == misses   # too long to keep


RECORD_PARTS = st.sampled_from(["v=DMARC1", "p=reject", "p=none", "sp=quarantine", "np=x",
                                "pct=0", "pct=50", "t=y", "t=n", "psd=y", "adkim=s", "rua=",
                                "rua=mailto:a@b.example", "aspf=q", " ", "=", "P=Reject"])


@settings(max_examples=300)
@given(st.lists(RECORD_PARTS, max_size=8).map("; ".join), st.sampled_from(["a.example", "b"]))
def test_a_kept_record_is_the_record_parsed_afresh(text, domain):
    assert dmarcmod.parse_record(domain, text) == dmarcmod._parse_record(domain, text)
    assert dmarcmod.parse_record(domain, text) == dmarcmod._parse_record(domain, text)


FROM_PARTS = st.sampled_from(["a@b.example", "<c@D.Example>", ",", "Group:", ";", "\"x@y\"",
                              "(a@c.example)", "@", "e@f", " ", "<", ">", "g@h.example.",
                              "\u00e9@\u00e9.example"])


@settings(max_examples=300)
@given(st.lists(st.lists(FROM_PARTS, max_size=6).map("".join), max_size=3))
def test_kept_from_domains_are_those_read_afresh(values):
    assert dmarcmod.from_domains(values) == dmarcmod._from_domains(tuple(values))
    assert dmarcmod.from_domains(list(values)) == dmarcmod._from_domains(tuple(values))
