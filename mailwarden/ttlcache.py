"""A bounded map whose entries expire: what a check keeps between messages.

Each engine makes its own (a reload starts empty).  An entry is stored with
the time it expires on the resolver's clock, never later than the DNS
answers it came from leave the resolver's cache (:meth:`Resolver.expiry`);
when the map is full the oldest entry goes.  Thread-safe: reads are one
dict lookup, writes take a lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["TtlCache"]


class TtlCache:
    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key, now: float):
        """The value stored under ``key``, or None when absent or expired."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            with self._lock:
                if self._data.get(key) is entry:
                    del self._data[key]
            return None
        return entry[1]

    def put(self, key, value, expires: float, now: float) -> None:
        """Keep ``value`` until ``expires`` (nothing when that is not later than now)."""
        if self.size <= 0 or expires <= now:
            return
        with self._lock:
            self._data.pop(key, None)
            self._data[key] = (expires, value)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
