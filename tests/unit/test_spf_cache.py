"""spf: results kept between messages (per engine), within the TTL of the
DNS answers they came from; never a temperror, nor a result that depends
on what the key misses (the local part, the time)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mailwarden.checks import spf as spfmod
from mailwarden.checks.spf import SpfCheck
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

REGISTRY = {SpfCheck.name: SpfCheck}
IP = "192.0.2.1"


class Swappable:
    """A zone whose records the test can change (a new zone, same names)."""

    def __init__(self, text: str):
        self.zone = ZoneBackend(text)

    def lookup(self, name, rdtype, timeout):
        return self.zone.lookup(name, rdtype, timeout)


class Bench:
    """One engine on a swappable zone and a clock the test moves."""

    def __init__(self, zone: str):
        self.now = 1000.0
        self.backend = Swappable(zone)
        cfg = loads("[authserv]\nid = mx.test.example\n[check.spf]\nhelo = no\n",
                    registry=REGISTRY)
        self.engine = Engine(cfg, registry=REGISTRY, hostname="mx.test.example",
                             resolver=Resolver(cfg.dns, backend=self.backend,
                                               clock=lambda: self.now))
        (self.check,) = [c for c in self.engine.checks if isinstance(c, SpfCheck)]

    def spf(self, mail_from: str, ip: str = IP) -> tuple:
        verdict, _conn, _msg = run_offline(self.engine, client_ip=ip, helo="mail.helo.example",
                                           mail_from=mail_from, rcpts=["b@rcpt.example"],
                                           message=b"From: a@example.com\r\n\r\nhi\r\n")
        (result,) = [r for r in verdict.results if r.check == "spf"]
        return result.result, result.reason

    def close(self):
        self.engine.close()


@pytest.fixture
def queries(monkeypatch):
    """How many times pyspf evaluated a record set."""
    calls = []
    original = spfmod._Query.check

    def check(self, *a, **kw):
        calls.append(self.s)
        return original(self, *a, **kw)
    monkeypatch.setattr(spfmod._Query, "check", check)
    return calls


def bench(zone):
    return Bench(zone)


def test_a_result_is_kept_for_the_same_client_domain_and_helo(queries):
    b = bench('s.example. 300 TXT "v=spf1 ip4:192.0.2.1 -all"')
    try:
        assert b.spf("a@s.example")[0] == "pass"
        assert b.spf("other@s.example")[0] == "pass"     # no macro: the local part does not count
        assert len(queries) == 1
        assert b.spf("a@s.example", ip="192.0.2.2")[0] == "fail"     # another client
        assert len(queries) == 2
    finally:
        b.close()


def test_kept_until_the_first_answer_it_came_from_expires(queries):
    b = bench('s.example. 300 TXT "v=spf1 include:short.example -all"\n'
              'short.example. 30 TXT "v=spf1 ip4:192.0.2.1 -all"')
    try:
        assert b.spf("a@s.example")[0] == "pass"
        b.now += 29.9
        assert b.spf("a@s.example")[0] == "pass"
        assert len(queries) == 1
        b.now += 0.1                    # 30 s: the include's answer has left the cache
        assert b.spf("a@s.example")[0] == "pass"
        assert len(queries) == 2
    finally:
        b.close()


def test_a_changed_record_is_seen_once_its_ttl_has_passed(queries):
    b = bench('s.example. 60 TXT "v=spf1 ip4:192.0.2.1 -all"')
    try:
        assert b.spf("a@s.example")[0] == "pass"
        b.backend.zone = ZoneBackend('s.example. 60 TXT "v=spf1 -all"')
        b.now += 59
        assert b.spf("a@s.example")[0] == "pass"         # within the TTL: as the DNS cache
        b.now += 1
        assert b.spf("a@s.example")[0] == "fail"
    finally:
        b.close()


def test_a_temperror_is_never_kept(queries):
    b = bench('s.example. 300 TXT "v=spf1 a:slow.s.example -all"\nslow.s.example. TIMEOUT')
    try:
        assert b.spf("a@s.example")[0] == "temperror"
        assert b.spf("a@s.example")[0] == "temperror"
        assert len(queries) == 2
        assert len(b.check.cache) == 0
    finally:
        b.close()


def test_a_result_a_temporary_error_touched_is_not_kept(queries):
    # pyspf drops an exp= it cannot fetch: the fail is right, its explanation
    # is not the domain's; kept, the next message would never get it
    b = bench('s.example. 300 TXT "v=spf1 -all exp=why.s.example"\nwhy.s.example. SERVFAIL')
    try:
        assert b.spf("a@s.example")[0] == "fail"
        assert len(b.check.cache) == 0
    finally:
        b.close()


def test_the_explanation_comes_with_the_kept_result(queries):
    b = bench('s.example. 300 TXT "v=spf1 -all exp=why.s.example"\n'
              'why.s.example. 300 TXT "%{d} sends from its own hosts only"')
    try:
        first = b.spf("a@s.example")
        assert first == b.spf("b@s.example")
        assert "s.example sends from its own hosts only" in first[1]
        assert len(queries) == 1
    finally:
        b.close()


@pytest.mark.parametrize("record", [
    '"v=spf1 exists:%{l}.ok.s.example -all"',
    '"v=spf1 -all exp=why.s.example"',
])
def test_results_that_expand_the_local_part_are_not_kept(queries, record):
    b = bench(f's.example. 300 TXT {record}\n'
              'alice.ok.s.example. 300 A 127.0.0.2\n'
              'why.s.example. 300 TXT "%{l} may not send from %{i}"')
    try:
        alice, bob = b.spf("alice@s.example"), b.spf("bob@s.example")
        assert len(queries) == 2 and len(b.check.cache) == 0
        if "exists" in record:
            assert (alice[0], bob[0]) == ("pass", "fail")
        else:
            assert "alice may not send" in alice[1] and "bob may not send" in bob[1]
    finally:
        b.close()


def test_the_cache_is_bounded(monkeypatch, queries):
    monkeypatch.setattr(spfmod, "CACHE_SIZE", 3)
    b = bench('s.example. 300 TXT "v=spf1 ip4:192.0.2.0/24 -all"')
    try:
        for n in range(1, 8):
            assert b.spf("a@s.example", ip=f"192.0.2.{n}")[0] == "pass"
        assert len(b.check.cache) == 3
        assert b.spf("a@s.example", ip="192.0.2.7")[0] == "pass"     # among the newest
        assert len(queries) == 7
        assert b.spf("a@s.example", ip="192.0.2.1")[0] == "pass"     # the oldest went out
        assert len(queries) == 8
    finally:
        b.close()


def test_a_new_engine_starts_empty(queries):
    b = bench('s.example. 300 TXT "v=spf1 ip4:192.0.2.1 -all"')
    other = bench('s.example. 300 TXT "v=spf1 ip4:192.0.2.1 -all"')
    try:
        b.spf("a@s.example")
        other.spf("a@s.example")
        assert len(queries) == 2
    finally:
        b.close()
        other.close()


# sender-controlled: the local part, the domain's case, the client; a result
# from the cache is always the one a fresh evaluation gives
MACRO_ZONE = ('s.example. 300 TXT "v=spf1 exists:%{l}.ok.s.example ip4:192.0.2.1 -all '
              'exp=why.s.example"\n'
              'why.s.example. 300 TXT "%{l}@%{o} from %{i} denied"\n'
              'p.example. 300 TXT "v=spf1 ip4:192.0.2.2 ~all"\n'
              'a.ok.s.example. 300 A 127.0.0.2\n')


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(st.sampled_from(["a", "b", "A", "x.y"]),
                                   st.sampled_from(["s.example", "S.Example", "p.example"]),
                                   st.sampled_from(["192.0.2.1", "192.0.2.2", "192.0.2.3"])),
                         min_size=1, max_size=6))
def test_a_cached_result_is_what_a_fresh_evaluation_gives(messages):
    kept = bench(MACRO_ZONE)
    try:
        for local, domain, ip in messages:
            fresh = bench(MACRO_ZONE)
            try:
                expected = fresh.spf(f"{local}@{domain}", ip=ip)
            finally:
                fresh.close()
            assert kept.spf(f"{local}@{domain}", ip=ip) == expected
    finally:
        kept.close()


@settings(max_examples=200)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_the_address_object_is_read_as_pyspf_reads_its_text(address):
    from mailwarden.model import unmapped
    address = unmapped(address)
    mine = spfmod._Query(None, 10, 2, i=address, s="a@b.example", h="h.example")
    theirs = spfmod.pyspf.query(i=str(address), s="a@b.example", h="h.example")
    for name in ("ipaddr", "c", "i", "A", "v", "cidrmax", "iplist"):
        assert getattr(mine, name) == getattr(theirs, name), name
