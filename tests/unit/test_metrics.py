"""Prometheus metrics: fed by the adapter, engine, resolver and state store
hooks; served over real HTTP; the Grafana dashboard uses only what exists.
Also the engine holder a reload swaps engines in."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import Milter
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine
from mailwarden.metrics import CountingStore, Metrics
from mailwarden.milter import MailwardenMilter
from mailwarden.reload import EngineHolder, build_engine
from mailwarden.state import StateError, Store
from tests.milter.miltertest import Session, foundation_registry

ROOT = Path(__file__).resolve().parents[2]
ZONE = """
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
broken.example. SERVFAIL
"""
BASE = "[authserv]\nid = mx.test.example\n"
MESSAGE = b"From: a@sender.example\r\nTo: b@test.example\r\nSubject: x\r\n\r\nbody\r\n"


def samples(metrics: Metrics) -> dict:
    """{(name, frozenset(labels)): value} of every sample on the page."""
    out = {}
    for family in text_string_to_metric_families(metrics.page().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def make(metrics: Metrics, ini: str = "") -> Engine:
    config = loads(BASE + ini)
    resolver = Resolver(config.dns, backend=ZoneBackend(ZONE), on_query=metrics.dns_query)
    return Engine(config, resolver=resolver, hostname="mx.test.example",
                  registry=foundation_registry(), observer=metrics.check_results)


def session(engine, metrics, holder=None) -> Session:
    s = Session(engine, macros={"i": "QID1"})
    Milter.factory = lambda: MailwardenMilter(holder.acquire() if holder else engine,
                                              holder=holder, metrics=metrics)
    return s


def test_adapter_counts_verdicts_results_symbols_times_and_connections():
    metrics = Metrics()
    engine = make(metrics, "[check.iplist]\nblock = 198.51.100.66\n")
    try:
        for _ in range(3):
            s = session(engine, metrics)
            s.connect("198.51.100.7", "mail.sender.example")
            s.helo("mail.sender.example")
            s.mail("a@sender.example")
            s.rcpt("b@test.example")
            assert s.data(MESSAGE) == Milter.ACCEPT
            s.close()
        s = session(engine, metrics)
        assert s.connect("198.51.100.66") == Milter.REJECT
        s.close()
    finally:
        engine.close()
    found = samples(metrics)
    assert value(found, "mailwarden_messages_total", action="accept") == 3
    assert value(found, "mailwarden_verdicts_total", stage="eom", action="accept", cause="-") == 3
    assert value(found, "mailwarden_verdicts_total", stage="connect", action="reject",
                 cause="iplist") == 1
    assert value(found, "mailwarden_check_results_total", check="iprev", result="pass") == 3
    assert value(found, "mailwarden_check_results_total", check="iplist", result="fail") == 1
    assert value(found, "mailwarden_symbols_total", symbol="IPREV_PASS") == 3
    assert value(found, "mailwarden_symbols_total", symbol="IPLIST_BLOCK") == 1
    assert value(found, "mailwarden_stage_seconds_count", stage="connect") == 4
    assert value(found, "mailwarden_stage_seconds_count", stage="eom") == 3
    assert value(found, "mailwarden_message_seconds_count") == 3
    assert value(found, "mailwarden_message_seconds_sum") > 0
    assert value(found, "mailwarden_connections_total") == 4
    assert value(found, "mailwarden_connections_open") == 0
    # PTR and A of the client, and the PTR of the blocked one, reached "DNS"
    assert value(found, "mailwarden_dns_queries_total", outcome="noerror") >= 2
    assert value(found, "mailwarden_dns_query_seconds_count") >= 3


def test_open_connections_gauge_follows_connect_and_close():
    metrics = Metrics()
    engine = make(metrics)
    try:
        sessions = [session(engine, metrics) for _ in range(1)]
        sessions[0].connect("198.51.100.7", "mail.sender.example")
        assert value(samples(metrics), "mailwarden_connections_open") == 1
        sessions[0].close()
        assert value(samples(metrics), "mailwarden_connections_open") == 0
    finally:
        engine.close()


def test_dns_outcomes():
    metrics = Metrics()
    resolver = Resolver(loads(BASE).dns, backend=ZoneBackend(ZONE), on_query=metrics.dns_query)
    try:
        resolver.query("mail.sender.example", "A")
        resolver.query("mail.sender.example", "A")      # cached: not a query
        resolver.query("nothing.example", "A")
        resolver.query("x.broken.example", "A")
    finally:
        resolver.close()
    found = samples(metrics)
    assert value(found, "mailwarden_dns_queries_total", outcome="noerror") == 1
    assert value(found, "mailwarden_dns_queries_total", outcome="nxdomain") == 1
    assert value(found, "mailwarden_dns_queries_total", outcome="servfail") == 1
    assert value(found, "mailwarden_dns_query_seconds_count") == 3


class BrokenStore(Store):
    def take(self, *args):
        raise StateError("connection refused")

    def acquire(self, *args):
        raise StateError("connection refused")

    def release(self, *args):
        raise StateError("connection refused")


def test_state_store_errors_are_counted_and_still_raised():
    metrics = Metrics()
    store = CountingStore(BrokenStore(), metrics.state_errors.inc)
    for call in (lambda: store.take("k", 1, 5, 60, 0), lambda: store.acquire("k", "t", 1, 60, 0),
                 lambda: store.release("k", "t")):
        with pytest.raises(StateError):
            call()
    assert value(samples(metrics), "mailwarden_state_errors_total") == 3


def test_limits_fail_open_through_the_counting_store_is_counted():
    from mailwarden.checks import registry
    from mailwarden.engine import run_offline
    metrics = Metrics()
    config = loads(BASE + "[check.limits]\nconnections_per_ip = 5/1m\n")
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example",
                    registry={n: registry()[n] for n in ("iplist", "spf", "limits")},
                    state=CountingStore(BrokenStore(), metrics.state_errors.inc))
    try:
        verdict, _, msg = run_offline(engine, client_ip="198.51.100.7", mail_from="a@b.example",
                                      rcpts=["c@test.example"], message=MESSAGE)
        if msg is not None:
            msg.close()
    finally:
        engine.close()
    assert "LIMITS_TEMPERROR" in dict(verdict.symbols)
    assert value(samples(metrics), "mailwarden_state_errors_total") >= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_page_over_http():
    metrics = Metrics()
    metrics.messages.labels(action="accept").inc()
    port = _free_port()
    server = metrics.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            page = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'mailwarden_messages_total{action="accept"} 1.0' in page
    assert "# TYPE mailwarden_dns_query_seconds histogram" in page
    assert 'mailwarden_config_reloads_total{result="failed"} 0.0' in page


def test_no_listener_unless_configured():
    assert loads(BASE).metrics.listen == ""
    assert loads(BASE + "[metrics]\nlisten = 127.0.0.1:9851\n").metrics.listen == "127.0.0.1:9851"
    from mailwarden.config import ConfigError
    with pytest.raises(ConfigError, match=r":4: \[metrics\] listen: "):
        loads(BASE + "[metrics]\nlisten = localhost:9851\n")


def test_grafana_dashboard_uses_only_exported_metrics():
    dashboard = json.loads((ROOT / "contrib" / "grafana" / "mailwarden.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    metrics = Metrics()
    # every labelled family shows a sample once touched
    metrics.messages.labels(action="accept")
    metrics.verdicts.labels(stage="eom", action="accept", cause="-")
    metrics.results.labels(check="iprev", result="pass")
    metrics.symbols.labels(symbol="X")
    metrics.dns_queries.labels(outcome="noerror")
    metrics.stage_seconds.labels(stage="eom")
    metrics.tls_message("TLSv1.3")
    exported = {name for name, _ in samples(metrics)}
    used = set()
    for expr in exprs:
        used |= set(re.findall(r"\bmailwarden_[a-z_]+", expr))
    assert used, exprs
    assert used <= exported, used - exported
    for wanted in ("mailwarden_messages_total", "mailwarden_verdicts_total",
                   "mailwarden_dns_query_seconds_bucket", "mailwarden_dns_queries_total",
                   "mailwarden_message_seconds_bucket"):
        assert wanted in used
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


# -- the engine holder of a reload ---------------------------------------------------

def test_holder_keeps_in_flight_engine_and_closes_it_when_idle():
    metrics = Metrics()
    config = loads(BASE)
    first = build_engine(config, metrics)
    holder = EngineHolder(first)
    in_flight = holder.acquire()
    assert in_flight is first
    second = build_engine(loads(BASE + "[check.size]\nmax_size = 1K\n"), metrics, previous=first)
    # same [dns] and [state]: the cache and the counters pass on
    assert second.resolver is first.resolver
    assert second.services.state is first.services.state
    holder.swap(second)
    assert holder.acquire() is second
    assert not first._pool._shutdown
    holder.release(in_flight)
    assert first._pool._shutdown                       # closed once idle...
    assert not second.resolver._executor._shutdown     # ...but not what it shares
    holder.release(second)
    holder.close()
    assert second._pool._shutdown and second.resolver._executor._shutdown


def test_holder_closes_an_idle_engine_at_once_and_a_changed_resolver_with_it():
    config = loads(BASE)
    first = build_engine(config)
    holder = EngineHolder(first)
    second = build_engine(loads(BASE + "[dns]\ntimeout = 1s\n"), previous=first)
    assert second.resolver is not first.resolver
    holder.swap(second)
    assert first._pool._shutdown and first.resolver._executor._shutdown
    assert not second.resolver._executor._shutdown
    holder.close()


def test_a_port_alone_binds_loopback_only():
    from mailwarden.config import ConfigError
    for text in ("9851", ":9851", " 9851 "):
        assert loads(BASE + f"[metrics]\nlisten = {text}\n").metrics.listen == "127.0.0.1:9851"
    # another interface only when named
    assert loads(BASE + "[metrics]\nlisten = 0.0.0.0:9851\n").metrics.listen == "0.0.0.0:9851"
    assert loads(BASE + "[metrics]\nlisten = [::]:9851\n").metrics.listen == "[::]:9851"
    for bad in ("localhost:9851", ":0", "99999", "127.0.0.1:"):
        with pytest.raises(ConfigError, match=r":4: \[metrics\] listen: "):
            loads(BASE + f"[metrics]\nlisten = {bad}\n")


def test_the_listener_without_a_host_is_on_loopback():
    metrics = Metrics()
    port = _free_port()
    server = metrics.serve(f":{port}")
    try:
        assert server.server_address[0] == "127.0.0.1", server.server_address
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.shutdown()
        server.server_close()
