"""The one resolver: every lookup mailwarden makes goes through here.

* nameservers, port and per-query timeout come from ``[dns]``;
* a TTL-respecting cache is shared by all connections (thread-safe, bounded,
  oldest out first, read without a lock);
* several lookups run in parallel (``query_many``) in a :class:`FairPool`
  of ``[dns] workers`` threads shared fairly by connections and messages,
  its queue bounded by ``[dns] queue_size``, a lookup still queued at its
  message's deadline dropped;
* a per-message :class:`Lookup` session enforces a lookup budget and a
  deadline, so that a slow DNS server cannot hold a message for longer than
  ``[dns] message_deadline``; ``[dns] decisive_reserve`` lookups of the
  budget are kept for those that decide DMARC (``decisive=True``);
* answers tell NXDOMAIN, NODATA, SERVFAIL, timeout and other errors apart:
  only SERVFAIL, timeout, error and an exhausted budget are temporary.

The backend that actually talks DNS is pluggable: :class:`WireBackend`
for real servers (the common lookups on :mod:`mailwarden.dnswire`, the
rest through dnspython, :class:`DnspythonBackend`), :class:`ZoneBackend`
for tests and offline use (it reads zone lines of the form
``NAME [TTL] [IN] TYPE RDATA``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import ipaddress
import logging
import re
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rcode
import dns.resolver
import dns.reversename

from . import dnswire

log = logging.getLogger("mailwarden.dns")

__all__ = ["Status", "Answer", "Resolver", "Lookup", "CacheMiss", "DnspythonBackend",
           "WireBackend", "ZoneBackend", "reverse_name", "normalize"]


class Status(enum.Enum):
    NOERROR = "noerror"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    SERVFAIL = "servfail"
    TIMEOUT = "timeout"
    ERROR = "error"          # refused, malformed name, garbage answer, ...
    BUDGET = "budget"        # this message's lookup budget or deadline is used up


TEMPORARY = frozenset({Status.SERVFAIL, Status.TIMEOUT, Status.ERROR, Status.BUDGET})


@dataclass(frozen=True)
class Answer:
    name: str
    rdtype: str
    status: Status
    records: tuple = ()
    ttl: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.NOERROR

    @property
    def temporary(self) -> bool:
        """SERVFAIL, timeout, other errors: a temperror, not an answer."""
        return self.status in TEMPORARY

    def describe(self) -> str:
        if self.ok:
            return f"{self.name}/{self.rdtype}: {', '.join(map(str, self.records))}"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.name}/{self.rdtype}: {self.status.value}{extra}"


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


_ADDRESSES = (ipaddress.IPv4Address, ipaddress.IPv6Address)


def reverse_name(address) -> str:
    """``1.2.3.4`` -> ``4.3.2.1``; IPv6 -> reversed nibbles (no zone suffix).
    An address object (the client's, parsed once at connect) is used as it
    is; text is parsed."""
    ip = address if isinstance(address, _ADDRESSES) else ipaddress.ip_address(address)
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def ptr_name(address) -> str:
    ip = address if isinstance(address, _ADDRESSES) else ipaddress.ip_address(address)
    suffix = "in-addr.arpa" if ip.version == 4 else "ip6.arpa"
    return f"{reverse_name(ip)}.{suffix}"


def _record_value(rdata):
    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    if rdtype == dns.rdatatype.MX:
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if rdtype in (dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.NS):
        return rdata.target.to_text(omit_final_dot=True)
    return rdata.to_text()


class DnspythonBackend:
    """Real DNS through dnspython (UDP, falling back to TCP on truncation)."""

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53):
        if nameservers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = list(nameservers)
        else:
            resolver = dns.resolver.Resolver(configure=True)
        resolver.port = port
        resolver.cache = None
        self._resolver = resolver

    def lookup(self, name: str, rdtype: str, timeout: float) -> Answer:
        try:
            answer = self._resolver.resolve(name + ".", rdtype, lifetime=timeout,
                                            raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            return Answer(name, rdtype, Status.NXDOMAIN, ttl=_negative_ttl(exc))
        except dns.resolver.LifetimeTimeout:
            return Answer(name, rdtype, Status.TIMEOUT, detail=f"no answer within {timeout:g}s")
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, Status.SERVFAIL, detail=_first_line(exc))
        except dns.resolver.YXDOMAIN:
            return Answer(name, rdtype, Status.ERROR, detail="YXDOMAIN")
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong,
                dns.name.BadEscape) as exc:
            return Answer(name, rdtype, Status.ERROR, detail=f"bad name: {exc.__class__.__name__}")
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, Status.ERROR, detail=_first_line(exc))
        if answer.rrset is None:
            ttl = _soa_ttl(answer.response)
            return Answer(name, rdtype, Status.NODATA, ttl=ttl if ttl is not None else 0.0)
        records = tuple(_record_value(r) for r in answer.rrset)
        return Answer(name, rdtype, Status.NOERROR, records, float(answer.rrset.ttl))


class WireBackend(DnspythonBackend):
    """Real DNS, the common lookups (see :func:`mailwarden.dnswire.askable`)
    asked and read by :mod:`mailwarden.dnswire` at about a quarter of
    dnspython's CPU; every other one, and all of them when a nameserver is not a plain
    address, through dnspython as :class:`DnspythonBackend` does.

    It answers as dnspython's resolver does: each server is asked in turn
    (one try waits at most ``attempt_timeout``, as dnspython's), again and
    again within ``timeout``; a server that answers SERVFAIL, REFUSED or
    garbage is not asked again for this lookup, and when none is left the
    answer is SERVFAIL; none by ``timeout``: TIMEOUT."""

    attempt_timeout = 2.0           # dnspython's Resolver.timeout

    def __init__(self, nameservers: Sequence[str] = (), port: int = 53,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(nameservers, port)
        self.clock = clock
        self._servers = _server_addresses(self._resolver.nameservers, port)

    def lookup(self, name: str, rdtype: str, timeout: float) -> Answer:
        if self._servers is None or not dnswire.askable(name, rdtype):
            return super().lookup(name, rdtype, timeout)
        clock = self.clock
        deadline = clock() + timeout
        qid = dnswire.new_id()
        query = dnswire.encode_query(qid, name, rdtype)
        servers = list(self._servers)
        failed = []
        while servers:
            for server in tuple(servers):
                text, family, sockaddr = server
                now = clock()
                if now >= deadline:
                    return Answer(name, rdtype, Status.TIMEOUT,
                                  detail=f"no answer within {timeout:g}s")
                try:
                    reply = dnswire.ask_udp(family, sockaddr, query, qid, name, rdtype,
                                            min(deadline, now + self.attempt_timeout), clock)
                    if reply is not None and reply.truncated:
                        reply = dnswire.ask_tcp(family, sockaddr, query, qid, name, rdtype,
                                                deadline, clock)
                except (dnswire.WireError, OSError) as exc:
                    failed.append(f"{text}: {exc}")
                    servers.remove(server)
                    continue
                if reply is None:
                    continue                        # no answer in this try
                answer = _wire_answer(name, rdtype, reply)
                if answer is not None:
                    return answer
                failed.append(f"{text} answered {dns.rcode.to_text(reply.rcode)}")
                servers.remove(server)
        return Answer(name, rdtype, Status.SERVFAIL,
                      detail=_first_line_text("no nameserver answered: " + "; ".join(failed)))


def _wire_answer(name: str, rdtype: str, reply) -> Answer | None:
    """The Answer a reply gives, or None when the server failed (SERVFAIL,
    REFUSED, ...): the next one is asked."""
    rcode = reply.rcode
    if rcode == dnswire.RCODE_NOERROR:
        if reply.records:
            return Answer(name, rdtype, Status.NOERROR, reply.records, reply.ttl)
        ttl = reply.negative_ttl
        return Answer(name, rdtype, Status.NODATA, ttl=ttl if ttl is not None else 0.0)
    if rcode == dnswire.RCODE_NXDOMAIN:
        ttl = reply.negative_ttl
        return Answer(name, rdtype, Status.NXDOMAIN, ttl=ttl if ttl is not None else 0.0)
    if rcode == dnswire.RCODE_YXDOMAIN:
        return Answer(name, rdtype, Status.ERROR, detail="YXDOMAIN")
    return None


def _server_addresses(nameservers, port: int):
    """(text, family, socket address) of each nameserver, or None if one is
    not a plain IP address (dnspython then asks them all)."""
    out = []
    for server in nameservers:
        if not isinstance(server, str):
            return None
        try:
            info = socket.getaddrinfo(server, port, type=socket.SOCK_DGRAM,
                                      flags=socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError, ValueError):
            return None
        family, _type, _proto, _name, sockaddr = info[0]
        out.append((server, family, sockaddr))
    return tuple(out) or None


def _first_line_text(text: str) -> str:
    return text.splitlines()[0][:200] if text else ""


def _first_line(exc) -> str:
    return _first_line_text(str(exc)) or exc.__class__.__name__


def _soa_ttl(response):
    for rrset in getattr(response, "authority", ()) or ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum))
    return None


def _negative_ttl(exc) -> float:
    try:
        for response in exc.responses().values():
            ttl = _soa_ttl(response)
            if ttl is not None:
                return ttl
    except (AttributeError, KeyError):
        pass
    return 0.0


def strip_zone_comment(line: str) -> str:
    """Drop a ``;`` or ``#`` comment, but not a ``;`` inside a quoted string
    (DKIM and DMARC records are full of them)."""
    if line.lstrip().startswith("#"):
        return ""
    quoted = escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            return line[:i]
    return line


def split_txt(rdata: str) -> str:
    """Cut each character-string of TXT rdata to at most 255 bytes on the
    wire, as a zone file must for a DKIM key longer than that; the TXT
    value (the strings joined) is the same.  An escape (``\\ddd``,
    ``\\X``) is one byte and is never cut; other characters count their
    UTF-8 bytes.  Unquoted words are strings too."""
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', rdata) or rdata.split()
    out = []
    for text in strings:
        chunk, size = [], 0
        for unit in re.findall(r"\\[0-9]{3}|\\.|.", text, re.S):
            width = 1 if unit.startswith("\\") else len(unit.encode("utf-8"))
            if size + width > 255:
                out.append("".join(chunk))
                chunk, size = [], 0
            chunk.append(unit)
            size += width
        out.append("".join(chunk))
    return " ".join(f'"{piece}"' for piece in out)


class ZoneBackend:
    """Answers from zone lines, never from the network.

    Lines: ``NAME [TTL] [IN] TYPE RDATA``; ``;`` and ``#`` start comments.
    Two pseudo types make faults: ``NAME TIMEOUT`` and ``NAME SERVFAIL`` (any
    query at or below NAME).  CNAMEs are followed up to
    :attr:`MAX_CNAME_CHAIN` links; a loop or a longer chain answers SERVFAIL,
    as a recursive server would.  Used by the unit tests and by ``scan --zone``.
    """

    MAX_CNAME_CHAIN = 16

    def __init__(self, text: str = "", default_ttl: int = 300):
        self._data: dict = {}           # name -> {rdtype: [values]}
        self._ttl: dict = {}
        self._faults: dict = {}         # name -> Status
        self.queries: list = []         # (name, rdtype) in order, for tests
        self._lock = threading.Lock()
        self.add(text, default_ttl)

    def add(self, text: str, default_ttl: int = 300) -> None:
        for raw in text.splitlines():
            line = strip_zone_comment(raw).strip()
            if not line:
                continue
            parts = line.split(None, 1)
            name = normalize(parts[0])
            rest = parts[1] if len(parts) > 1 else ""
            tokens = rest.split(None, 1)
            ttl = default_ttl
            if tokens and tokens[0].isdigit():
                ttl = int(tokens[0])
                tokens = tokens[1].split(None, 1) if len(tokens) > 1 else []
            if tokens and tokens[0].upper() == "IN":
                tokens = tokens[1].split(None, 1) if len(tokens) > 1 else []
            if not tokens:
                raise ValueError(f"zone line without a type: {raw!r}")
            rdtype = tokens[0].upper()
            rdata_text = tokens[1] if len(tokens) > 1 else ""
            if rdtype in ("TIMEOUT", "SERVFAIL"):
                self._faults[name] = Status[rdtype]
                continue
            if rdtype in ("TXT", "SPF"):
                rdata_text = split_txt(rdata_text)
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype),
                                        rdata_text, origin=dns.name.root)
            self._data.setdefault(name, {}).setdefault(rdtype, []).append(_record_value(rdata))
            self._ttl[(name, rdtype)] = ttl

    def _fault(self, name: str):
        labels = name.split(".")
        for i in range(len(labels)):
            status = self._faults.get(".".join(labels[i:]))
            if status is not None:
                return status
        return None

    def lookup(self, name: str, rdtype: str, timeout: float) -> Answer:
        with self._lock:
            self.queries.append((name, rdtype))
        # a CNAME chain is followed here, as a recursive server does: bounded
        # in length, and a loop is a server failure (RFC 1034 §3.6.2), never
        # a recursion without end
        seen = [name]
        current = name
        while True:
            answer, target = self._answer(current, rdtype, timeout)
            if target is None:
                return answer if current == name else dataclasses.replace(answer, name=name)
            if target in seen:
                return Answer(name, rdtype, Status.SERVFAIL,
                              detail=f"CNAME loop at {target}")
            if len(seen) > self.MAX_CNAME_CHAIN:
                return Answer(name, rdtype, Status.SERVFAIL,
                              detail=f"CNAME chain longer than {self.MAX_CNAME_CHAIN}")
            seen.append(target)
            current = target

    def _answer(self, name: str, rdtype: str, timeout: float) -> tuple:
        """(answer for ``name`` itself, None) or (None, CNAME target to follow)."""
        fault = self._fault(name)
        if fault is Status.TIMEOUT:
            return Answer(name, rdtype, Status.TIMEOUT,
                          detail=f"no answer within {timeout:g}s"), None
        if fault is not None:
            return Answer(name, rdtype, fault), None
        node = self._data.get(name)
        if node is None:
            # an empty non-terminal exists (NODATA), anything else is NXDOMAIN
            suffix = "." + name
            if any(other.endswith(suffix) for other in self._data):
                return Answer(name, rdtype, Status.NODATA, ttl=60.0), None
            return Answer(name, rdtype, Status.NXDOMAIN, ttl=60.0), None
        if rdtype not in node:
            if "CNAME" in node and rdtype != "CNAME":
                return None, normalize(node["CNAME"][0])
            return Answer(name, rdtype, Status.NODATA, ttl=60.0), None
        return Answer(name, rdtype, Status.NOERROR, tuple(node[rdtype]),
                      float(self._ttl[(name, rdtype)])), None


def _askable(name: str) -> bool:
    """A normalized name that can be sent at all (RFC 1035: 253 characters)."""
    return bool(name) and len(name) <= 253


class CacheMiss(BaseException):
    """A speculative lookup (see :attr:`Lookup.speculative`) is not cached.

    A BaseException, so that a library's ``except Exception`` around its DNS
    function lets it through to the engine, which runs the check again,
    normally, once the lookups it started have had time to answer.
    """


class PoolFull(Exception):
    """The pool's queue (or this owner's share of it) is full: the caller
    asks itself, in its own time, what it wanted asked ahead."""


class _Job:
    __slots__ = ("run", "drop", "deadline", "taken", "owners")

    def __init__(self, run: Callable[[float], None], drop: Callable[[], None], deadline: float):
        self.run = run              # run(seconds left before the deadline)
        self.drop = drop            # called instead when the deadline passed in the queue
        self.deadline = deadline
        self.taken = False          # started or dropped: once, from whichever queue
        self.owners: list = []      # whose queues hold it


class _Owner:
    __slots__ = ("queue", "running", "started_sum", "served", "order")

    def __init__(self, served: float, order: int):
        self.queue: deque = deque()
        self.running = 0
        self.started_sum = 0.0      # sum of the start times of the jobs now running
        self.served = served        # worker seconds used by jobs that finished
        self.order = order


class FairPool:
    """Worker threads for lookups started ahead of time, shared fairly.

    Each owner (a connection's or a message's :class:`Lookup`) has its own
    FIFO queue; a free worker takes the next job of the owner that has had
    the least worker time so far (the time of its running jobs counted as
    they run), so a connection whose lookups hang on a zone that never
    answers gets no more of the workers than one whose lookups answer at
    once, however many it queues.  An owner that comes back starts level
    with the least served owner: leaving and coming back gains nothing.

    The queue is bounded, in all and per owner (:class:`PoolFull`), and a
    job still queued when its deadline passes is dropped, not run: nobody
    waits for its answer any more.  A job may sit in several owners' queues
    (one lookup several messages wait for); it runs once, from the first
    queue that reaches it.
    """

    def __init__(self, workers: int, max_queued: int, max_queued_per_owner: int,
                 clock: Callable[[], float] = time.monotonic, name: str = "mailwarden-dns"):
        self.workers = workers
        self.max_queued = max_queued
        self.max_queued_per_owner = max_queued_per_owner
        self.clock = clock
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._owners: dict = {}
        self._queued = 0            # queue entries, all owners
        self._idle = 0
        self._threads: list = []
        self._order = 0
        self._shutdown = False
        self.dropped = 0            # jobs dropped at their deadline (tests, logs)

    # -- submitting --------------------------------------------------------

    def submit(self, owner, job: _Job) -> None:
        """Queue ``job`` for ``owner``; PoolFull if there is no room."""
        with self._cond:
            if self._shutdown:
                raise RuntimeError("the pool is shut down")
            state = self._owners.get(owner)
            queued = len(state.queue) if state is not None else 0
            if self._queued >= self.max_queued or queued >= self.max_queued_per_owner:
                raise PoolFull()
            if state is None:
                state = self._owners[owner] = self._new_owner()
            state.queue.append(job)
            job.owners.append(owner)
            self._queued += 1
            self._cond.notify()
            # an idle worker woken above may not have taken its job yet:
            # another one starts while jobs outnumber idle workers
            if self._queued > self._idle and len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()

    def _new_owner(self) -> _Owner:
        now = self.clock()
        floor = min((self._load(o, now) for o in self._owners.values()), default=0.0)
        self._order += 1
        return _Owner(floor, self._order)

    @staticmethod
    def _load(state: _Owner, now: float) -> float:
        return state.served + state.running * now - state.started_sum

    # -- working -----------------------------------------------------------

    def _take(self):
        """(owner, job) to run next, or None if no queue holds a live job."""
        now = self.clock()
        while True:
            best = None
            best_key = None
            for owner, state in self._owners.items():
                if not state.queue:
                    continue
                key = (self._load(state, now), state.running, state.order)
                if best_key is None or key < best_key:
                    best, best_key = owner, key
            if best is None:
                return None
            state = self._owners[best]
            job = state.queue.popleft()
            self._queued -= 1
            if job.taken:
                self._forget_if_idle(best, state)
                continue
            job.taken = True
            if job.deadline <= now:
                self.dropped += 1
                self._forget_if_idle(best, state)
                return best, job, False
            state.running += 1
            state.started_sum += now
            return best, job, True

    def _forget_if_idle(self, owner, state: _Owner) -> None:
        if not state.queue and not state.running:
            del self._owners[owner]

    def _work(self) -> None:
        while True:
            with self._cond:
                taken = self._take()
                while taken is None:
                    if self._shutdown:
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                    taken = self._take()
            owner, job, live = taken
            if not live:
                self._call(job.drop)
                continue
            started = self.clock()
            try:
                self._call(job.run, max(job.deadline - started, 0.0))
            finally:
                with self._cond:
                    state = self._owners.get(owner)
                    if state is not None:
                        state.running -= 1
                        state.started_sum -= started
                        state.served += self.clock() - started
                        self._forget_if_idle(owner, state)

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:               # a job reports its own errors to its waiters
            log.exception("dns: a pooled lookup failed")

    def also(self, owner, job: _Job, deadline: float) -> None:
        """Another owner waits for ``job`` too: queue it there as well (if
        there is room) and keep it until the later of the two deadlines."""
        with self._cond:
            if job.taken or self._shutdown:
                return
            job.deadline = max(job.deadline, deadline)
            state = self._owners.get(owner)
            if state is not None and job in state.queue:
                return
            if self._queued >= self.max_queued or \
                    (state is not None and len(state.queue) >= self.max_queued_per_owner):
                return
            if state is None:
                state = self._owners[owner] = self._new_owner()
            state.queue.append(job)
            job.owners.append(owner)
            self._queued += 1
            if self._idle:
                self._cond.notify()

    def claim(self, job: _Job) -> bool:
        """Take ``job`` out of the queues to run it in the calling thread
        (a caller waiting for its own lookup, which no worker has started
        yet, asks it itself rather than wait for a worker); False if it has
        started or been dropped already."""
        with self._cond:
            if job.taken:
                return False
            job.taken = True
            job.owners, owners = [], job.owners
            for owner in owners:
                state = self._owners.get(owner)
                if state is None:
                    continue
                try:
                    state.queue.remove(job)
                    self._queued -= 1
                except ValueError:
                    pass
                self._forget_if_idle(owner, state)
            return True

    def queued(self) -> int:
        with self._cond:
            return self._queued

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        """Stop taking jobs; those still queued are dropped (their waiters
        are answered at once), workers end when idle."""
        with self._cond:
            self._shutdown = True
            pending = []
            for state in self._owners.values():
                pending.extend(job for job in state.queue if not job.taken)
                for job in state.queue:
                    job.taken = True
                state.queue.clear()
            self._queued = 0
            self._cond.notify_all()
        for job in pending:
            self._call(job.drop)
        if wait:
            for thread in list(self._threads):
                thread.join()


_ANYONE = object()      # the owner of lookups asked outside any Lookup session


class Resolver:
    """Cached, parallel lookups over one backend.  Shared by all threads.

    An answer in the cache is given by the calling thread at once; only
    lookups that must go to the network use the thread pool, and a lookup
    already on its way (``prefetch``, or another connection's) is waited
    for, not asked again.
    """

    def __init__(self, options, backend=None, clock: Callable[[], float] = time.monotonic,
                 on_query: Callable[[Answer, float], None] | None = None):
        self.options = options
        self.backend = backend if backend is not None else WireBackend(
            options.nameservers, options.port)
        self.clock = clock
        self.on_query = on_query
        self._cache: OrderedDict = OrderedDict()
        self._inflight: dict = {}         # key -> Future of a lookup under way
        self._jobs: dict = {}             # key -> its pool job, while it is queued or running
        self._lock = threading.Lock()
        self._executor = FairPool(options.workers, options.queue_size,
                                  max(1, options.queue_size // 16), clock=clock)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- cache --------------------------------------------------------------

    def _cached(self, key):
        # no lock to read: one dict lookup is atomic, and this is the path
        # every check of every message takes.  The cache evicts the oldest
        # entry first; entries live no longer than their TTL anyway.
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if expires <= self.clock():
            with self._lock:
                if self._cache.get(key) is entry:
                    del self._cache[key]
            return None
        return answer

    def _store(self, key, answer: Answer) -> None:
        size = self.options.cache_size
        if size <= 0 or answer.temporary:
            return
        if answer.ok:
            ttl = min(answer.ttl, self.options.max_ttl)
        else:
            ttl = min(answer.ttl or self.options.negative_ttl, self.options.negative_ttl)
        if ttl <= 0:
            return
        with self._lock:
            self._cache.pop(key, None)          # a refreshed entry is the newest
            self._cache[key] = (self.clock() + ttl, answer)
            while len(self._cache) > size:
                self._cache.popitem(last=False)

    def expiry(self, name: str, rdtype: str, answer: Answer) -> float:
        """When ``answer`` to name/rdtype leaves the cache (this resolver's clock): 0.0 when
        the cache does not hold that very answer (never cached, evicted,
        replaced), so that nothing derived from it is kept past it."""
        entry = self._cache.get((normalize(name), rdtype.upper()))
        return entry[0] if entry is not None and entry[1] is answer else 0.0

    def expires(self, key) -> float | None:
        """When the cached answer of ``key`` expires (this resolver's
        clock), or None when it is not cached: what a value made from that
        answer may be kept until (the engine's result cache)."""
        entry = self._cache.get(key)
        return None if entry is None else entry[0]

    def missing(self, keys: Iterable[tuple[str, str]]) -> list:
        """The (normalized name, TYPE) keys among ``keys`` not in the cache."""
        return [key for key in keys if _askable(key[0]) and self._cached(key) is None]

    # -- lookups ------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        timeout = self.options.timeout if timeout is None else min(timeout, self.options.timeout)
        return max(timeout, 0.001)

    def _patience(self, timeout: float | None) -> float:
        """How long a caller waits for a lookup started ahead of time: its
        own time limit (a message's time left), not one query's timeout; a
        queued lookup counts its own timeout only once it has started."""
        return max(self.options.timeout if timeout is None else timeout, 0.001)

    def _fetch(self, key, timeout: float) -> Answer:
        """Ask the backend (no cache, no sharing); the answer is cached."""
        name, rdtype = key
        started = time.monotonic()
        answer = self.backend.lookup(name, rdtype, timeout)
        if self.on_query is not None:
            self.on_query(answer, time.monotonic() - started)
        if answer.temporary:
            log.debug("dns %s", answer.describe())
        self._store(key, answer)
        return answer

    def _shared_fetch(self, key, timeout: float, future: concurrent.futures.Future,
                      left: float | None = None) -> None:
        """Run a lookup registered in ``_inflight`` and hand its answer to
        every waiter; cached before it leaves ``_inflight``, so none misses it.
        ``left``: time before the deadline of those waiting for it."""
        if left is not None:
            timeout = max(min(timeout, left), 0.001)
        try:
            answer = self._fetch(key, timeout)
        except BaseException as exc:            # the waiters must not hang
            self._settle(key, future)
            future.set_exception(exc)
            raise
        self._settle(key, future)
        future.set_result(answer)

    def _settle(self, key, future) -> None:
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
                self._jobs.pop(key, None)

    def _dropped(self, key, future: concurrent.futures.Future) -> None:
        """Its deadline passed in the queue: nobody waits for it any more."""
        log.debug("dns %s/%s: dropped, its deadline passed before a worker was free", *key)
        self._settle(key, future)
        if not future.done():
            future.set_result(Answer(key[0], key[1], Status.BUDGET,
                                     detail="deadline passed before the lookup started"))

    def prefetch(self, keys: Iterable[tuple[str, str]], timeout: float | None = None,
                 owner=None) -> dict:
        """Start these lookups in the pool without waiting: key -> Future of
        its answer, for each key not cached (a lookup already under way is
        joined, not asked again).

        ``owner`` (a :class:`Lookup`) is whose share of the pool they use;
        ``timeout`` also bounds how long they may wait in the queue: one
        still queued then is dropped.  A lookup the queue has no room for
        is asked at once, by the calling thread."""
        wait = self._patience(timeout)
        timeout = self._timeout(timeout)
        owner = _ANYONE if owner is None else owner
        deadline = self.clock() + wait
        futures: dict = {}
        for key in keys:
            if key in futures or not _askable(key[0]) or self._cached(key) is not None:
                continue
            future: concurrent.futures.Future = concurrent.futures.Future()
            with self._lock:
                running = self._inflight.get(key)
                if running is None:
                    self._inflight[key] = future
                    job = self._jobs[key] = _Job(
                        lambda left, k=key, f=future: self._shared_fetch(k, timeout, f, left),
                        lambda k=key, f=future: self._dropped(k, f), deadline)
                else:
                    job = self._jobs.get(key)
            if running is not None:
                futures[key] = running
                if job is not None:
                    self._executor.also(owner, job, deadline)
                continue
            try:
                self._executor.submit(owner, job)
            except (PoolFull, RuntimeError):
                # no room in the queue for this owner (or the pool is shut
                # down, a reload): the caller asks it now, in its own time;
                # another caller may have joined it already, and is answered
                if self._executor.claim(job):
                    job.run(max(job.deadline - self.clock(), 0.0))
            futures[key] = future
        return futures

    def _wait(self, key, future: concurrent.futures.Future, timeout: float | None) -> Answer:
        wait = self._patience(timeout)
        with self._lock:
            job = self._jobs.get(key) if self._inflight.get(key) is future else None
        if job is not None and self._executor.claim(job):
            # no worker has taken it yet: this thread, idle until it is
            # answered, asks it itself
            job.run(max(job.deadline - self.clock(), 0.0))
        try:
            return future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            return Answer(key[0], key[1], Status.TIMEOUT, detail=f"no answer within {wait:g}s")

    def query(self, name: str, rdtype: str, timeout: float | None = None,
              owner=None) -> Answer:
        name = normalize(name)
        rdtype = rdtype.upper()
        key = (name, rdtype)
        answer = self._cached(key)
        if answer is not None:
            return answer
        if not _askable(name):
            return Answer(name, rdtype, Status.ERROR, detail="bad name")
        mine: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            pending = self._inflight.get(key)
            job = self._jobs.get(key)
            if pending is None:
                self._inflight[key] = mine      # others asking meanwhile wait for it
        if pending is None:
            self._shared_fetch(key, self._timeout(timeout), mine)
            return mine.result()
        if job is not None:         # still queued, perhaps in another's queue: in ours too
            self._executor.also(_ANYONE if owner is None else owner, job,
                                self.clock() + self._patience(timeout))
        return self._wait(key, pending, timeout)

    def query_many(self, queries: Iterable[tuple[str, str]], timeout: float | None = None,
                   pending: dict | None = None, owner=None) -> list[Answer]:
        """Run several lookups at once; answers in the order asked.

        Cached answers come at once; of the others, all but one start in
        the pool and the calling thread asks the first itself (and any the
        pool had no room for).  ``pending``: key -> Future of lookups this
        caller started before (``prefetch``); ``owner``: see ``prefetch``."""
        return self.query_keys([(normalize(n), t.upper()) for n, t in queries], timeout,
                               pending, owner)

    def query_keys(self, keys: list, timeout: float | None = None,
                   pending: dict | None = None, owner=None) -> list[Answer]:
        """:meth:`query_many` of (normalized name, TYPE) keys."""
        cache = self._cache
        now = self.clock()
        answers = []
        for key in keys:
            entry = cache.get(key)
            answers.append(entry[1] if entry is not None and entry[0] > now else None)
        if None not in answers:
            return answers
        # expired entries are dropped by _cached on the way
        answers = [self._cached(key) for key in keys]
        missed = [i for i, answer in enumerate(answers) if answer is None]
        if not missed:
            return answers
        futures = dict(pending or {})
        ask = list(dict.fromkeys(keys[i] for i in missed if keys[i] not in futures))
        if len(ask) > 1:
            futures.update(self.prefetch(ask[1:], timeout, owner=owner))
        for i in missed:
            key = keys[i]
            future = futures.get(key)
            answers[i] = (self.query(key[0], key[1], timeout, owner) if future is None
                          else self._wait(key, future, timeout))
        return answers

    def session(self, deadline: float | None = None, budget: int | None = None,
                reserve: int | None = None) -> "Lookup":
        """A per-message view with its own lookup budget and time limit.

        ``deadline`` (this resolver's clock) overrides ``[dns]
        message_deadline`` counted from now; ``budget`` ``[dns]
        message_budget``, and then ``reserve`` (none unless given) ``[dns]
        decisive_reserve``."""
        now = self.clock()
        limit = self.options.message_deadline if deadline is None else deadline - now
        if budget is None:
            budget = self.options.message_budget
            if reserve is None:
                reserve = self.options.decisive_reserve
        return Lookup(self, limit, budget, clock=self.clock, reserve=reserve or 0)


class Record:
    """What the lookups of one check's run used (see :meth:`Lookup.record`):
    the keys asked and their answers, in order; ``tainted`` when one was not
    asked at all (a speculative miss, the budget, the deadline): then
    nothing made from them is kept."""

    __slots__ = ("keys", "answers", "tainted")

    def __init__(self):
        self.keys: list = []
        self.answers: list = []
        self.tainted = False

    def expires(self, resolver: "Resolver") -> float | None:
        """Until when every answer used stays in ``resolver``'s cache (its
        clock; inf when none was used), or None when one was temporary or
        is not cached: then nothing made from them may be kept."""
        if self.tainted:
            return None
        for answer in self.answers:
            if answer.temporary:
                return None
        until = float("inf")
        cached = resolver.expires
        for key in set(self.keys):
            when = cached(key)
            if when is None:
                return None
            if when < until:
                until = when
        return until


class Lookup:
    """One message's lookups: bounded in number and in time.

    The time that counts is the milter's own: the engine pauses the session
    between SMTP stages, so a client that takes a minute to send its body
    does not use up the lookups of the end of message.  Running from its
    creation until paused, so that a session used alone is bounded too.

    The budget counts distinct lookups: asking again for a name and type
    this message has already asked for costs nothing.  Its last ``reserve``
    lookups are kept for those marked ``decisive`` (the ones DMARC's
    verdict rests on: the names of the author domain's DNS tree walk, the
    np test, the walks of aligned identifiers, the key of a DKIM signature), so that lookups a sender can
    multiply (SPF includes, URLs, signatures of other domains) cannot use
    them up and turn a DMARC fail into a temperror.

    While ``speculative`` is set (the engine's first, thread-less pass over
    a stage's checks), a lookup whose answer is not cached starts it in the
    background, sets ``missed`` and raises :class:`CacheMiss` instead of
    waiting.
    """

    def __init__(self, resolver: Resolver, limit: float, budget: int,
                 clock: Callable[[], float] = time.monotonic, reserve: int = 0):
        self.resolver = resolver
        self.limit = limit
        self.budget = budget
        self.reserve = max(0, min(reserve, budget))
        self.used = 0
        self.clock = clock
        self.spent = 0.0                  # time of the stages already paused
        self._running_since = clock()     # None while paused
        self._asked: set = set()          # keys already counted against the budget
        self._pending: dict = {}          # key -> Future, started by a speculative miss
        self._lock = threading.Lock()
        self.speculative = False
        self.missed = False
        self._records: dict = {}          # thread id -> Record of the check it runs

    # -- recording, for the engine's result cache -------------------------------

    def record(self) -> Record:
        """Record what this thread asks from now until :meth:`stop_recording`."""
        record = self._records[threading.get_ident()] = Record()
        return record

    def stop_recording(self) -> None:
        self._records.pop(threading.get_ident(), None)

    def charge(self, keys) -> bool:
        """Count ``keys`` against the budget as if they were asked now, all
        or none: False when the deadline has passed or the budget (less the
        reserve) cannot take them all, as asking them would have shown."""
        if not keys:
            return True
        if self.remaining() <= 0:
            return False
        budget = self.budget - self.reserve
        with self._lock:
            fresh = set(keys) - self._asked
            if self.used + len(fresh) > budget:
                return False
            self.used += len(fresh)
            self._asked |= fresh
        return True

    def pause(self) -> None:
        with self._lock:
            if self._running_since is not None:
                self.spent += self.clock() - self._running_since
                self._running_since = None
            # what a stage started ahead and did not use: a later stage
            # joins it by name if it is still under way
            self._pending.clear()

    def resume(self) -> None:
        with self._lock:
            if self._running_since is None:
                self._running_since = self.clock()

    def remaining(self) -> float:
        # no lock: pause and resume run between stages, never while a
        # check of this session asks
        since = self._running_since
        running = 0.0 if since is None else self.clock() - since
        return self.limit - self.spent - running

    def _grant(self, keys: list, take: bool, decisive: bool = False) -> int:
        """How many of ``keys`` (from the first) the budget allows; counted if ``take``."""
        budget = self.budget if decisive else self.budget - self.reserve
        asked = self._asked
        if self.used + len(keys) <= budget and not take:
            return len(keys)                 # room for all, even were none asked before
        with self._lock:
            if take and self.used + len(keys) <= budget:
                fresh = set(keys) - asked    # room for all: count the new ones
                self.used += len(fresh)
                asked |= fresh
                return len(keys)
            used = self.used
            new: set = set()
            granted = 0
            for key in keys:
                if key not in self._asked and key not in new:
                    if used >= budget:
                        break
                    new.add(key)
                    used += 1
                granted += 1
            if take:
                self.used = used
                self._asked |= new
            return granted

    def query(self, name: str, rdtype: str, decisive: bool = False) -> Answer:
        return self.query_many([(name, rdtype)], decisive=decisive)[0]

    def query_many(self, queries: Iterable[tuple[str, str]],
                   decisive: bool = False) -> list[Answer]:
        """Answers in the order asked.  ``decisive``: these lookups decide
        DMARC and may use the budget's reserve (see the class)."""
        keys = [(normalize(n), t.upper()) for n, t in queries]
        left = self.remaining()
        if left <= 0:
            if self._records:
                self._taint()
            return [Answer(n, t, Status.BUDGET, detail="message deadline passed")
                    for n, t in keys]
        if self.speculative:
            allowed = keys[:self._grant(keys, take=False, decisive=decisive)]
            missing = self.resolver.missing(allowed)
            if missing:
                started = self.resolver.prefetch(missing, timeout=left, owner=self)
                with self._lock:
                    self._pending.update(started)
                self.missed = True
                if self._records:
                    self._taint()
                raise CacheMiss(missing[0])
        granted = self._grant(keys, take=True, decisive=decisive)
        if self._pending:
            with self._lock:
                pending = {key: self._pending.pop(key) for key in keys[:granted]
                           if key in self._pending}
        else:
            pending = None
        answers = self.resolver.query_keys(keys if granted == len(keys) else keys[:granted],
                                           timeout=left, pending=pending, owner=self)
        if granted < len(keys):
            answers += [Answer(n, t, Status.BUDGET, detail="lookup budget used up")
                        for n, t in keys[granted:]]
        if self._records:
            record = self._records.get(threading.get_ident())
            if record is not None:
                record.keys += keys
                record.answers += answers
                if granted < len(keys):
                    record.tainted = True
        return answers

    def _taint(self) -> None:
        record = self._records.get(threading.get_ident())
        if record is not None:
            record.tainted = True
