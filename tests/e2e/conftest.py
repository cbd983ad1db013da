"""Fixtures for the end-to-end tests: real unbound, Postfix and mailwarden.

Session-wide: ``e2e_dir`` (a root-owned 0755 directory under /tmp that user
postfix can traverse), ``dns_server``, ``sink``, ``milter_socket_path`` and
``postfix`` (wired to that socket).  Per test: ``mailwarden``, a factory
``mailwarden(overrides=None, dns_port=None)`` that stops the previous
instance and starts one on the shared socket, stopped at teardown.

Every test in this directory is marked ``e2e``.  They are skipped, with the
reason, only when Postfix or unbound is not installed or we are not root.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.harness import DnsServer, Mailwarden, Postfix, Sink, binaries_missing

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _skip_reason():
    missing = binaries_missing()
    if missing:
        return f"end-to-end tests need {', '.join(missing)} (apt-get install postfix unbound)"
    if os.geteuid() != 0:
        return "end-to-end tests run a private Postfix, which needs root"
    return None


@pytest.fixture(scope="session")
def e2e_dir():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    path = Path(tempfile.mkdtemp(prefix="mailwarden-e2e-"))
    os.chmod(path, 0o755)
    yield path
    if not os.environ.get("MAILWARDEN_E2E_KEEP"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def dns_server(e2e_dir):
    server = DnsServer(e2e_dir / "dns")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sink():
    server = Sink().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milter_socket_path(e2e_dir):
    sockdir = e2e_dir / "run"
    sockdir.mkdir(exist_ok=True)
    os.chmod(sockdir, 0o755)
    return sockdir / "milter.sock"


@pytest.fixture(scope="session")
def postfix(e2e_dir, sink, milter_socket_path):
    instance = Postfix(e2e_dir / "postfix", sink.port,
                       milter_socket=f"unix:{milter_socket_path}")
    instance.start()
    yield instance
    instance.stop()


_instances = itertools.count(1)


@pytest.fixture
def mailwarden(e2e_dir, dns_server, milter_socket_path):
    """Factory: ``mailwarden(overrides=None, dns_port=None) -> Mailwarden``."""
    current = []

    def start(overrides=None, dns_port=None):
        for old in current:
            old.stop()
        current.clear()
        instance = Mailwarden(e2e_dir / f"mailwarden-{next(_instances)}",
                              dns_port or dns_server.port, overrides,
                              socket_path=milter_socket_path)
        current.append(instance)
        return instance.start()

    yield start
    for instance in current:
        instance.stop()
