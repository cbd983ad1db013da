"""Runs the checks stage by stage and asks the policy for a verdict.

The engine is pure: it never imports ``Milter``, keeps no per-request state
in globals, and gets its resolver and clock injected, so the milter adapter,
``mailwarden scan`` and the tests drive the very same code.

Ordering: within a stage, checks run in levels of the ``requires`` graph;
the checks of one level do not depend on each other and run in parallel
(their DNS waits overlap).  A cycle is refused at start-up.

Parallel costs thread hand-offs, and most lookups are answered from the
cache; so a level is first run in the calling thread with the DNS
session in speculative mode: a ``replayable`` check whose lookups are all
cached finishes there; one that needs the network has its lookups started
in the background (``CacheMiss``) and is run again, in parallel with the
other such checks, joining those lookups.  An exception in
a check becomes a ``temperror`` result with the check's ``NAME_ERROR``
symbol and a log line with the queue id, never a crashed milter.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from . import authresults
from .checks import Check, registry as check_registry
from .config import Config
from .dns import CacheMiss, Lookup, Resolver
from .model import Action, Body, Connection, Message, Reply, Result, Stage, Trust
from .policy import Policy, Verdict
from .state import Store, make_store

log = logging.getLogger("mailwarden")


class EngineError(Exception):
    """The checks cannot be arranged (a cycle, an unknown requirement)."""


@dataclass
class Services:
    """What checks may use besides their options; one set per engine."""

    config: Config
    resolver: Resolver
    clock: Callable[[], float] = time.time       # wall clock, injectable for tests
    hostname: str = ""
    state: Optional[Store] = None                # counters shared by limits (mailwarden.state)


class Context:
    """What a check sees: the connection, the message, and earlier results."""

    def __init__(self, engine: "Engine", conn: Connection, msg: Optional[Message],
                 stage: Stage, dns: Lookup, rcpt: Optional[str] = None):
        self.engine = engine
        self.conn = conn
        self.msg = msg
        self.stage = stage
        self.dns = dns
        self.rcpt = rcpt
        self.new: list = []
        self.trust = engine.trust(conn)       # the client's trust class, for this stage
        self._tags_at: Optional[tuple] = None  # the result counts _tags was made from
        self._tags: frozenset = frozenset()

    @property
    def results(self) -> list:
        return self.conn.results + (self.msg.results if self.msg else []) + self.new

    def results_of(self, check: str) -> list:
        return [r for r in self.results if r.check == check]

    @property
    def tags(self) -> frozenset:
        # results are only ever added during a stage: the counts tell
        # whether the tags made last time are still those of ctx.results
        msg = self.msg
        at = (len(self.conn.results), len(msg.results) if msg is not None else 0,
              len(self.new))
        if at != self._tags_at:
            tags = {self.trust}
            for r in self.results:
                if r.tags:
                    tags |= r.tags
            self._tags, self._tags_at = frozenset(tags), at
        return self._tags

    @property
    def queue_id(self) -> str:
        return self.msg.queue_id if self.msg and self.msg.queue_id else ""

    @property
    def log(self) -> logging.LoggerAdapter:
        return ConnLog(log, self.conn, self.msg)

    def now(self) -> float:
        return self.engine.services.clock()


class ConnLog(logging.LoggerAdapter):
    """Prefixes every line with the queue id (or the connection number)."""

    def __init__(self, logger, conn: Connection, msg: Optional[Message]):
        super().__init__(logger, {})
        self.conn, self.msg = conn, msg

    def process(self, msg, kwargs):
        qid = self.msg.queue_id if self.msg is not None and self.msg.queue_id else ""
        return f"{qid or 'conn#%d' % self.conn.id}: {msg}", kwargs


class ResultCache:
    """Results of checks that declare their inputs (``Check.cache_key``),
    kept so that a connection like an earlier one skips them.

    An entry lives no longer than the first of the DNS answers it was made
    from leaves the resolver's cache (or ``[dns] max_ttl`` when it used
    none), holds the lookup keys it used so that a hit is counted against
    the DNS budget as the lookups would have been, and is never made from a
    temporary answer or result.  Bounded: the oldest entry goes first.  Read
    without a lock (one dict lookup is atomic), written under one.  One per
    engine: a reload starts empty.
    """

    SIZE = 4096

    def __init__(self, clock: Callable[[], float], max_age: float, size: int = SIZE):
        self.clock = clock
        self.max_age = max_age
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0          # for tests and benches; not locked

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key) -> Optional[tuple]:
        """(results, lookup keys) stored for ``key`` and still fresh, else None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry[0] <= self.clock():
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry[1], entry[2]

    def put(self, key, results: tuple, keys: tuple, expires: float) -> None:
        expires = min(expires, self.clock() + self.max_age)
        if self.size <= 0 or expires <= self.clock():
            return
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (expires, results, keys)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class _Step:
    """One check at one stage, as the engine calls it: its stage method
    bound, its skip tags read once (a check's options never change), and
    its ``cache_key`` when it declares one."""

    __slots__ = ("check", "name", "run", "skips", "replayable", "cache_key", "cacheable")

    def __init__(self, check: Check, stage: Stage):
        self.check = check
        self.name = check.name
        self.run = getattr(check, stage.method)
        self.skips = check.skips()
        self.replayable = check.replayable
        self.cache_key = getattr(check, "cache_key", None)
        self.cacheable = getattr(check, "cacheable", None)


