"""Shared counters for limits: one small interface, two backends.

A :class:`Store` answers two questions atomically, for any number of threads
(and, with Redis, any number of mailwarden instances behind several MTAs):

``take(key, amount, limit, window, now) -> Count``
    A sliding-window counter.  Adds ``amount`` to ``key`` if the events of
    the last ``window`` seconds plus ``amount`` stay within ``limit``, else
    adds nothing.  ``Count.allowed`` says which; ``Count.count`` is the total
    in the window after the call (so with the refused amount left out).
    The window is kept in :data:`BUCKETS` buckets of ``window / BUCKETS``
    seconds: an event leaves the count between ``window - window/BUCKETS``
    and ``window`` seconds after it happened.  Counts are exact; only the
    moment an event ages out is rounded to its bucket.

``acquire(key, token, limit, lease, now) -> Count``
    A concurrency slot.  ``token`` (unique per holder, e.g. per SMTP
    connection) takes one of at most ``limit`` slots of ``key`` for ``lease``
    seconds; taking it again renews the lease.  A holder that vanishes
    without ``release`` (a crashed instance) frees its slot when the lease
    runs out.

``release(key, token)``
    Gives the slot back (no error if it was not held).

``close()``
    Frees connections.

Time is always passed in (``now``, seconds since the epoch): the stores
never read a clock, so tests move time and several instances agree on
windows as far as their clocks do.  Keys are plain strings; the store adds
``[state] prefix``.  Every backend failure raises :class:`StateError`;
callers fail open (let the mail through, log, emit a temperror symbol).

:func:`make_store` builds the backend named by ``[state] backend``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUCKETS", "Count", "Store", "StateError", "make_store"]

# sub-buckets per window: bounded memory per key whatever the limit
BUCKETS = 10


class StateError(Exception):
    """The state backend cannot be reached or answered nonsense."""


@dataclass(frozen=True)
class Count:
    allowed: bool
    count: int          # in the window (or slots held) after the call
    limit: int


class Store:
    """The interface; see the module docstring for the semantics."""

    def take(self, key: str, amount: int, limit: int, window: float, now: float) -> Count:
        raise NotImplementedError

    def acquire(self, key: str, token: str, limit: int, lease: float, now: float) -> Count:
        raise NotImplementedError

    def release(self, key: str, token: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def bucket_of(now: float, window: float) -> tuple:
    """(bucket index, bucket length) of ``now`` for a window."""
    step = window / BUCKETS
    return int(now // step), step


def make_store(options) -> Store:
    """The store ``[state]`` describes (connections are made lazily)."""
    if options.backend == "redis":
        from .redis import RedisStore
        return RedisStore(options)
    from .memory import MemoryStore
    return MemoryStore(prefix=options.prefix)
