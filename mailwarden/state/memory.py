"""The in-process store: the default, nothing to run, one instance only.

Thread-safe under one lock (every operation is a few dictionary steps).
Expired keys are swept every ``SWEEP_EVERY`` operations, using the time the
callers pass in, so memory stays bounded by the keys active in their window.
"""

from __future__ import annotations

import threading

from . import BUCKETS, Count, Store, bucket_of

SWEEP_EVERY = 1024


class MemoryStore(Store):
    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._windows: dict = {}     # key -> (expires, {bucket: count})
        self._slots: dict = {}       # key -> {token: lease end}
        self._ops = 0

    def take(self, key: str, amount: int, limit: int, window: float, now: float) -> Count:
        key = self.prefix + key
        bucket, step = bucket_of(now, window)
        oldest = bucket - BUCKETS + 1
        with self._lock:
            self._tick(now)
            _expires, buckets = self._windows.get(key, (0.0, {}))
            for b in [b for b in buckets if b < oldest]:
                del buckets[b]
            count = sum(buckets.values())
            if count + amount > limit:
                if buckets:
                    self._windows[key] = (now + window, buckets)
                return Count(False, count, limit)
            buckets[bucket] = buckets.get(bucket, 0) + amount
            self._windows[key] = (now + window, buckets)
            return Count(True, count + amount, limit)

    def acquire(self, key: str, token: str, limit: int, lease: float, now: float) -> Count:
        key = self.prefix + key
        with self._lock:
            self._tick(now)
            holders = {t: end for t, end in self._slots.get(key, {}).items() if end > now}
            if token not in holders and len(holders) >= limit:
                self._slots[key] = holders
                return Count(False, len(holders), limit)
            holders[token] = now + lease
            self._slots[key] = holders
            return Count(True, len(holders), limit)

    def release(self, key: str, token: str) -> None:
        key = self.prefix + key
        with self._lock:
            holders = self._slots.get(key)
            if holders is not None:
                holders.pop(token, None)
                if not holders:
                    del self._slots[key]

    def _tick(self, now: float) -> None:
        """Every so often, drop what has expired (lock held)."""
        self._ops += 1
        if self._ops % SWEEP_EVERY:
            return
        for key in [k for k, (expires, _) in self._windows.items() if expires <= now]:
            del self._windows[key]
        for key in list(self._slots):
            live = {t: end for t, end in self._slots[key].items() if end > now}
            if live:
                self._slots[key] = live
            else:
                del self._slots[key]

    def __len__(self) -> int:
        """Keys held (for tests of the sweep)."""
        with self._lock:
            return len(self._windows) + len(self._slots)
