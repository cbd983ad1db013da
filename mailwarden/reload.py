"""Reloading the configuration on SIGHUP without dropping a connection.

The engine in use is kept by an :class:`EngineHolder`.  Each SMTP connection
takes the current engine when it opens and keeps it until it closes, so a
reload changes what new connections see and nothing else.  A replaced engine
is closed when its last connection has ended.  The DNS resolver (and its
cache) and the limits state store (and its counters) pass to the new engine
when their sections did not change, so a reload forgets nothing it need not.

Signals: libmilter runs a thread that ``sigwait``\\ s for SIGHUP, SIGTERM and
SIGINT and stops the milter on any of them (libmilter 8.17
``mi_signal_thread``: SIGHUP is handled like SIGTERM).  So libmilter's main
loop runs in a thread of its own, which blocks the three signals for itself
and the threads it starts, while the main thread keeps SIGHUP unblocked with
a Python handler.  Linux hands a signal sent to the process to its main
thread first when that thread can take it (``complete_signal``), so SIGHUP
reaches our handler and never libmilter's thread, while SIGTERM and SIGINT,
blocked in the main thread, still reach libmilter and stop it as before.
The handler only sets an event; the main thread does the reload.

A reload re-reads the INI and everything it names (lists, keys) through
:func:`mailwarden.config.load`, builds a new engine, and swaps it in.  A
file that does not load is refused with the same ``FILE:LINE: ...`` message
as ``check-config``, and the running engine stays.  Settings that only
start-up uses (the socket, user, group, the metrics listener) are kept as
they were; a reload that changes them says so in the log.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from .config import Config, ConfigError, load
from .dns import Resolver
from .engine import Engine, EngineError
from .state import make_store

log = logging.getLogger("mailwarden")

# [milter] keys read once at start-up: a reload cannot apply them
_STARTUP_ONLY = ("socket", "name", "timeout", "socket_mode", "user", "group", "allow_root")


def build_engine(config: Config, metrics=None, previous: Optional[Engine] = None) -> Engine:
    """An engine for ``config``, wired to ``metrics``, taking over what it can
    of ``previous`` (a resolver with equal ``[dns]``, a store with equal ``[state]``)."""
    if previous is not None and previous.config.dns == config.dns:
        resolver = previous.resolver
    else:
        resolver = Resolver(config.dns,
                            on_query=metrics.dns_query if metrics is not None else None)
    if previous is not None and previous.config.state == config.state:
        state = previous.services.state
    else:
        state = make_store(config.state)
        if metrics is not None:
            from .metrics import CountingStore
            state = CountingStore(state, metrics.state_errors.inc)
    return Engine(config, resolver=resolver, state=state,
                  observer=metrics.check_results if metrics is not None else None)


class EngineHolder:
    """The current engine, and the replaced ones still serving connections."""

    def __init__(self, engine: Engine):
        self._lock = threading.Lock()
        self.current = engine
        self._users: dict = {id(engine): 0}
        self._retired: list = []           # replaced engines not yet closed

    def acquire(self) -> Engine:
        """The engine for a new connection; give it back with :meth:`release`."""
        with self._lock:
            engine = self.current
            self._users[id(engine)] += 1
            return engine

    def release(self, engine: Engine) -> None:
        with self._lock:
            self._users[id(engine)] -= 1
            idle = [e for e in self._retired if self._users[id(e)] == 0]
            closing = [(e,) + self._shared(e, idle) for e in idle]
            for e in idle:
                self._retired.remove(e)
                del self._users[id(e)]
        for engine, resolver_in_use, state_in_use in closing:
            engine.close(resolver=not resolver_in_use, state=not state_in_use)

    def _shared(self, engine: Engine, leaving: list) -> tuple:
        """Whether an engine that stays uses ``engine``'s resolver / store."""
        staying = [self.current] + [e for e in self._retired if e not in leaving]
        return (any(e.resolver is engine.resolver for e in staying),
                any(e.services.state is engine.services.state for e in staying))

    def swap(self, engine: Engine) -> Engine:
        """Make ``engine`` current; the old one closes when its last user leaves."""
        with self._lock:
            old, self.current = self.current, engine
            self._users[id(engine)] = 0
            self._retired.append(old)
            idle = self._users[id(old)] == 0
            if idle:
                self._retired.remove(old)
                del self._users[id(old)]
                shared = self._shared(old, [])
        if idle:
            old.close(resolver=not shared[0], state=not shared[1])
        return old

    def in_use(self) -> int:
        """Connections open on any engine (for tests and the log)."""
        with self._lock:
            return sum(self._users.values())

    def close(self) -> None:
        """At shutdown: close every engine, sharing or not."""
        with self._lock:
            engines = [self.current] + self._retired
            self._retired = []
        seen_resolvers, seen_states = set(), set()
        for engine in engines:
            first_resolver = id(engine.resolver) not in seen_resolvers
            first_state = id(engine.services.state) not in seen_states
            seen_resolvers.add(id(engine.resolver))
            seen_states.add(id(engine.services.state))
            engine.close(resolver=first_resolver, state=first_state)


class Reloader:
    """Loads the INI again and swaps the engine; refuses a bad file."""

    def __init__(self, path: str, holder: EngineHolder, metrics=None,
                 log_setup: Optional[Callable] = None):
        self.path = path
        self.holder = holder
        self.metrics = metrics
        self.log_setup = log_setup

    def reload(self) -> bool:
        old = self.holder.current.config
        try:
            config = load(self.path)
            engine = build_engine(config, self.metrics, previous=self.holder.current)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            self._count(False)
            return False
        except (EngineError, OSError) as exc:
            log.error("reload refused, the running configuration stays: %s: %s",
                      self.path, exc)
            self._count(False)
            return False
        kept = [key for key in _STARTUP_ONLY
                if getattr(old.milter, key) != getattr(config.milter, key)]
        if old.metrics != config.metrics:
            kept.append("[metrics] listen")
        if kept:
            log.warning("reload: %s changed but only take effect at restart",
                        ", ".join(kept))
        if self.log_setup is not None and (
                (old.milter.log, old.milter.log_format, old.milter.log_level)
                != (config.milter.log, config.milter.log_format, config.milter.log_level)):
            self.log_setup(config.milter)
        self.holder.swap(engine)
        self._count(True)
        log.info("reloaded %s: %d checks (%s); %d connections finish on the old configuration",
                 self.path, len(engine.checks), ", ".join(c.name for c in engine.checks),
                 self.holder.in_use())
        return True

    def _count(self, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.reloaded(ok)
