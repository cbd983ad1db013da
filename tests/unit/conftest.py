"""Fixtures shared by the unit tests.

``redis_server``: a throw-away redis-server on 127.0.0.1 (no persistence),
one per test module, for the tests that run a backend against a real Redis
(the state store, the limits, the DMARC records).  Skipped, with the reason,
when redis-server is not installed.
"""

from __future__ import annotations

import pytest

from tests.redisserver import RedisServer, redis_binary


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
