"""The engine's result cache: checks that declare their inputs (iprev, helo,
dnsbl) are not run again for a connection like an earlier one, and give
exactly the results they would have given."""

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.model import Connection, parse_client_address
from tests.unit.checkset import Engine, loads

BASE = """[authserv]
id = mx.test.example
[check.dnsbl.zen]
zone = zen.test.example
codes = 127.0.0.2:SBL
[check.dnsbl.dbl]
zone = dbl.test.example
kind = domain
codes = 127.0.1.2:SPAM
errors = 127.0.1.255
"""

ZONE = """
7.100.51.198.in-addr.arpa. 30 PTR mail.sender.example.
mail.sender.example. 300 A 198.51.100.7
8.100.51.198.in-addr.arpa. PTR liar.sender.example.
liar.sender.example. A 203.0.113.200
10.100.51.198.in-addr.arpa. PTR slow.sender.example.
slow.sender.example. TIMEOUT
7.100.51.198.zen.test.example. A 127.0.0.2
bad.example.dbl.test.example. A 127.0.1.2
refused.example.dbl.test.example. A 127.0.1.255
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(extra="", zone=ZONE, clock=None):
    cfg = loads(BASE + extra)
    backend = ZoneBackend(zone)
    resolver = Resolver(cfg.dns, backend=backend, clock=clock or Clock())
    return Engine(cfg, resolver=resolver, hostname="mx.test.example"), backend


def connection(engine, ip="198.51.100.7", helo="mail.sender.example", sender=""):
    """Connect and HELO (and MAIL FROM when ``sender``): every result, in order."""
    conn = Connection(client_ip=parse_client_address(ip), client_name="unknown")
    engine.connect(conn)
    if helo:
        engine.helo(conn, helo)
    results = list(conn.results)
    if sender:
        msg = engine.new_message(conn, sender, {})
        engine.mail(conn, msg)
        results += [r for r in msg.results if r.check == "dnsbl"]
    engine.close_connection(conn)
    return results


def symbols(results):
    return [(r.check, r.symbol) for r in results]


def test_a_second_connection_like_the_first_is_answered_from_the_cache():
    engine, backend = make()
    first = connection(engine, sender="a@bad.example")
    asked = len(backend.queries)
    second = connection(engine, sender="a@bad.example")
    assert second == first                   # equal Results: reason, symbol, stage, ...
    assert ("iprev", "IPREV_PASS") in symbols(first)
    assert ("helo", "HELO_FORWARD_MATCH") in symbols(first)
    assert ("dnsbl", "ZEN_SBL") in symbols(first) and ("dnsbl", "DBL_SPAM") in symbols(first)
    assert len(backend.queries) == asked
    # iprev and dnsbl at connect, helo and dnsbl at HELO, dnsbl at MAIL FROM
    assert engine.results_cache.hits == 5
    engine.close()


def test_another_client_or_helo_is_another_entry():
    engine, _ = make()
    a = connection(engine)
    b = connection(engine, ip="198.51.100.8")
    c = connection(engine, helo="other.sender.example")
    assert ("iprev", "IPREV_FAIL") in symbols(b)
    assert ("helo", "HELO_NO_ADDRESS") in symbols(c)
    assert a != b and a != c
    engine.close()


def test_an_entry_lives_no_longer_than_the_smallest_ttl_it_used():
    clock = Clock()
    engine, backend = make(clock=clock)
    connection(engine)
    clock.now += 29                          # the PTR's TTL is 30 s
    asked = len(backend.queries)
    connection(engine)
    assert len(backend.queries) == asked
    clock.now += 2
    connection(engine)
    assert ("7.100.51.198.in-addr.arpa", "PTR") in backend.queries[asked:]
    engine.close()


def test_a_temperror_is_never_kept():
    engine, backend = make()
    first = connection(engine, ip="198.51.100.10")
    assert ("iprev", "IPREV_TEMPERROR") in symbols(first)
    asked = len(backend.queries)
    second = connection(engine, ip="198.51.100.10")
    assert second == first
    assert ("slow.sender.example", "A") in backend.queries[asked:]
    assert not any(key[0] == "iprev" and key[2] == parse_client_address("198.51.100.10")
                   for key in engine.results_cache._entries)
    engine.close()


def test_a_refused_list_query_is_not_kept_and_logged_each_time(caplog):
    engine, _ = make()
    with caplog.at_level(logging.WARNING, logger="mailwarden"):
        first = connection(engine, sender="a@refused.example")
        second = connection(engine, sender="a@refused.example")
    assert ("dnsbl", "DBL_BLOCKED") in symbols(first) and second == first
    assert sum("refused or broke the query" in r.getMessage() for r in caplog.records) == 2
    engine.close()


def test_the_cache_is_bounded_oldest_out():
    engine, _ = make()
    engine.results_cache.size = 3
    for last in range(20, 26):
        connection(engine, ip=f"198.51.100.{last}", helo=f"h{last}.sender.example")
    assert len(engine.results_cache) == 3
    # the last connection's dnsbl at connect, helo and dnsbl at HELO
    kept = list(engine.results_cache._entries)
    assert [key[0] for key in kept] == ["dnsbl", "helo", "dnsbl"]
    assert kept[0][2] == parse_client_address("198.51.100.25")
    engine.close()


def test_no_dns_cache_means_no_result_cache():
    engine, backend = make("[dns]\ncache_size = 0\n")
    connection(engine)
    asked = len(backend.queries)
    connection(engine)
    assert len(backend.queries) == 2 * asked
    assert len(engine.results_cache) == 0
    engine.close()


def test_a_hit_counts_against_the_lookup_budget_as_the_lookups_would():
    # budget 3: iprev's two lookups leave one to helo: its AAAA is refused
    extra = "[dns]\nmessage_budget = 3\ndecisive_reserve = 0\n[check.dnsbl]\nenabled = no\n"
    engine, _ = make(extra)
    first = connection(engine, helo="other.sender.example")
    second = connection(engine, helo="other.sender.example")
    assert engine.results_cache.hits == 1         # iprev
    assert ("helo", "HELO_DNS_TEMPERROR") in symbols(first)
    assert second == first
    uncached, _ = make(extra)
    uncached.results_cache.size = 0
    assert connection(uncached, helo="other.sender.example") == first
    engine.close()
    uncached.close()


# -- cached or not, the same results ------------------------------------------

LAST = st.integers(min_value=1, max_value=6)
KIND = st.sampled_from(["match", "mismatch", "nxdomain", "servfail", "timeout", "none"])


def _zone(kinds: dict) -> str:
    lines = []
    for last, (ptr, fwd, listed) in kinds.items():
        name = f"h{last}.sender.example"
        rev = f"{last}.100.51.198"
        if ptr == "servfail":
            lines.append(f"{rev}.in-addr.arpa. SERVFAIL")
        elif ptr != "nxdomain":
            lines.append(f"{rev}.in-addr.arpa. PTR {name}.")
        if fwd == "match":
            lines.append(f"{name}. A 198.51.100.{last}")
        elif fwd == "mismatch":
            lines.append(f"{name}. A 203.0.113.{last}")
        elif fwd in ("servfail", "timeout"):
            lines.append(f"{name}. {fwd.upper()}")
        if listed:
            lines.append(f"{rev}.zen.test.example. A 127.0.0.2")
            lines.append(f"{name}.dbl.test.example. A 127.0.1.2")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(LAST, st.tuples(KIND, KIND, st.booleans()), min_size=1, max_size=4),
       st.lists(st.tuples(LAST, st.one_of(st.none(), LAST),
                          st.sampled_from(["", "a@h1.sender.example", "b@h2.sender.example"])),
                min_size=1, max_size=8))
def test_cached_and_uncached_results_are_the_same(kinds, sessions):
    zone = _zone(kinds)
    cached, _ = make(zone=zone)
    uncached, _ = make(zone=zone)
    uncached.results_cache.size = 0
    try:
        for ip_last, helo_last, sender in sessions:
            kw = dict(ip=f"198.51.100.{ip_last}", sender=sender,
                      helo=f"h{helo_last}.sender.example" if helo_last else "")
            assert connection(cached, **kw) == connection(uncached, **kw)
    finally:
        cached.close()
        uncached.close()
