"""The lookup pool: one slow zone cannot starve everyone's lookups.

A fake resolver whose names under ``slow.example`` hang until the test lets
them go (one at a time), and an injected clock: which lookup a free worker
takes next is then decided by the pool's rules alone, not by timing.
"""

from __future__ import annotations

import threading

import pytest

from mailwarden.config import DnsOptions
from mailwarden.dns import CacheMiss, FairPool, PoolFull, Resolver, Status, ZoneBackend, _Job

ZONE = "".join(f"f{i}.fast.example. 60 A 192.0.2.{i}\n" for i in range(1, 40))
WAIT = 10           # no test waits longer than this for anything


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class SlowZone(ZoneBackend):
    """Names under slow.example hang until ``let_one_go``; others answer at
    once.  Each slow lookup takes 0.1 s of the injected clock."""

    def __init__(self, zone=ZONE, clock=None):
        super().__init__(zone)
        self.clock = clock
        self.hanging = threading.Semaphore(0)     # released once per slow lookup started
        self._go = threading.Semaphore(0)
        self.order: list = []
        self._order_lock = threading.Lock()

    def lookup(self, name, rdtype, timeout):
        with self._order_lock:
            self.order.append(name)
        if name.endswith("slow.example"):
            self.hanging.release()
            assert self._go.acquire(timeout=WAIT), "never let go"
            if self.clock is not None:
                self.clock.now += 0.1
            return super().lookup(name, rdtype, timeout)
        return super().lookup(name, rdtype, timeout)

    def let_one_go(self):
        self._go.release()

    def let_all_go(self, n=200):
        for _ in range(n):
            self._go.release()


def make(workers=2, queue_size=1024, clock=None):
    clock = clock or Clock()
    backend = SlowZone(clock=clock)
    resolver = Resolver(DnsOptions(workers=workers, queue_size=queue_size, timeout=5,
                                   message_deadline=WAIT),
                        backend=backend, clock=clock)
    return resolver, backend


def started(backend, n):
    for _ in range(n):
        assert backend.hanging.acquire(timeout=WAIT), "a slow lookup never started"


# -- fairness ----------------------------------------------------------------

def test_a_connection_waiting_on_a_slow_zone_does_not_hold_back_another():
    r, backend = make(workers=2)
    hostile, legit = object(), object()
    slow = r.prefetch([(f"h{i}.slow.example", "A") for i in range(12)], timeout=WAIT,
                      owner=hostile)
    started(backend, 2)                        # both workers hang on the slow zone
    fast = r.prefetch([(f"f{i}.fast.example", "A") for i in (1, 2, 3)], timeout=WAIT,
                      owner=legit)
    backend.let_one_go()                       # one worker frees: the legit queue is served
    for key, future in fast.items():
        answer = future.result(timeout=WAIT)
        assert answer.ok, answer
    # FIFO would have asked the ten other slow names first
    assert sorted(backend.order[:2]) == ["h0.slow.example", "h1.slow.example"]
    assert backend.order[2:5] == ["f1.fast.example", "f2.fast.example", "f3.fast.example"]
    backend.let_all_go()
    answers = [f.result(timeout=WAIT) for f in slow.values()]
    assert [a.status for a in answers] == [Status.NXDOMAIN] * 12
    r.close()


def test_a_slow_owner_is_served_after_one_that_used_less_worker_time():
    clock = Clock()
    pool = FairPool(workers=1, max_queued=100, max_queued_per_owner=100, clock=clock)
    ran: list = []
    gate = threading.Event()
    first_running = threading.Event()

    def job(name, hold=0.0):
        def run(_left):
            if name == "a0":
                first_running.set()
                assert gate.wait(WAIT)
                clock.now += 5                 # a0 held the worker 5 s (injected clock)
            ran.append(name)
        return _Job(run, lambda: ran.append("dropped " + name), clock.now + 100)

    a, b = object(), object()
    pool.submit(a, job("a0"))
    assert first_running.wait(WAIT)
    for i in (1, 2, 3):
        pool.submit(a, job(f"a{i}"))
    for i in (0, 1, 2):
        pool.submit(b, job(f"b{i}"))
    gate.set()
    done = threading.Event()
    pool.submit(b, _Job(lambda _l: done.set(), lambda: None, clock.now + 100))
    assert done.wait(WAIT)
    # a has used 5 s, b nothing: every b job first, though a queued earlier
    assert ran[:4] == ["a0", "b0", "b1", "b2"], ran
    pool.shutdown()


