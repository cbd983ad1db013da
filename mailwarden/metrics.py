"""Prometheus metrics: what the filter did and how healthy it is.

Off unless ``[metrics] listen = HOST:PORT`` is set; then ``mailwarden run``
serves ``/metrics`` there (prometheus-client's HTTP server, one thread).
A port alone binds loopback (127.0.0.1); every interface only when asked
for by address (``0.0.0.0:PORT``, ``[::]:PORT``).
Metrics are fed through a few hooks, never from inside a check:

* the resolver's ``on_query`` -> DNS queries by outcome and their latency;
* the engine's ``observer`` -> results by check and result;
* the milter adapter -> verdicts, symbols, time per stage and per message,
  open connections;
* :class:`CountingStore` around the limits state store -> its errors;
* the reload path -> reloads by outcome.

Every metric lives in the :class:`Metrics` object's own registry, so two
engines in one process (tests, a reload) never collide.

Exported names (``_total`` added by the client to counters):

========================================  ===========================================
mailwarden_messages_total{action}         end-of-message verdicts
mailwarden_verdicts_total{stage,action,   every verdict that stopped or ended a
  cause}                                  transaction; cause: the check whose reply
                                          it was, ``score``, or ``-`` (accepted)
mailwarden_check_results_total{check,     each check result as produced
  result}
mailwarden_symbols_total{symbol}          symbols in verdicts, once per verdict
mailwarden_dns_queries_total{outcome}     noerror, nxdomain, nodata, servfail,
                                          timeout, error
mailwarden_dns_query_seconds              histogram of DNS query latency (cache
                                          hits are not queries)
mailwarden_stage_seconds{stage}           histogram of time spent per SMTP stage
mailwarden_message_seconds                histogram of time spent on one message,
                                          MAIL FROM to end of message (our time only,
                                          not the client's)
mailwarden_connections_open               SMTP connections now open
mailwarden_connections_total              SMTP connections seen
mailwarden_state_errors_total             limits state store failures
mailwarden_config_reloads_total{result}   SIGHUP reloads: ok or failed
mailwarden_config_loaded_timestamp_seconds  when the running config was loaded
========================================  ===========================================
"""

from __future__ import annotations

import time
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import start_http_server

from .model import Action
from .state import StateError, Store

LOOPBACK = "127.0.0.1"

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All metrics of one running milter, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.messages = Counter("mailwarden_messages", "End-of-message verdicts by action",
                                ["action"], registry=r)
        self.verdicts = Counter("mailwarden_verdicts",
                                "Verdicts by SMTP stage, action and cause (check or score)",
                                ["stage", "action", "cause"], registry=r)
        self.results = Counter("mailwarden_check_results", "Check results by check and result",
                               ["check", "result"], registry=r)
        self.symbols = Counter("mailwarden_symbols", "Symbols in verdicts", ["symbol"],
                               registry=r)
        self.dns_queries = Counter("mailwarden_dns_queries", "DNS queries by outcome",
                                   ["outcome"], registry=r)
        self.dns_seconds = Histogram("mailwarden_dns_query_seconds", "DNS query latency",
                                     buckets=_LATENCY, registry=r)
        self.stage_seconds = Histogram("mailwarden_stage_seconds",
                                       "Time spent in mailwarden per SMTP stage", ["stage"],
                                       buckets=_LATENCY, registry=r)
        self.message_seconds = Histogram("mailwarden_message_seconds",
                                         "Time spent in mailwarden per message",
                                         buckets=_LATENCY, registry=r)
        self.connections_open = Gauge("mailwarden_connections_open",
                                      "SMTP connections now open", registry=r)
        self.connections = Counter("mailwarden_connections", "SMTP connections seen",
                                   registry=r)
        self.state_errors = Counter("mailwarden_state_errors",
                                    "Limits state store failures", registry=r)
        self.reloads = Counter("mailwarden_config_reloads", "Configuration reloads by result",
                               ["result"], registry=r)
        self.config_loaded = Gauge("mailwarden_config_loaded_timestamp_seconds",
                                   "When the running configuration was loaded", registry=r)
        self.config_loaded.set(time.time())
        for outcome in ("ok", "failed"):
            self.reloads.labels(result=outcome)   # shown as 0 before the first reload

    # -- hooks --------------------------------------------------------------

    def dns_query(self, answer, seconds: float) -> None:
        """``Resolver(on_query=...)``."""
        self.dns_queries.labels(outcome=answer.status.value).inc()
        self.dns_seconds.observe(seconds)

    def check_results(self, results: Iterable) -> None:
        """The engine's observer: results as each stage produces them."""
        for r in results:
            self.results.labels(check=r.check, result=r.result).inc()

    def stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def verdict(self, verdict) -> None:
        stage = verdict.stage.name.lower() if verdict.stage is not None else "eom"
        if stage == "eom":
            self.messages.labels(action=verdict.action).inc()
        self.verdicts.labels(stage=stage, action=verdict.action, cause=cause(verdict)).inc()
        for symbol, _weight in verdict.symbols:
            self.symbols.labels(symbol=symbol).inc()

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "failed").inc()
        if ok:
            self.config_loaded.set(time.time())

    # -- output -------------------------------------------------------------

    def page(self) -> bytes:
        """The text exposition format, as served on /metrics."""
        return generate_latest(self.registry)

    def serve(self, listen: str):
        """Start the HTTP listener on ``HOST:PORT``; returns the server.

        No host (``:PORT``, ``PORT``) is loopback: an empty address would
        be every interface to the HTTP server, and metrics tell who mails
        whom how much."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or LOOPBACK
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return server


def cause(verdict) -> str:
    """Which check (or the score) made a verdict; ``-`` for an acceptance."""
    if verdict.reply is not None:
        for r in verdict.results:
            if r.reply is not None and r.reply == verdict.reply:
                return r.check
        if verdict.action == Action.TEMPFAIL:
            failed = next((r for r in verdict.results if r.result == "temperror" and r.tempfail),
                          None)
            if failed is not None:
                return failed.check
        return "score"
    if verdict.action == Action.QUARANTINE:
        asked = next((r for r in verdict.results if r.quarantine), None)
        return asked.check if asked is not None else "score"
    if verdict.action == Action.ADD_HEADER:
        return "score"
    return "-"


class CountingStore(Store):
    """A state store that counts its failures and passes everything on."""

    def __init__(self, inner: Store, on_error):
        self.inner = inner
        self.on_error = on_error

    def take(self, key, amount, limit, window, now):
        try:
            return self.inner.take(key, amount, limit, window, now)
        except StateError:
            self.on_error()
            raise

    def acquire(self, key, token, limit, lease, now):
        try:
            return self.inner.acquire(key, token, limit, lease, now)
        except StateError:
            self.on_error()
            raise

    def release(self, key, token):
        try:
            return self.inner.release(key, token)
        except StateError:
            self.on_error()
            raise

    def close(self) -> None:
        self.inner.close()
