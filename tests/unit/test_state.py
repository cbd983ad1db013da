"""The state store: same semantics in memory and in a real redis-server."""

import threading

import pytest

from mailwarden.config import loads
from mailwarden.state import BUCKETS, StateError, make_store
from mailwarden.state.memory import SWEEP_EVERY, MemoryStore

NOW = 1_700_000_040.0     # on a bucket boundary of a 60 s window


_prefixes = iter(range(1, 1_000_000))


def redis_store(server, **state):
    keys = "".join(f"{k} = {v}\n" for k, v in state.items())
    cfg = loads(f"[authserv]\nid = mx.test.example\n[state]\nbackend = redis\n"
                f"url = {server.url}\nprefix = t{next(_prefixes)}:\n{keys}")
    return make_store(cfg.state)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        s = MemoryStore(prefix="t:")
    else:
        s = redis_store(request.getfixturevalue("redis_server"))
    yield s
    s.close()


def test_take_admits_exactly_the_limit(store):
    got = [store.take("k", 1, 3, 60, NOW + i) for i in range(5)]
    assert [c.allowed for c in got] == [True, True, True, False, False]
    assert [c.count for c in got] == [1, 2, 3, 3, 3]
    assert got[-1].limit == 3


def test_take_amount_larger_than_room_is_refused_whole(store):
    assert store.take("k", 2, 3, 60, NOW).allowed
    refused = store.take("k", 2, 3, 60, NOW)
    assert not refused.allowed and refused.count == 2
    assert store.take("k", 1, 3, 60, NOW).count == 3


def test_take_window_slides(store):
    step = 60 / BUCKETS
    assert store.take("k", 1, 2, 60, NOW).allowed
    assert store.take("k", 1, 2, 60, NOW + 30).allowed
    assert not store.take("k", 1, 2, 60, NOW + 59).allowed
    # the first event is out once its bucket has left the window
    later = store.take("k", 1, 2, 60, NOW + 60 + step)
    assert later.allowed and later.count == 2
    assert not store.take("k", 1, 2, 60, NOW + 60 + step).allowed


def test_take_keys_are_separate(store):
    assert store.take("a", 1, 1, 60, NOW).allowed
    assert store.take("b", 1, 1, 60, NOW).allowed
    assert not store.take("a", 1, 1, 60, NOW).allowed


def test_acquire_release(store):
    assert store.acquire("c", "t1", 2, 600, NOW).allowed
    assert store.acquire("c", "t2", 2, 600, NOW).count == 2
    refused = store.acquire("c", "t3", 2, 600, NOW)
    assert not refused.allowed and refused.count == 2
    # renewing a held slot is not a new one
    assert store.acquire("c", "t1", 2, 600, NOW + 1).allowed
    store.release("c", "t2")
    assert store.acquire("c", "t3", 2, 600, NOW + 2).allowed
    store.release("c", "never-held")


def test_acquire_lease_runs_out(store):
    assert store.acquire("c", "dead", 1, 10, NOW).allowed
    assert not store.acquire("c", "new", 1, 10, NOW + 9).allowed
    assert store.acquire("c", "new", 1, 10, NOW + 10.5).allowed


def test_parallel_takes_admit_exactly_the_limit(store):
    admitted = []
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            if store.take("p", 1, 25, 60, NOW).allowed:
                with lock:
                    admitted.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(admitted) == 25


def test_memory_sweep_drops_expired_keys():
    store = MemoryStore()
    for i in range(100):
        store.take(f"k{i}", 1, 5, 60, NOW)
        store.acquire(f"c{i}", "t", 5, 60, NOW)
    assert len(store) == 200
    for i in range(SWEEP_EVERY):
        store.take("live", 1, 10 ** 6, 60, NOW + 3600)
    assert len(store) == 1


def test_redis_keys_expire(redis_server):
    import redis
    store = redis_store(redis_server)
    store.take("exp", 1, 5, 60, NOW)
    store.acquire("slot", "t", 5, 30, NOW)
    client = redis.Redis.from_url(redis_server.url)
    ttls = {k.decode(): client.pttl(k) for k in client.keys(f"{store.prefix}*")}
    client.close()
    store.close()
    assert ttls[f"{store.prefix}exp"] == pytest.approx(66000, abs=1000)
    assert ttls[f"{store.prefix}slot"] == pytest.approx(30000, abs=1000)


def test_redis_down_raises_state_error_then_fails_fast(tmp_path):
    from tests.redisserver import free_port
    cfg = loads("[authserv]\nid = mx.test.example\n[state]\nbackend = redis\n"
                f"url = redis://127.0.0.1:{free_port()}/0\ntimeout = 200ms\n"
                "retry_interval = 5s\n")
    store = make_store(cfg.state)
    with pytest.raises(StateError, match="ConnectionError"):
        store.take("k", 1, 1, 60, NOW)
    with pytest.raises(StateError, match="not retried"):
        store.acquire("k", "t", 1, 60, NOW + 1)
    with pytest.raises(StateError, match="ConnectionError"):
        store.take("k", 1, 1, 60, NOW + 6)
    store.close()


def test_redis_url_password_not_in_errors():
    from tests.redisserver import free_port
    cfg = loads("[authserv]\nid = mx.test.example\n[state]\nbackend = redis\n"
                f"url = redis://:sekrit@127.0.0.1:{free_port()}/0\ntimeout = 200ms\n")
    store = make_store(cfg.state)
    with pytest.raises(StateError) as info:
        store.take("k", 1, 1, 60, NOW)
    store.close()
    assert "sekrit" not in str(info.value)


def test_state_config_refuses_bad_values():
    from mailwarden.config import ConfigError
    with pytest.raises(ConfigError, match=r":4: \[state\] backend:"):
        loads("[authserv]\nid = mx.test.example\n[state]\nbackend = memcached\n")
    with pytest.raises(ConfigError, match=r":4: \[state\] url:"):
        loads("[authserv]\nid = mx.test.example\n[state]\nurl = 127.0.0.1:6379\n")
    with pytest.raises(ConfigError, match=r":4: \[state\] size:.*unknown key"):
        loads("[authserv]\nid = mx.test.example\n[state]\nsize = 3\n")