def test_an_owner_that_comes_back_starts_level_with_the_least_served():
    clock = Clock()
    pool = FairPool(workers=1, max_queued=100, max_queued_per_owner=100, clock=clock)
    gate = threading.Event()
    running = threading.Event()

    def hold(_left):
        running.set()
        assert gate.wait(WAIT)

    old = object()
    pool.submit(old, _Job(hold, lambda: None, clock.now + 100))
    assert running.wait(WAIT)
    clock.now += 50                           # old has been served 50 s so far
    late = object()
    pool.submit(late, _Job(lambda _l: None, lambda: None, clock.now + 100))
    # the newcomer is not 50 s ahead of an owner that has been waiting
    state = pool._owners[late]
    assert state.served == pytest.approx(50.0)
    gate.set()
    pool.shutdown(wait=True)


# -- deadlines and bounds -------------------------------------------------------

def test_a_lookup_still_queued_at_its_deadline_is_dropped_not_asked():
    clock = Clock()
    r, backend = make(workers=1, clock=clock)
    blocker = r.prefetch([("x.slow.example", "A")], timeout=WAIT, owner=object())
    started(backend, 1)
    late = r.prefetch([("f1.fast.example", "A")], timeout=2, owner=object())
    clock.now += 3                             # its message's deadline passes in the queue
    backend.let_one_go()
    answer = late[("f1.fast.example", "A")].result(timeout=WAIT)
    assert answer.status is Status.BUDGET and answer.temporary
    assert "deadline passed" in answer.detail
    assert "f1.fast.example" not in backend.order
    assert r._executor.dropped == 1
    assert blocker[("x.slow.example", "A")].result(timeout=WAIT).status is Status.NXDOMAIN
    # not cached, not in flight: asked again later, it is answered
    assert r._inflight == {} and r.query("f1.fast.example", "A").ok
    r.close()


def test_the_queue_is_bounded_in_all_and_per_owner():
    clock = Clock()
    pool = FairPool(workers=1, max_queued=6, max_queued_per_owner=4, clock=clock)
    gate = threading.Event()
    running = threading.Event()

    def hold(_left):
        running.set()
        assert gate.wait(WAIT)

    a, b = object(), object()
    pool.submit(a, _Job(hold, lambda: None, clock.now + 100))
    assert running.wait(WAIT)
    for _ in range(4):
        pool.submit(a, _Job(lambda _l: None, lambda: None, clock.now + 100))
    with pytest.raises(PoolFull):
        pool.submit(a, _Job(lambda _l: None, lambda: None, clock.now + 100))
    pool.submit(b, _Job(lambda _l: None, lambda: None, clock.now + 100))
    pool.submit(b, _Job(lambda _l: None, lambda: None, clock.now + 100))
    with pytest.raises(PoolFull):                # 6 queued in all
        pool.submit(b, _Job(lambda _l: None, lambda: None, clock.now + 100))
    assert pool.queued() == 6
    gate.set()
    pool.shutdown(wait=True)


def test_lookups_the_queue_has_no_room_for_are_asked_by_the_caller():
    r, backend = make(workers=1, queue_size=32)    # two queued per owner
    hostile = r.session()
    r.prefetch([("x.slow.example", "A")], timeout=WAIT, owner=object())
    started(backend, 1)
    legit = r.session()
    names = [(f"f{i}.fast.example", "A") for i in range(1, 9)]
    answers = legit.query_many(names)            # the one worker hangs: the caller asks
    assert all(a.ok for a in answers), answers
    assert [a.records[0] for a in answers] == [f"192.0.2.{i}" for i in range(1, 9)]
    backend.let_all_go()
    hostile.pause()
    r.close()


def _hostile_queue_holding(r, backend, name):
    """One worker, hung; a hostile owner's queue: five slow names, then ``name``."""
    r.prefetch([("x.slow.example", "A")], timeout=WAIT, owner=object())
    started(backend, 1)
    r.prefetch([(f"h{i}.slow.example", "A") for i in range(5)] + [(name, "A")],
               timeout=WAIT, owner=object())


def test_a_caller_asks_itself_a_lookup_no_worker_has_started():
    r, backend = make(workers=1)
    _hostile_queue_holding(r, backend, "f7.fast.example")
    legit = r.session()
    # the one worker hangs, and the lookup sits behind five slow ones in
    # another's queue: the caller does not wait for any of them
    answer = legit.query("f7.fast.example", "A")
    assert answer.ok and answer.records == ("192.0.2.7",), answer
    assert backend.order == ["x.slow.example", "f7.fast.example"]
    backend.let_all_go()
    r.close()


