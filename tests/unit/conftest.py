"""Fixtures shared by the unit tests.

``redis_server``: a throw-away redis-server on 127.0.0.1 (no persistence),
one per test module, for the tests that run a backend against a real Redis
(the state store, the limits, the DMARC records).  Skipped, with the reason,
when redis-server is not installed.

``keys``: fresh DKIM keys, one set per test module, and the zone lines that
publish them (for the spf, dkim, dmarc and auth tests on
``tests/data/zones/auth.zone``, see ``authcase.py``).
"""

from __future__ import annotations

import pytest

from tests import dkimkeys
from tests.redisserver import RedisServer, redis_binary


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys():
    """Fresh keys, published under mw-dkim.example and the DMARC test domains."""
    made = {"rsa": dkimkeys.rsa_key(2048), "ed": dkimkeys.ed25519_key(),
            "rsa1024": dkimkeys.rsa_key(1024)}
    lines = [made["rsa"].zone_line("rsa", "mw-dkim.example"),
             made["ed"].zone_line("ed", "mw-dkim.example"),
             made["rsa1024"].zone_line("short", "mw-dkim.example"),
             made["ed"].zone_line("ed", "mw-reject.example"),
             made["ed"].zone_line("ed", "mail.mw-strict.example"),
             made["ed"].zone_line("ed", "mail.mw-reject.example")]
    made["zone"] = "\n".join(lines)
    return made
