"""The thin pymilter adapter: MTA callbacks -> engine -> milter actions.

One :class:`MailwardenMilter` per SMTP connection (libmilter runs each in its
own thread); it owns that connection's :class:`~mailwarden.model.Connection`
and current :class:`~mailwarden.model.Message` and nothing else.  All
decisions are the engine's.  The adapter negotiates only the actions it uses
(add, insert and change headers, quarantine) and asks for header values with
their leading white space, so DKIM sees the bytes that were sent.

Start-up order (:func:`serve`): config is already loaded and validated; the
engine is built (lists and keys read); the socket is opened and its mode
set; privileges are dropped; then libmilter's main loop runs.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import select
import signal
import threading
import time

import Milter
import milter as libmilter   # pymilter's C module

from . import sockopt
from .config import Config
from .engine import ConnLog, Engine
from .explain import format_line, verdict_fields
from .logsetup import VERDICT_ATTR
from .model import Connection, parse_client_address, strip_brackets

log = logging.getLogger("mailwarden")

USED_ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE

# The macros mailwarden reads, per stage, asked for at negotiation where the
# MTA lets a milter choose (SETSYMLIST, with milter protocol 6), so
# that the AUTH policy and the queue id in the log never depend on the MTA's
# macro settings: Postfix then sends these lists in place of its
# milter_*_macros.  RCPT and end of header are left to the MTA: mailwarden
# reads nothing there (MAIL's values last the whole transaction), and
# Postfix sends a macro packet before every header whatever the list, an
# empty one too (captured).
MACROS = {
    Milter.M_CONNECT: ("j", "{client_addr}"),
    Milter.M_HELO: ("{tls_version}", "{cipher}"),
    Milter.M_ENVFROM: ("i", "{auth_type}", "{auth_authen}", "{tls_version}", "{cipher}"),
    Milter.M_DATA: ("i",),
    Milter.M_EOM: ("i", "{auth_authen}", "{tls_version}", "{cipher}"),
}

_REPLY_UNSAFE = re.compile(r"[^\x20-\x7e]")
# libmilter's smfi_setreply refuses a text over 980 characters (MAXREPLYLEN
# in libmilter/smfi.c); the call then fails and the message is tempfailed.
# The client sees the line "CODE XCODE TEXT", at most 512 octets with its
# CRLF (RFC 5321 4.5.3.1.5).
REPLY_TEXT_MAX = 980
REPLY_LINE_MAX = 512


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 3] + "..."


def reply_text(text: str, xcode: str = "", most: int = REPLY_TEXT_MAX) -> str:
    """A reply text libmilter accepts: printable ASCII (no CR/LF), each
    ``%`` doubled (libmilter ignores a text with a single one), cut between
    characters, never inside a ``%%``, so that the line the client sees
    fits in 512 octets and the text handed to libmilter in ``most``; a cut
    text ends in "...".  The code and enhanced code are not in it: they are
    set apart and kept whole."""
    room = REPLY_LINE_MAX - len("550  \r\n") - len(xcode)
    text = _cut(_REPLY_UNSAFE.sub("?", text), room).replace("%", "%%")
    if len(text) <= most:
        return text
    cut = text[:most - 3]
    # an odd run of % at the end would leave one % alone
    run = len(cut) - len(cut.rstrip("%"))
    if run % 2:
        cut = cut[:-1]
    return cut + "..."


_ACTION_CODES = {
    "reject": Milter.REJECT,
    "tempfail": Milter.TEMPFAIL,
    "discard": Milter.DISCARD,
}


def _macro(ctx_milter, name: str) -> str:
    value = ctx_milter.getsymval(name)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    return value


def _params(values) -> dict:
    out = {}
    for item in values:
        if isinstance(item, bytes):
            item = item.decode("utf-8", "surrogateescape")
        key, _, value = item.partition("=")
        out[key.upper()] = value
    return out


@Milter.header_leading_space
class MailwardenMilter(Milter.Base):
    """One SMTP connection.  ``holder`` (a reload's :class:`~mailwarden.reload.EngineHolder`)
    is told when the connection ends, so a retired engine is closed once
    idle; ``metrics`` (:class:`~mailwarden.metrics.Metrics`) is fed here."""

    tcp_protocol = False        # set for a TCP socket by sockopt.tune_for_tcp

    def __init__(self, engine: Engine, holder=None, metrics=None, drain=None):
        super().__init__()
        self.engine = engine
        self.holder = holder
        self.metrics = metrics
        self.drain = drain          # a Drain: transactions a graceful stop waits for
        self._in_transaction = False
        self.conn: Connection | None = None
        self.msg = None
        self._message_seconds = 0.0
        self._counted = False

    # -- helpers ------------------------------------------------------------

    def _log(self):
        return ConnLog(log, self.conn or Connection(), self.msg)

    def _refresh_macros(self) -> None:
        conn = self.conn
        for attr, name in (("auth_user", "{auth_authen}"), ("auth_type", "{auth_type}"),
                           ("tls_version", "{tls_version}"), ("tls_cipher", "{cipher}")):
            value = _macro(self, name)
            if value:
                setattr(conn, attr, value)
        if not conn.our_hostname:
            conn.our_hostname = _macro(self, "j")
        if self.msg is not None and not self.msg.queue_id:
            self.msg.queue_id = _macro(self, "i")

    def _reply(self, verdict) -> int:
        reply = verdict.reply
        if reply is not None:
            self.setreply(str(reply.code), reply.xcode, reply_text(reply.text, reply.xcode))
        return _ACTION_CODES[verdict.action]

    def _timed(self, stage: str, call, *args):
        """Run one engine stage; its time goes to the metrics."""
        if self.metrics is None:
            return call(*args)
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            spent = time.monotonic() - started
            self.metrics.stage(stage, spent)
            if stage in ("mail", "rcpt", "body", "eom"):
                self._message_seconds += spent

    def _log_verdict(self, verdict) -> None:
        """The one line per verdict (see :mod:`mailwarden.explain`)."""
        fields = verdict_fields(self.conn, self.msg, verdict)
        self._log().info("%s", format_line(fields), extra={VERDICT_ATTR: fields})
        if self.metrics is not None:
            self.metrics.verdict(verdict)

    def _stage_verdict(self, verdict) -> int:
        """A verdict before end of message: only ever a stop, or go on."""
        if verdict is None or verdict.action not in _ACTION_CODES:
            return Milter.CONTINUE
        self._log_verdict(verdict)
        return self._reply(verdict)

    def _end_message(self) -> None:
        if self.msg is not None:
            self.msg.close()
            self.msg = None
        if self._in_transaction:
            self._in_transaction = False
            self.drain.end()

    def _shutting_down(self) -> int:
        self.setreply("451", "4.3.2", "Mail filter shutting down, please try again later")
        return Milter.TEMPFAIL

    # -- callbacks ----------------------------------------------------------

    def negotiate(self, opts):
        status = super().negotiate(opts)
        if status == Milter.CONTINUE:
            used = USED_ACTIONS
            if self._actions & Milter.SETSYMLIST:
                for stage, names in MACROS.items():
                    self._ctx.setsymlist(stage, " ".join(names))
                used |= Milter.SETSYMLIST
            opts[0] = self._actions = self._actions & used
            if self.tcp_protocol:           # over TCP, see mailwarden.sockopt
                opts[1] = self._protocol = self._protocol & ~sockopt.TCP_CLEARED_BITS
        return status

    def connect(self, hostname, family, hostaddr):
        if self.drain is not None and self.drain.draining:
            return self._shutting_down()
        address = None
        if isinstance(hostaddr, tuple) and hostaddr:
            address = hostaddr[0]
        if address is None:
            address = _macro(self, "{client_addr}") or None
        self.conn = Connection(client_ip=parse_client_address(address),
                               client_name=hostname or "unknown")
        if self.metrics is not None and not self._counted:
            self._counted = True
            self.metrics.connections.inc()
            self.metrics.connections_open.inc()
        self._refresh_macros()
        return self._stage_verdict(self._timed("connect", self.engine.connect, self.conn))

    def hello(self, heloname):
        self._refresh_macros()
        return self._stage_verdict(self._timed("helo", self.engine.helo, self.conn,
                                               heloname or ""))

    def envfrom(self, mailfrom, *params):
        self._end_message()
        if self.drain is not None:
            if not self.drain.begin():
                return self._shutting_down()
            self._in_transaction = True
        self._message_seconds = 0.0
        self.msg = self.engine.new_message(self.conn, strip_brackets(mailfrom), _params(params))
        self._refresh_macros()
        return self._stage_verdict(self._timed("mail", self.engine.mail, self.conn, self.msg))

    def envrcpt(self, rcpt, *params):
        self._refresh_macros()
        return self._stage_verdict(self._timed("rcpt", self.engine.rcpt, self.conn, self.msg,
                                               strip_brackets(rcpt)))

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name, value):
        if isinstance(name, bytes):
            name = name.decode("ascii", "surrogateescape")
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        self.msg.add_header(name, value)
        return Milter.CONTINUE

    def body(self, chunk):
        # the queue id (the DATA step's macros, sent even when the step is
        # skipped), so that a stop during the body is logged under it too;
        # no end-of-headers step is negotiated only to read it there
        if self.msg is not None and not self.msg.queue_id:
            self.msg.queue_id = _macro(self, "i")
        return self._stage_verdict(self._timed("body", self.engine.body, self.conn, self.msg,
                                               bytes(chunk)))

    def eom(self):
        self._refresh_macros()
        verdict = self._timed("eom", self.engine.eom, self.conn, self.msg)
        if self.metrics is not None:
            self.metrics.message_seconds.observe(self._message_seconds)
        self._log_verdict(verdict)
        if verdict.action in _ACTION_CODES:
            status = self._reply(verdict)
        else:
            # remove from the last to the first: indexes count occurrences
            for name, _value, index in sorted(verdict.headers_removed, key=lambda h: -h[2]):
                self.chgheader(name, index, "")
            # with leading-space values negotiated the MTA writes "Name:" + value
            # exactly, so the space after the colon is ours to send
            lead = " " if self._protocol & Milter.P_HDR_LEADSPC else ""
            for name, value in reversed(verdict.headers_added):
                if value[:1] not in (" ", "\t"):
                    value = lead + value
                self.addheader(name, value, 0)
            if verdict.action == "quarantine":
                self.quarantine(verdict.quarantine_reason or "mailwarden quarantine")
            status = Milter.ACCEPT
        self._end_message()
        return status

    def abort(self):
        self._end_message()
        return Milter.CONTINUE

    def close(self):
        self._end_message()
        if self.conn is not None:
            closer = getattr(self.engine, "close_connection", None)
            if closer is not None:
                closer(self.conn)
        if self._counted:
            self._counted = False
            self.metrics.connections_open.dec()
        if self.holder is not None:
            holder, self.holder = self.holder, None     # close may come twice: release once
            holder.release(self.engine)
        return Milter.CONTINUE


class Drain:
    """Transactions in flight, so that a stop can let them finish.

    A transaction runs from MAIL FROM to end of message (or abort, or the
    connection's end).  Once :meth:`drain` is called no new one starts.
    """

    def __init__(self):
        self._idle = threading.Condition()
        self.active = 0
        self.draining = False

    def begin(self) -> bool:
        with self._idle:
            if self.draining:
                return False
            self.active += 1
            return True

    def end(self) -> None:
        with self._idle:
            self.active -= 1
            if self.active <= 0:
                self._idle.notify_all()

    def drain(self, timeout: float) -> int:
        """Refuse new transactions, wait up to ``timeout`` s for the others;
        the number still in flight."""
        with self._idle:
            self.draining = True
            self._idle.wait_for(lambda: self.active <= 0, timeout)
            return self.active


class Signals:
    """SIGHUP, SIGTERM and SIGINT as flags the main thread polls.

    A Python signal handler runs in the main thread between two of its
    bytecodes, possibly while that thread holds a lock, so the handlers here
    take none: ``threading.Event.set()`` in a handler deadlocks when the
    signal lands while the main thread is inside that event's ``wait()`` or
    ``clear()`` (a burst of SIGHUPs did that).  Each handler sets a plain
    attribute and writes one byte to a pipe whose other end :meth:`wait`
    selects on, so a signal ends the wait at once.  The pipe stays open for
    the life of the process: a signal may come at any time until it exits.
    """

    def __init__(self):
        self.reload = False
        self.stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._on_hup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)

    def _on_hup(self, signum, frame) -> None:
        self.reload = True
        self._wake()

    def _on_stop(self, signum, frame) -> None:
        self.stop = True
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:         # the pipe is full: a wake-up is pending
            pass

    def wait(self, timeout: float) -> None:
        """Until a signal came (or had come since the last call), at most ``timeout`` s."""
        select.select([self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def take_reload(self) -> bool:
        """Whether a SIGHUP came since the last call.  One landing after this
        returns is seen by the next call; one landing before is folded into
        the reload about to run, which reads the file after it."""
        if not self.reload:
            return False
        self.reload = False
        return True


# --------------------------------------------------------------------------
# start-up


class StartupRefused(SystemExit):
    """Start-up cannot go on safely; the message says why (exit status 1)."""


def _target_ids(options) -> tuple | None:
    """(uid, gid, name) to drop to, or None to keep running as we are.

    Refuses root without an explicit ``allow_root``: a milter parses
    whatever strangers send and must not do it with every privilege.
    """
    if os.getuid() != 0:
        return None
    if not options.user:
        if options.allow_root:
            return None
        raise StartupRefused("mailwarden: started as root with no [milter] user to drop to; "
                             "set user (and group), or allow_root = yes")
    try:
        entry = pwd.getpwnam(options.user)
    except KeyError:
        raise StartupRefused(f"mailwarden: [milter] user: no such user {options.user!r}") from None
    gid = entry.pw_gid
    if options.group:
        try:
            gid = grp.getgrnam(options.group).gr_gid
        except KeyError:
            raise StartupRefused(
                f"mailwarden: [milter] group: no such group {options.group!r}") from None
    if (entry.pw_uid == 0 or gid == 0) and not options.allow_root:
        raise StartupRefused(f"mailwarden: [milter] user {options.user!r} / group is root; "
                             "set allow_root = yes to run so")
    return entry.pw_uid, gid, options.user


def _drop_privileges(target) -> None:
    if target is None:
        return
    uid, gid, name = target
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    if uid != 0:
        # setuid() from root sets all three ids; make sure none came back
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise StartupRefused("mailwarden: could not give up root")
    os.umask(0o077)          # spooled bodies are nobody else's business
    log.info("running as user %s (uid %d), group %d", name, uid, gid)


def _prepare_unix_socket(options, path: str) -> None:
    mode = int(options.socket_mode, 8)
    os.chmod(path, mode)
    if options.group and os.getuid() == 0:
        os.chown(path, -1, grp.getgrnam(options.group).gr_gid)


def serve(config: Config, config_path: str = "", log_setup=None) -> int:
    """Run the milter until libmilter stops (SIGTERM, SIGINT); SIGHUP reloads
    ``config_path`` (see :mod:`mailwarden.reload`).  ``log_setup(options)``
    applies changed log settings on a reload."""
    from .reload import EngineHolder, Reloader, build_engine

    target = _target_ids(config.milter)      # refuse before anything is opened
    metrics = None
    if config.metrics.listen:
        from .metrics import Metrics
        metrics = Metrics()
    holder = EngineHolder(build_engine(config, metrics))
    engine = holder.current

    drain = Drain()

    def factory():
        return MailwardenMilter(holder.acquire(), holder=holder, metrics=metrics, drain=drain)
    Milter.factory = factory
    libmilter.set_flags(USED_ACTIONS)
    libmilter.set_exception_policy(Milter.TEMPFAIL)

    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)

    socket_spec = config.milter.socket
    libmilter.setconn(socket_spec)
    libmilter.settimeout(int(config.milter.timeout))
    libmilter.register(config.milter.name,
                       data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                       negotiate=Milter.negotiate_callback)
    libmilter.opensocket(True)
    sockopt.tune_for_tcp(socket_spec, MailwardenMilter)
    if socket_spec.startswith("unix:"):
        _prepare_unix_socket(config.milter, socket_spec[len("unix:"):])
    _drop_privileges(target)

    # libmilter's own signal thread would stop at once on SIGHUP, SIGTERM
    # and SIGINT, cutting the transactions in flight; all three stay with
    # this thread instead (see mailwarden.reload for why that works): HUP
    # reloads, TERM and INT drain the transactions in flight, then stop
    signals = Signals()
    signals.install()
    reloader = Reloader(config_path or config.path, holder, metrics, log_setup)
    server = None
    if metrics is not None:
        server = metrics.serve(config.metrics.listen)
        log.info("metrics on http://%s/metrics", config.metrics.listen)

    stopped = threading.Event()
    failure: list = []

    def run_libmilter() -> None:
        try:
            libmilter.main()
        except libmilter.error as exc:
            failure.append(exc)
        finally:
            stopped.set()

    log.info("mailwarden listening on %s (%d checks: %s)", socket_spec, len(engine.checks),
             ", ".join(c.name for c in engine.checks))
    thread = threading.Thread(target=run_libmilter, name="libmilter")
    thread.start()
    try:
        while not stopped.is_set():
            if signals.stop:
                log.info("stopping: no new transactions, waiting up to %gs for %d in flight",
                         config.milter.stop_timeout, drain.active)
                left = drain.drain(config.milter.stop_timeout)
                if left:
                    log.warning("stopping with %d transactions still in flight (the MTA "
                                "answers them per milter_default_action)", left)
                libmilter.stop()
                break
            # the handlers set the flags and end the wait; the bound on it
            # notices libmilter stopping on its own
            signals.wait(0.5)
            if signals.take_reload():
                reloader.reload()
        thread.join()
    finally:
        if server is not None:
            server.shutdown()
        holder.close()
        log.info("mailwarden stopped")
    if failure:
        log.error("libmilter stopped with an error: %s", failure[0])
        return 1
    return 0