def test_a_lookup_queued_by_another_owner_is_queued_for_the_joiner_too():
    r, backend = make(workers=1)
    _hostile_queue_holding(r, backend, "f7.fast.example")
    legit = object()
    joined = r.prefetch([("f7.fast.example", "A")], timeout=WAIT, owner=legit)
    backend.let_one_go()                 # x is done: the hostile owner's turn (h0)
    started(backend, 1)
    backend.let_one_go()                 # h0 is done: the legit owner's turn
    answer = joined[("f7.fast.example", "A")].result(timeout=WAIT)
    assert answer.ok, answer
    # asked once, in the legit owner's turn, not after the hostile owner's
    # five slow names (FIFO: after all of them)
    assert backend.order[:3] == ["x.slow.example", "h0.slow.example", "f7.fast.example"]
    assert backend.order.count("f7.fast.example") == 1
    backend.let_all_go()
    r.close()


def test_shutdown_answers_every_waiter_at_once():
    r, backend = make(workers=1)
    r.prefetch([("x.slow.example", "A")], timeout=WAIT, owner=object())
    started(backend, 1)
    queued = r.prefetch([("f1.fast.example", "A")], timeout=WAIT, owner=object())
    r.close()
    answer = queued[("f1.fast.example", "A")].result(timeout=WAIT)
    assert answer.temporary
    backend.let_all_go()


def test_legitimate_lookups_are_answered_while_hostile_ones_hang_every_worker():
    """The case of the issue, through the sessions the checks use: a
    connection's lookups into a zone that never answers fill the workers
    and the queue; another message's lookups are still answered, at once."""
    clock = Clock()
    backend = SlowZone(clock=clock)
    r = Resolver(DnsOptions(workers=2, timeout=2, message_deadline=WAIT), backend=backend,
                 clock=clock)
    hostile = r.session()
    stuck = threading.Thread(target=hostile.query_many,
                             args=([(f"h{i}.slow.example", "A") for i in range(12)],),
                             daemon=True)
    stuck.start()
    started(backend, 3)                  # its own thread and both workers hang
    legit = r.session()
    answers = legit.query_many([(f"f{i}.fast.example", "A") for i in range(1, 6)])
    assert [a.status for a in answers] == [Status.NOERROR] * 5, answers
    assert [a.records[0] for a in answers] == [f"192.0.2.{i}" for i in range(1, 6)]
    backend.let_all_go()
    stuck.join(WAIT)
    r.close()


def test_many_sessions_sharing_lookups_all_get_their_answers(caplog):
    """Sessions asking overlapping names at once, through a small pool and a
    small queue (joins, claims, full queues): every lookup is answered,
    each name asked once while under way, nothing logged as failed."""
    import random
    import time as _time

    class Jittery(ZoneBackend):
        def __init__(self, zone):
            super().__init__(zone)
            self.running: dict = {}
            self.overlaps = 0
            self._guard = threading.Lock()

        def lookup(self, name, rdtype, timeout):
            with self._guard:
                if self.running.get(name):
                    self.overlaps += 1
                self.running[name] = True
            _time.sleep(random.Random(name).random() * 0.004)
            with self._guard:
                self.running[name] = False
            return super().lookup(name, rdtype, timeout)

    backend = Jittery(ZONE)
    r = Resolver(DnsOptions(workers=3, queue_size=32, timeout=5, message_deadline=WAIT,
                            cache_size=0), backend=backend)
    failures: list = []

    def client(seed):
        rng = random.Random(seed)
        for _ in range(15):
            session = r.session()
            names = [(f"f{rng.randrange(1, 40)}.fast.example", "A")
                     for _ in range(rng.randrange(1, 12))]
            session.speculative = rng.random() < 0.5
            try:
                answers = session.query_many(names)
            except CacheMiss:              # ask again, as the engine does
                session.speculative = False
                answers = session.query_many(names)
            for (name, _t), answer in zip(names, answers):
                index = int(name[1:].split(".")[0])
                if not answer.ok or answer.records != (f"192.0.2.{index}",):
                    failures.append((name, answer))
            session.pause()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    with caplog.at_level("ERROR", logger="mailwarden.dns"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT * 3)
    r.close()
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert backend.overlaps == 0, "a name was asked twice at once"
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]