def _levels(checks: list, stage: Stage) -> list:
    """Group the checks that run at ``stage`` into dependency levels."""
    present = {c.name: c for c in checks if stage in type(c).stages()}
    depth: dict = {}

    def level_of(name: str, path: tuple) -> int:
        if name in depth:
            return depth[name]
        check = present[name]
        deps = [d for d in check.requires if d in present]
        value = 0 if not deps else 1 + max(level_of(d, path + (name,)) for d in deps)
        depth[name] = value
        return value

    for name in present:
        level_of(name, ())
    levels: list = []
    for check in checks:                         # keeps the registry order in a level
        if check.name in present:
            d = depth[check.name]
            while len(levels) <= d:
                levels.append([])
            if check.runs_at(stage):
                levels[d].append(_Step(check, stage))
    return [level for level in levels if level]


def _check_cycles(classes: dict) -> None:
    state: dict = {}

    def visit(name: str, path: list) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise EngineError(f"checks require each other in a cycle: {' -> '.join(cycle)}")
        state[name] = "visiting"
        for dep in classes[name].requires:
            if dep not in classes:
                raise EngineError(f"check {name} requires unknown check {dep}")
            visit(dep, path + [name])
        state[name] = "done"

    for name in classes:
        visit(name, [])


class Engine:
    def __init__(self, config: Config, resolver: Optional[Resolver] = None,
                 clock: Callable[[], float] = time.time, registry=None,
                 hostname: Optional[str] = None, state: Optional[Store] = None,
                 observer: Optional[Callable[[list], None]] = None):
        self.config = config
        # sees every stage's new results (metrics); never changes them
        self.observer = observer
        # timer(check name, stage, CPU seconds of this thread): bench/engine_cpu.py
        self.timer: Optional[Callable[[str, Stage, float], None]] = None
        registry = check_registry() if registry is None else registry
        _check_cycles(dict(registry))
        self.resolver = resolver if resolver is not None else Resolver(config.dns)
        self.services = Services(config=config, resolver=self.resolver, clock=clock,
                                 hostname=hostname if hostname is not None else socket.getfqdn(),
                                 state=state if state is not None else make_store(config.state))
        self.policy = Policy(config.policy, config.scores)
        self.results_cache = ResultCache(self.resolver.clock, config.dns.max_ttl,
                                         ResultCache.SIZE if config.dns.cache_size else 0)
        self.checks: list = [cls(config.checks[name], self.services)
                             for name, cls in registry.items()
                             if config.checks[name].enabled]
        self.levels = {stage: _levels(self.checks, stage) for stage in Stage}
        self._closing = [c for c in self.checks if callable(getattr(c, "on_close", None))]
        self._leaving = [c for c in self.checks if callable(getattr(c, "on_leave", None))]
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=32, thread_name_prefix="mailwarden-check")

    def close(self, resolver: bool = True, state: bool = True) -> None:
        """Free the pools; a reload that hands the resolver or the state
        store on to the next engine keeps them open."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if resolver:
            self.resolver.close()
        if state:
            self.services.state.close()

    def close_connection(self, conn: Connection) -> None:
        """The SMTP connection ended: let each check drop what it holds for it.

        Never raises: the MTA has gone, nobody could be told.
        """
        for check in self._closing:
            try:
                check.on_close(conn)
            except Exception as exc:     # as in _call: a check's crash stays a log line
                ConnLog(log, conn, None).error("check %s crashed at close: %s: %s", check.name,
                                               exc.__class__.__name__, exc, exc_info=True)

    # -- trust --------------------------------------------------------------

    def trust(self, conn: Connection) -> Trust:
        """The client's trust class: ``authenticated`` (SMTP AUTH),
        ``trusted`` (its address is in ``[relay] trusted_networks``) or
        ``other``.  A client whose address the MTA did not give, or gave in
        a form we cannot read, is never trusted: it is ``other``.  (Postfix
        presents mail submitted with sendmail(1) to ``non_smtpd_milters`` as
        ``localhost[127.0.0.1]``, or ``::1``: trusted only as loopback is.)"""
        if conn.auth_user:
            return Trust.AUTHENTICATED
        ip = conn.client_ip
        if ip is None:
            return Trust.OTHER
        networks = self.config.relay.trusted_networks
        memo = conn.trusted_memo          # (address, networks, answer) of the last ask
        if memo is None or memo[0] is not ip or memo[1] is not networks:
            memo = conn.trusted_memo = (ip, networks, ip in networks)
        return Trust.TRUSTED if memo[2] else Trust.OTHER

    # -- running checks -----------------------------------------------------

    def _call(self, step: _Step, ctx: Context) -> list:
        if self.timer is not None:
            started = time.thread_time()
            try:
                return self._call_check(step, ctx)
            finally:
                self.timer(step.name, ctx.stage, time.thread_time() - started)
        return self._call_check(step, ctx)

    def _call_check(self, step: _Step, ctx: Context) -> list:
        if step.cache_key is not None:
            return self._call_cached(step, ctx)
        return self._invoke(step, ctx)

    def _invoke(self, step: _Step, ctx: Context) -> list:
        try:
            out = step.run(ctx)
        except Exception as exc:        # the one place a check's crash is caught
            check = step.check
            ctx.log.error("check %s crashed at %s: %s: %s", check.name, ctx.stage.name.lower(),
                          exc.__class__.__name__, exc, exc_info=True)
            # a policy check that could not decide fails closed, whatever
            # temperror_action says for this client
            reply = (Reply(Action.TEMPFAIL, 451, "4.7.1",
                           f"Temporary failure in {check.name} checks, please try again later")
                     if check.fail_closed else None)
            return [Result(check=check.name, result="temperror", symbol=check.error_symbol(),
                           reason=f"internal error in {check.name} ({exc.__class__.__name__})",
                           method=check.method, tempfail=check.options.tempfail_on_error,
                           stage=ctx.stage, reply=reply)]
        if out is None:
            return []
        stage = ctx.stage
        if isinstance(out, Result):
            return [out.at_stage(stage)]
        return [r.at_stage(stage) for r in out]

    def _call_cached(self, step: _Step, ctx: Context) -> list:
        """_call_check through the result cache, for a check with a cache_key."""
        cache = self.results_cache
        if cache.size <= 0:
            return self._invoke(step, ctx)
        try:
            key = (step.name, ctx.stage, step.cache_key(ctx))
        except Exception:            # its stage method will crash the same way, and say so
            return self._invoke(step, ctx)
        dns = ctx.dns
        found = cache.get(key)
        if found is not None and dns.charge(found[1]):
            return list(found[0])
        record = dns.record()
        try:
            out = self._invoke(step, ctx)
        finally:
            dns.stop_recording()
        if record.tainted or key[2] is None:
            return out
        for r in out:
            if r.result == "temperror":
                return out
        if step.cacheable is None or step.cacheable(out):
            expires = record.expires(self.resolver)
            if expires is not None:
                cache.put(key, tuple(out), tuple(dict.fromkeys(record.keys)), expires)
        return out

    def _speculate(self, check: _Step, ctx: Context) -> Optional[list]:
        """Run a replayable check on cached DNS answers only: its results,
        or None if it needed a lookup (which is now on its way)."""
        dns = ctx.dns
        dns.speculative, dns.missed = True, False
        try:
            out = self._call(check, ctx)
        except CacheMiss:
            return None
        finally:
            dns.speculative = False
        # a library may have swallowed the CacheMiss: what it gave is not the answer
        return None if dns.missed else out

    def _run(self, ctx: Context) -> list:
        stage = ctx.stage
        for level in self.levels[stage]:
            tags = ctx.tags
            runnable = [s for s in level if not (s.skips & tags)]
            if len(runnable) == 1 or stage is Stage.BODY:
                for step in runnable:
                    ctx.new.extend(self._call(step, ctx))
            elif runnable:
                # first pass in this thread: a check whose lookups are all
                # cached is done here, with no thread hand-off; one that
                # needs the network has started its lookups and waits below
                found: dict = {}
                waiting = []
                for step in runnable:
                    out = self._speculate(step, ctx) if step.replayable else \
                        self._call(step, ctx)
                    if out is None:
                        waiting.append(step)
                    else:
                        found[step.name] = out
                if waiting:
                    # the calling thread runs the first check itself: the pool only
                    # carries the others, so a busy pool delays, never blocks, a stage
                    futures = [(s, self._pool.submit(self._call, s, ctx)) for s in waiting[1:]]
                    found[waiting[0].name] = self._call(waiting[0], ctx)
                    for step, future in futures:
                        found[step.name] = future.result()
                for step in runnable:             # in level order, whatever finished first
                    ctx.new.extend(found[step.name])
        if self.observer is not None and ctx.new:
            self.observer(ctx.new)
        return ctx.new

    def _stage(self, conn: Connection, msg: Optional[Message], stage: Stage, dns: Lookup,
               rcpt: Optional[str] = None) -> Optional[Verdict]:
        ctx = Context(self, conn, msg, stage, dns, rcpt)
        dns.resume()                # only the milter's own time counts, see Lookup
        try:
            new = self._run(ctx)
        finally:
            dns.pause()
        (msg.results if msg is not None and stage >= Stage.MAIL else conn.results).extend(new)
        ctx.new = []            # now stored above: ctx.results must not list them twice
        if not any(r.reply is not None for r in new):
            return None
        return self.policy.decide(ctx.results, self.trust(conn), stage, final=False)

    # -- the SMTP stages ----------------------------------------------------

    def connect(self, conn: Connection) -> Optional[Verdict]:
        conn.dns = self.resolver.session()
        return self._stage(conn, None, Stage.CONNECT, conn.dns)

    def helo(self, conn: Connection, name: str) -> Optional[Verdict]:
        conn.helo = name
        conn.results[:] = [r for r in conn.results if r.stage is not Stage.HELO]
        if conn.dns is None:        # connect and HELO share one time limit
            conn.dns = self.resolver.session()
        return self._stage(conn, None, Stage.HELO, conn.dns)

    def new_message(self, conn: Connection, mail_from: str, params: dict) -> Message:
        conn.messages += 1
        msg = Message(mail_from=mail_from, mail_params=params,
                      body=Body(self.config.milter.spool_threshold))
        msg.dns = self.resolver.session()
        msg.dns.pause()             # runs during this message's stages only
        return msg

    def mail(self, conn: Connection, msg: Message) -> Optional[Verdict]:
        return self._stage(conn, msg, Stage.MAIL, msg.dns)

    def rcpt(self, conn: Connection, msg: Message, rcpt: str) -> Optional[Verdict]:
        before = len(msg.results)
        verdict = self._stage(conn, msg, Stage.RCPT, msg.dns, rcpt)
        if verdict is not None and verdict.action in (Action.REJECT, Action.TEMPFAIL):
            # answered for this recipient alone: its results must not judge
            # the message the other recipients still receive
            del msg.results[before:]
            return verdict
        msg.rcpts.append(rcpt)
        return verdict

    def body(self, conn: Connection, msg: Message, chunk: bytes) -> Optional[Verdict]:
        msg.body.write(chunk)
        if not self.levels[Stage.BODY]:
            return None
        return self._stage(conn, msg, Stage.BODY, msg.dns)

    def eom(self, conn: Connection, msg: Message) -> Verdict:
        ctx = Context(self, conn, msg, Stage.EOM, msg.dns)
        msg.dns.resume()
        try:
            msg.results.extend(self._run(ctx))
        finally:
            msg.dns.pause()
        results = conn.results + msg.results
        verdict = self.policy.decide(results, self.trust(conn), Stage.EOM, final=True)
        if verdict.action in (Action.ACCEPT, Action.ADD_HEADER, Action.QUARANTINE):
            removed = tuple(authresults.forged(self.config.authserv.id, msg.headers,
                                               self.config.policy.status_header))
            added = tuple(h for r in results for h in r.add_headers) + (
                (authresults.HEADER, authresults.build(self.config.authserv.id, results)),
                self.policy.status_header(verdict.action, verdict.score, verdict.symbols,
                                          results),
            )
            added = self._leave(ctx, msg, added, removed) + added
            verdict = dataclasses.replace(verdict, headers_added=added, headers_removed=removed)
        return verdict

    def _leave(self, ctx: Context, msg: Message, added: tuple, removed: tuple) -> tuple:
        """The last step before the message goes: each check with an
        ``on_leave(ctx, message, authres_value)`` (ARC sealing) may ask
        ``message()`` for the message as it will leave, every other change
        made (``added`` on top, as the adapter inserts them; ``removed``
        gone), and gives header fields to put above all.  A crash there is logged and adds
        nothing: the message goes as it is."""
        tags = ctx.tags
        leaving = [c for c in self._leaving if not (c.skips() & tags)]
        if not leaving:
            return ()
        ctx.new = []
        authres_value = dict(added).get(authresults.HEADER, "")
        out: tuple = ()
        for check in leaving:
            above = out + added
            try:
                out = tuple(check.on_leave(ctx, lambda: outgoing(msg, above, removed),
                                           authres_value)) + out
            except Exception as exc:      # as in _call_check: a crash stays a log line
                ctx.log.error("check %s crashed before the message left: %s: %s", check.name,
                              exc.__class__.__name__, exc, exc_info=True)
        return out


def outgoing(msg: Message, added: tuple, removed: tuple) -> bytes:
    """The message as the MTA will pass it on: ``added`` (name, value)
    fields on top in their order, with the space after the colon the
    adapter sends and CRLF line ends; the ``removed`` (name, value, index)
    occurrences gone; then the headers as received and the body."""
    gone = {(name.lower(), index) for name, _value, index in removed}
    head = []
    for name, value in added:
        if value[:1] not in (" ", "\t"):
            value = " " + value
        head.append(name.encode("ascii") + b":" +
                    value.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
                    + b"\r\n")
    counts: dict = {}
    for name, value in msg.wire_headers():
        low = name.decode("ascii", "surrogateescape").lower()
        counts[low] = counts.get(low, 0) + 1
        if (low, counts[low]) not in gone:
            head.append(name + b":" + value)
    body = msg.body.read() if msg.body else b""
    return b"".join(head) + b"\r\n" + body


def run_offline(engine: Engine, *, client_ip, client_name: str = "", helo: str = "",
                mail_from: str = "", rcpts: Iterable[str] = (), message: bytes = b"",
                auth_user: str = "", tls_version: str = "", tls_cipher: str = "",
                tls_bits: str = "", queue_id: str = "",
                esmtp_size: Optional[int] = None) -> tuple:
    """Run every stage as the milter would, on one message (``scan``).

    Returns (verdict, connection, message). Stops at the first stage that
    gives a verdict, exactly like the MTA would.
    """
    from .model import parse_client_address
    from .mime import split_message

    conn = Connection(client_ip=parse_client_address(client_ip),
                      client_name=client_name or "unknown", tls_version=tls_version,
                      tls_cipher=tls_cipher, tls_bits=tls_bits)
    verdict = engine.connect(conn)
    if verdict is not None:
        return verdict, conn, None
    if helo:
        verdict = engine.helo(conn, helo)
        if verdict is not None:
            return verdict, conn, None
    # SMTP AUTH follows EHLO: the milter learns the user with MAIL FROM's
    # macros, so connect and HELO checks must not see it here either
    conn.auth_user = auth_user
    headers, body, problem = split_message(message)
    params = {"SIZE": str(esmtp_size)} if esmtp_size is not None else {}
    msg = engine.new_message(conn, mail_from, params)
    msg.queue_id = queue_id
    verdict = engine.mail(conn, msg)
    if verdict is not None:
        return verdict, conn, msg
    accepted = 0
    last = None
    for rcpt in rcpts:
        v = engine.rcpt(conn, msg, rcpt)
        if v is None or v.action not in (Action.REJECT, Action.TEMPFAIL):
            accepted += 1
        else:
            last = v
    if not accepted and last is not None:
        return last, conn, msg
    for name, value in headers:
        msg.add_header(name, value)
    step = 65535                         # the chunk size libmilter uses
    for i in range(0, len(body), step):
        verdict = engine.body(conn, msg, body[i:i + step])
        if verdict is not None:
            return verdict, conn, msg
    return engine.eom(conn, msg), conn, msg
