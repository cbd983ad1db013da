"""The Redis store: one set of limits shared by several mailwarden instances.

Each operation is one Lua script, so a read-check-write is atomic on the
server whatever the number of instances.  Windows are hashes of
``bucket -> count``; concurrency slots are sorted sets of ``token -> lease
end``.  Every key gets an expiry, so abandoned keys vanish by themselves.

Connections come from a bounded, blocking pool with short socket and
connect timeouts (``[state]``).  Any Redis failure raises
:class:`~mailwarden.state.StateError`.  After a failure the store does not
try Redis again for ``retry_interval`` seconds (measured with the times the
callers pass in): while Redis is down every caller fails at once instead of
each waiting out a connect timeout.
"""

from __future__ import annotations

import math
import threading

try:
    import redis
except ImportError:             # the redis extra is not installed
    redis = None

from . import BUCKETS, Count, StateError, Store, bucket_of

_TAKE = """
local key = KEYS[1]
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local oldest = tonumber(ARGV[4])
local fields = redis.call('HGETALL', key)
local count = 0
local stale = {}
for i = 1, #fields, 2 do
  if tonumber(fields[i]) < oldest then
    stale[#stale + 1] = fields[i]
  else
    count = count + tonumber(fields[i + 1])
  end
end
if #stale > 0 then
  redis.call('HDEL', key, unpack(stale))
end
if count + amount > limit then
  return {0, count}
end
redis.call('HINCRBY', key, ARGV[3], amount)
redis.call('PEXPIRE', key, ARGV[5])
return {1, count + amount}
"""

_ACQUIRE = """
local key = KEYS[1]
local token = ARGV[1]
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[3])
if not redis.call('ZSCORE', key, token) then
  local held = redis.call('ZCARD', key)
  if held >= limit then
    return {0, held}
  end
end
redis.call('ZADD', key, ARGV[4], token)
redis.call('PEXPIRE', key, ARGV[5])
return {1, redis.call('ZCARD', key)}
"""


class RedisStore(Store):
    def __init__(self, options):
        if redis is None:
            raise StateError("[state] backend = redis needs the Python package redis "
                             "(pip install 'mailwarden[redis]')")
        self.prefix = options.prefix
        self.url = options.url
        self.retry_interval = options.retry_interval
        self._pool = redis.BlockingConnectionPool.from_url(
            options.url, max_connections=options.pool_size, timeout=options.pool_timeout,
            socket_timeout=options.timeout, socket_connect_timeout=options.timeout)
        self._client = redis.Redis(connection_pool=self._pool)
        self._take = self._client.register_script(_TAKE)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._lock = threading.Lock()
        self._down_until = -math.inf
        self._last_now = 0.0

    def _guard(self, now: float) -> None:
        with self._lock:
            self._last_now = max(self._last_now, now)
            if now < self._down_until:
                raise StateError(f"redis at {self._safe_url()} failed recently; "
                                 f"not retried for {self._down_until - now:.1f}s")

    def _failed(self, exc, now: float) -> StateError:
        with self._lock:
            self._down_until = now + self.retry_interval
        return StateError(f"redis at {self._safe_url()}: {exc.__class__.__name__}: {exc}")

    def _safe_url(self) -> str:
        """The URL without a password, for log lines."""
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return scheme + sep + rest

    def take(self, key: str, amount: int, limit: int, window: float, now: float) -> Count:
        self._guard(now)
        bucket, step = bucket_of(now, window)
        ttl_ms = max(1, int(math.ceil((window + step) * 1000)))
        try:
            allowed, count = self._take(keys=[self.prefix + key],
                                        args=[amount, limit, bucket, bucket - BUCKETS + 1, ttl_ms])
        except redis.RedisError as exc:
            raise self._failed(exc, now) from None
        return Count(bool(allowed), int(count), limit)

    def acquire(self, key: str, token: str, limit: int, lease: float, now: float) -> Count:
        self._guard(now)
        ttl_ms = max(1, int(math.ceil(lease * 1000)))
        try:
            allowed, held = self._acquire(keys=[self.prefix + key],
                                          args=[token, limit, repr(float(now)),
                                                repr(float(now + lease)), ttl_ms])
        except redis.RedisError as exc:
            raise self._failed(exc, now) from None
        return Count(bool(allowed), int(held), limit)

    def release(self, key: str, token: str) -> None:
        now = self._last_now
        self._guard(now)
        try:
            self._client.zrem(self.prefix + key, token)
        except redis.RedisError as exc:
            raise self._failed(exc, now) from None

    def close(self) -> None:
        self._pool.disconnect()
