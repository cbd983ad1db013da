"""ttlcache: bounded, oldest out, entries gone at their expiry."""

from mailwarden.ttlcache import TtlCache


def test_an_entry_lives_until_its_expiry():
    cache = TtlCache(4)
    cache.put("k", "v", expires=10.0, now=0.0)
    assert cache.get("k", 9.99) == "v"
    assert cache.get("k", 10.0) is None
    assert len(cache) == 0


def test_nothing_is_kept_that_has_already_expired():
    cache = TtlCache(4)
    cache.put("k", "v", expires=5.0, now=5.0)
    cache.put("z", "v", expires=0.0, now=1.0)
    assert len(cache) == 0


def test_bounded_the_oldest_out():
    cache = TtlCache(3)
    for n in range(5):
        cache.put(n, n, expires=100.0, now=0.0)
    assert len(cache) == 3
    assert [cache.get(n, 1.0) for n in range(5)] == [None, None, 2, 3, 4]
    cache.put(2, "again", expires=100.0, now=0.0)     # a refreshed entry is the newest
    cache.put(5, 5, expires=100.0, now=0.0)
    assert cache.get(3, 1.0) is None and cache.get(2, 1.0) == "again"


def test_size_zero_keeps_nothing():
    cache = TtlCache(0)
    cache.put("k", "v", expires=100.0, now=0.0)
    assert cache.get("k", 1.0) is None
