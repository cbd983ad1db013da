"""The thin pymilter adapter: MTA callbacks -> engine -> milter actions.

One :class:`MailwardenMilter` per SMTP connection (libmilter runs each in its
own thread); it owns that connection's :class:`~mailwarden.model.Connection`
and current :class:`~mailwarden.model.Message` and nothing else.  All
decisions are the engine's.  The adapter negotiates only the actions it uses
(add, insert and change headers, quarantine) and asks for header values with
their leading white space, so DKIM sees the bytes that were sent.

The process around it (start-up, the socket, the privilege drop, signals,
the drain on stop) is :mod:`mailwarden.daemon`'s.
"""

from __future__ import annotations

import logging
import re
import time

import Milter
import milter as libmilter   # pymilter's C module

from . import sockopt
from .engine import ConnLog, Engine
from .explain import format_line, verdict_fields
from .logsetup import VERDICT_ATTR
from .model import Action, Connection, Stage, parse_client_address, strip_brackets

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


# the stages whose time is the message's (metrics' message_seconds)
_MESSAGE_STAGES = (Stage.MAIL, Stage.RCPT, Stage.BODY, Stage.EOM)

_ACTION_CODES = {
    Action.REJECT: Milter.REJECT,
    Action.TEMPFAIL: Milter.TEMPFAIL,
    Action.DISCARD: Milter.DISCARD,
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
        self.drain = drain          # a daemon.Drain: transactions a graceful stop waits for
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

    def _timed(self, stage: Stage, call, *args):
        """Run one engine stage; its time goes to the metrics, and from MAIL
        FROM on to the message's time too."""
        if self.metrics is None:
            return call(*args)
        started = time.monotonic()
        try:
            return call(*args)
        finally:
            spent = time.monotonic() - started
            self.metrics.stage(stage.name.lower(), spent)
            if stage in _MESSAGE_STAGES:
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
        return self._stage_verdict(self._timed(Stage.CONNECT, self.engine.connect, self.conn))

    def hello(self, heloname):
        self._refresh_macros()
        return self._stage_verdict(self._timed(Stage.HELO, self.engine.helo, self.conn,
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
        return self._stage_verdict(self._timed(Stage.MAIL, self.engine.mail, self.conn, self.msg))

    def envrcpt(self, rcpt, *params):
        self._refresh_macros()
        return self._stage_verdict(self._timed(Stage.RCPT, self.engine.rcpt, self.conn, self.msg,
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
        return self._stage_verdict(self._timed(Stage.BODY, self.engine.body, self.conn, self.msg,
                                               bytes(chunk)))

    def eom(self):
        self._refresh_macros()
        verdict = self._timed(Stage.EOM, self.engine.eom, self.conn, self.msg)
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
            if verdict.action == Action.QUARANTINE:
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


def install(name: str, factory) -> None:
    """Hand libmilter the callbacks: each connection gets ``factory()``, a
    :class:`MailwardenMilter`; only the actions in :data:`USED_ACTIONS` are
    asked for, and a callback that raises tempfails the message.  Called
    once, before libmilter opens its socket (see :mod:`mailwarden.daemon`)."""
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
    libmilter.register(name,
                       data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                       negotiate=Milter.negotiate_callback)
