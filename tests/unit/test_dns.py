import time

import pytest

from mailwarden.config import DnsOptions
from mailwarden.dns import DnspythonBackend, Resolver, Status, ZoneBackend, ptr_name, reverse_name
from tests.dnsstub import StubDns

ZONE = """
a.example. 300 A 192.0.2.1
a.example. 300 A 192.0.2.2
txt.example. TXT "v=spf1 " "-all"
mx.example. MX 10 mail.example.
cname.example. CNAME a.example.
sub.deep.example. A 192.0.2.3
slow.example. TIMEOUT
broken.example. SERVFAIL
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def resolver(zone=ZONE, clock=None, **opts):
    backend = ZoneBackend(zone)
    return Resolver(DnsOptions(**opts), backend=backend, clock=clock or time.monotonic), backend


def test_status_kinds_are_distinct():
    r, _ = resolver()
    assert r.query("a.example", "A").records == ("192.0.2.1", "192.0.2.2")
    assert r.query("A.Example.", "A").ok                     # case and trailing dot
    assert r.query("nope.example", "A").status is Status.NXDOMAIN
    assert r.query("a.example", "MX").status is Status.NODATA
    assert r.query("deep.example", "A").status is Status.NODATA  # empty non-terminal
    assert r.query("slow.example", "A").status is Status.TIMEOUT
    assert r.query("x.broken.example", "A").status is Status.SERVFAIL
    assert r.query("txt.example", "TXT").records == ("v=spf1 -all",)
    assert r.query("mx.example", "MX").records == ((10, "mail.example"),)
    assert r.query("cname.example", "A").records == ("192.0.2.1", "192.0.2.2")
    for status in (Status.TIMEOUT, Status.SERVFAIL):
        assert r.query("slow.example" if status is Status.TIMEOUT else "broken.example", "A").temporary
    assert not r.query("nope.example", "A").temporary


def test_cache_respects_ttl_and_never_caches_temporary_errors():
    clock = Clock()
    r, backend = resolver(clock=clock)
    r.query("a.example", "A")
    r.query("a.example", "A")
    assert backend.queries.count(("a.example", "A")) == 1
    clock.now += 301
    r.query("a.example", "A")
    assert backend.queries.count(("a.example", "A")) == 2
    r.query("slow.example", "A")
    r.query("slow.example", "A")
    assert backend.queries.count(("slow.example", "A")) == 2
    r.query("nope.example", "A")
    r.query("nope.example", "A")
    assert backend.queries.count(("nope.example", "A")) == 1


def test_expiry_is_when_that_very_answer_leaves_the_cache():
    clock = Clock()
    r, _ = resolver(clock=clock, max_ttl=200.0, negative_ttl=60.0)
    answer = r.query("a.example", "A")
    assert r.expiry("A.Example.", "a", answer) == 1200.0          # its TTL, capped by max_ttl
    assert r.expiry("nope.example", "A", r.query("nope.example", "A")) == 1060.0
    assert r.expiry("slow.example", "A", r.query("slow.example", "A")) == 0.0   # never cached
    clock.now += 200
    fresh = r.query("a.example", "A")                             # expired, asked again
    assert r.expiry("a.example", "A", answer) == 0.0              # not that answer any more
    assert r.expiry("a.example", "A", fresh) == 1400.0


def test_cache_is_bounded():
    r, backend = resolver(cache_size=2)
    for name in ("a.example", "txt.example", "mx.example"):
        r.query(name, "A")
    r.query("a.example", "A")          # evicted, asked again
    assert backend.queries.count(("a.example", "A")) == 2


def test_session_budget_and_deadline():
    r, _ = resolver()
    session = r.session(budget=2)
    answers = session.query_many([("a.example", "A"), ("mx.example", "MX"), ("txt.example", "TXT")])
    assert [a.status for a in answers] == [Status.NOERROR, Status.NOERROR, Status.BUDGET]
    assert answers[2].temporary
    late = r.session(deadline=time.monotonic() - 1)
    assert late.query("a.example", "A").status is Status.BUDGET


def test_reverse_names():
    assert reverse_name("192.0.2.1") == "1.2.0.192"
    assert ptr_name("192.0.2.1") == "1.2.0.192.in-addr.arpa"
    assert ptr_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert reverse_name("2001:db8::1").startswith("1.0.0.0.0.0.0.0")


def test_real_backend_tells_answers_apart():
    zone = "ok.test.example. 60 A 192.0.2.9\nok.test.example. 60 TXT \"hello\"\n"
    with StubDns(zone, servfail=["bad.test.example"], silent=["quiet.test.example"]) as server:
        backend = DnspythonBackend(["127.0.0.1"], server.port)
        r = Resolver(DnsOptions(nameservers=("127.0.0.1",), port=server.port, timeout=0.5),
                     backend=backend)
        ok = r.query("ok.test.example", "A")
        assert ok.ok and ok.records == ("192.0.2.9",) and ok.ttl == 60
        assert r.query("ok.test.example", "MX").status is Status.NODATA
        assert r.query("none.test.example", "A").status is Status.NXDOMAIN
        assert r.query("bad.test.example", "A").status is Status.SERVFAIL
        started = time.monotonic()
        assert r.query("quiet.test.example", "A").status is Status.TIMEOUT
        assert time.monotonic() - started < 2.0


def test_parallel_lookups_overlap():
    zone = "".join(f"n{i}.test.example. 60 A 192.0.2.{i}\n" for i in range(1, 9))
    with StubDns(zone, delay=0.2) as server:
        r = Resolver(DnsOptions(nameservers=("127.0.0.1",), port=server.port, timeout=2))
        started = time.monotonic()
        answers = r.query_many([(f"n{i}.test.example", "A") for i in range(1, 9)])
        elapsed = time.monotonic() - started
        r.close()
    assert all(a.ok for a in answers)
    assert [a.records[0] for a in answers] == [f"192.0.2.{i}" for i in range(1, 9)]
    assert elapsed < 0.2 * 8 / 2, f"8 lookups of 0.2 s took {elapsed:.2f}s: not parallel"


def test_session_counts_only_the_time_it_runs():
    clock = Clock()
    r, _ = resolver(clock=clock, message_deadline=10)
    session = r.session()
    clock.now += 4                     # a stage's own lookups
    session.pause()
    clock.now += 600                   # the client takes ten minutes to send
    assert session.remaining() == 6
    assert session.query("a.example", "A").ok
    session.resume()
    clock.now += 7                     # past the limit while running
    assert session.query("txt.example", "TXT").status is Status.BUDGET


class GatedBackend(ZoneBackend):
    """A zone whose lookups of ``gated`` names wait for ``gate`` to open."""

    def __init__(self, zone, gated=()):
        super().__init__(zone)
        import threading
        self.gate = threading.Event()
        self.gated = set(gated)
        self.started = threading.Semaphore(0)

    def lookup(self, name, rdtype, timeout):
        if name in self.gated:
            self.started.release()
            assert self.gate.wait(5), "gate never opened"
        return super().lookup(name, rdtype, timeout)


class NoPool:
    def submit(self, *args, **kwargs):
        raise AssertionError("a cached answer went through the thread pool")

    def shutdown(self, **kwargs):
        pass


def test_cached_answers_come_without_the_thread_pool():
    r, backend = resolver()
    r.query_many([("a.example", "A"), ("txt.example", "TXT"), ("nope.example", "A")])
    r._executor = NoPool()
    answers = r.query_many([("a.example", "A"), ("txt.example", "TXT"), ("nope.example", "A")])
    assert [a.status for a in answers] == [Status.NOERROR, Status.NOERROR, Status.NXDOMAIN]
    # one lookup not cached is asked by the calling thread itself
    assert r.query_many([("mx.example", "MX"), ("a.example", "A")])[0].ok
    assert len(backend.queries) == 4


def test_a_lookup_under_way_is_waited_for_not_asked_again():
    import threading
    backend = GatedBackend(ZONE, gated={"a.example"})
    r = Resolver(DnsOptions(), backend=backend)
    r.prefetch([("a.example", "A")])
    assert backend.started.acquire(timeout=5)
    got = []
    waiter = threading.Thread(target=lambda: got.append(r.query("A.example.", "a")))
    waiter.start()
    backend.gate.set()
    waiter.join(5)
    assert got and got[0].records == ("192.0.2.1", "192.0.2.2")
    assert backend.queries.count(("a.example", "A")) == 1
    assert r._inflight == {}
    r.close()


def test_a_wait_for_a_lookup_under_way_is_bounded_by_its_own_timeout():
    backend = GatedBackend(ZONE, gated={"a.example"})
    r = Resolver(DnsOptions(), backend=backend)
    r.prefetch([("a.example", "A")])
    assert backend.started.acquire(timeout=5)
    answer = r.query("a.example", "A", timeout=0.05)
    assert answer.status is Status.TIMEOUT and answer.temporary
    backend.gate.set()
    r.close()


def test_a_speculative_lookup_starts_what_is_missing_and_says_so():
    from mailwarden.dns import CacheMiss
    backend = GatedBackend(ZONE, gated={"txt.example"})
    r = Resolver(DnsOptions(), backend=backend)
    r.query("a.example", "A")
    session = r.session(budget=5)
    session.speculative = True
    assert session.query("a.example", "A").ok           # cached: answered
    with pytest.raises(CacheMiss):
        session.query_many([("a.example", "A"), ("txt.example", "TXT")])
    assert session.missed
    assert backend.started.acquire(timeout=5)            # the missing one is on its way
    assert session.used == 1                             # a miss is not counted yet
    session.speculative = False
    backend.gate.set()
    assert session.query("txt.example", "TXT").records == ("v=spf1 -all",)
    assert backend.queries.count(("txt.example", "TXT")) == 1
    r.close()


def test_the_budget_counts_distinct_lookups():
    r, backend = resolver()
    session = r.session(budget=2)
    for _ in range(3):
        assert session.query("a.example", "A").ok       # asked again: free
    assert session.query_many([("a.example", "A"), ("mx.example", "MX")])[1].ok
    assert session.used == 2
    assert session.query("txt.example", "TXT").status is Status.BUDGET


def test_without_a_cache_a_started_lookup_is_still_not_asked_twice():
    r, backend = resolver(cache_size=0)
    session = r.session()
    session.speculative = True
    from mailwarden.dns import CacheMiss
    with pytest.raises(CacheMiss):
        session.query_many([("a.example", "A"), ("txt.example", "TXT"), ("mx.example", "MX")])
    session.speculative = False
    answers = session.query_many([("a.example", "A"), ("txt.example", "TXT"),
                                  ("mx.example", "MX")])
    assert all(a.ok for a in answers)
    assert sorted(backend.queries) == [("a.example", "A"), ("mx.example", "MX"),
                                       ("txt.example", "TXT")]
    r.close()


LOOPS = """
loop1.example. CNAME loop2.example.
loop2.example. CNAME LOOP1.example.
self.example. CNAME self.example.
ok.example. CNAME a.example.
"""


def test_a_cname_loop_in_a_zone_is_a_server_failure_not_a_recursion():
    r, backend = resolver(ZONE + LOOPS)
    for name in ("loop1.example", "loop2.example", "self.example"):
        answer = r.query(name, "A")
        assert answer.status is Status.SERVFAIL and answer.temporary, answer
        assert answer.name == name and "CNAME loop" in answer.detail
    # each lookup is one query, not one per link
    assert backend.queries.count(("loop1.example", "A")) == 1
    assert r.query("ok.example", "A").records == ("192.0.2.1", "192.0.2.2")
    assert r.query("loop1.example", "CNAME").records == ("loop2.example",)


def test_a_cname_chain_is_bounded():
    limit = getattr(ZoneBackend, "MAX_CNAME_CHAIN", 16)
    links = "".join(f"c{i}.example. CNAME c{i + 1}.example.\n" for i in range(limit + 5))
    links += f"c{limit + 5}.example. A 192.0.2.77\n"
    r, _ = resolver(links)
    assert r.query(f"c{5}.example", "A").records == ("192.0.2.77",)   # limit links: followed
    long = r.query("c0.example", "A")
    assert long.status is Status.SERVFAIL and "longer than" in long.detail


def test_scan_zone_with_a_cname_loop_answers_instead_of_crashing(tmp_path, capsys):
    import json
    from mailwarden import cli
    conf = tmp_path / "m.ini"
    conf.write_text("[authserv]\nid = mx.test.example\n")
    zone = tmp_path / "z.zone"
    zone.write_text("7.100.51.198.in-addr.arpa. PTR loop.sender.example.\n"
                    "loop.sender.example. CNAME loop.sender.example.\n"
                    "sender.example. TXT \"v=spf1 a:loop.sender.example -all\"\n")
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: a@sender.example\r\n\r\nhi\r\n")
    rc = cli.main(["scan", "-c", str(conf), "--zone", str(zone), "--client-ip", "198.51.100.7",
                   "--helo", "loop.sender.example", "--mail-from", "a@sender.example",
                   "--rcpt", "b@test.example", str(eml)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    by_check = {r["check"]: r for r in out["results"]}
    # the loop is a DNS error of that name: temperror, with no crash behind it
    assert by_check["iprev"]["result"] == "temperror", by_check["iprev"]
    assert "internal error" not in by_check["iprev"]["reason"]
    assert "internal error" not in by_check["spf"]["reason"]
