"""limits: connection, message and recipient limits per client, sender and user.

Counted in the state store (``[state]``: this process's memory, or Redis
shared by several instances).  A limit of 0 is off.  Rates are written
``COUNT/WINDOW``, e.g. ``100/1h``; a window is sliding (see
:mod:`mailwarden.state`).  Only what is admitted is counted: a client that
is refused does not push its own window further out.

* per client network (the client address, or its ``ipv6_prefix`` for IPv6):
  concurrent connections, and new connections per window.  Over either:
  ``421 4.7.0`` at connect, and the MTA closes the connection.
* per envelope sender (not the null sender) and per authenticated user:
  messages per window (counted at MAIL FROM, ``451 4.7.1``) and recipients
  per window (counted at each RCPT TO, ``451 4.7.1`` for that recipient).
  Anyone can write any MAIL FROM, so a sender is counted by what was
  verified of it, never by the bare address (else mail forged from many
  networks in a victim's name would lock the victim out):

  - an authenticated client: per login and sender (``<sender> user LOGIN``);
  - a sender for which SPF passed (the ``smtp.mailfrom`` identity): the
    sender alone, whatever the client (its domain vouches for it);
  - any other: per client network (``ipv4_prefix``/``ipv6_prefix``) and
    sender (``<sender> from NETWORK``): a forger fills only its own
    network's count.  A client with no address counts as network
    ``unknown``.

  The per-user limits count the authenticated login alone.
* recipients per message: ``452 4.5.3`` for the recipients past the limit,
  the reply RFC 5321 section 4.5.3.1.10 gives for it (the client sends the
  rest in another transaction).

Each limit has its symbol and a log line naming the limit, the key and the
counts.  When the store fails (Redis down), the limits let mail through:
``LIMITS_TEMPERROR`` (never a tempfail) and a log line.  Concurrency slots
are given back when the connection closes, and in any case when their
``lease`` runs out (an instance that died holding them).

INI keys (``[check.limits]``):
  enabled                 yes
  tempfail_on_error       yes    (a crash only: a failed store always fails open)
  ipv4_prefix             32     client networks counted together
  ipv6_prefix             64
  concurrent_per_ip       0      open connections per client network
  connections_per_ip      0      new connections per client network, COUNT/WINDOW
  messages_per_sender     0      COUNT/WINDOW per envelope sender (keyed as above)
  recipients_per_sender   0
  messages_per_user       0      COUNT/WINDOW per authenticated user
  recipients_per_user     0
  recipients_per_message  0
  lease                   1h     longest time a connection holds its slot
  exempt                  allowlisted trusted   clients with these tags are not limited
"""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Optional

from ..options import ValueProblem, opt, parse_int, parse_seconds
from ..explain import clean
from ..model import Action, Reply, Trust
from ..state import StateError
from . import Check, CheckOptions, parse_client_tags

log = logging.getLogger("mailwarden")


@dataclass(frozen=True)
class Rate:
    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}s"


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\S+)\s*$")


def parse_rate(text: str) -> Optional[Rate]:
    """``COUNT/WINDOW`` (``30/1m``); ``0`` or nothing is off (None)."""
    if text.strip() in ("", "0"):
        return None
    m = _RATE.match(text)
    if not m:
        raise ValueProblem(f"expected COUNT/WINDOW such as 30/1m, or 0, got {text!r}")
    count, window = int(m.group(1)), parse_seconds(m.group(2))
    if count == 0:
        return None
    if window <= 0:
        raise ValueProblem(f"the window must be longer than 0, got {text!r}")
    return Rate(count, window)


@dataclass(frozen=True)
class LimitsOptions(CheckOptions):
    ipv4_prefix: int = opt(32, parse_int(8, 32))
    ipv6_prefix: int = opt(64, parse_int(16, 128))
    concurrent_per_ip: int = opt(0, parse_int(0, 1_000_000))
    connections_per_ip: Optional[Rate] = opt(None, parse_rate)
    messages_per_sender: Optional[Rate] = opt(None, parse_rate)
    recipients_per_sender: Optional[Rate] = opt(None, parse_rate)
    messages_per_user: Optional[Rate] = opt(None, parse_rate)
    recipients_per_user: Optional[Rate] = opt(None, parse_rate)
    recipients_per_message: int = opt(0, parse_int(0, 1_000_000))
    lease: float = opt(3600.0, parse_seconds)
    exempt: frozenset = opt(frozenset({Trust.ALLOWLISTED, Trust.TRUSTED}), parse_client_tags)


def sender_key(sender: str, *, user: str = "", spf_pass: bool = False,
               network: str = "") -> tuple:
    """(store key part, log label) of the counter of ``sender`` (lower case).

    The kinds live in disjoint key spaces (``auth:``, ``spf:``, ``net:``),
    and the variable parts are length-prefixed, so no sender text can name
    another kind's counter or another network's.
    """
    if user:
        return f"auth:{len(user)}:{user}:{sender}", f"<{sender}> user {user}"
    if spf_pass:
        return f"spf:{sender}", f"<{sender}>"
    network = network or "unknown"
    return f"net:{len(network)}:{network}:{sender}", f"<{sender}> from {network}"


class LimitsCheck(Check):
    name = "limits"
    Options = LimitsOptions
    # iplist: its allowlisted tag exempts; spf: a sender it passed is counted alone
    requires = ("iplist", "spf")
    symbols = {
        "LIMIT_CONCURRENT_IP": 0.0,
        "LIMIT_CONNECTIONS_IP": 0.0,
        "LIMIT_MESSAGES_SENDER": 0.0,
        "LIMIT_RECIPIENTS_SENDER": 0.0,
        "LIMIT_MESSAGES_USER": 0.0,
        "LIMIT_RECIPIENTS_USER": 0.0,
        "LIMIT_RECIPIENTS_MESSAGE": 0.0,
        "LIMITS_TEMPERROR": 0.0,
    }

    def __init__(self, options, services):
        super().__init__(options, services)
        # tells this instance's connections apart from other instances' in a shared store
        self.instance = uuid.uuid4().hex[:12]

    @property
    def store(self):
        return self.services.state

    def _network(self, ip) -> str:
        prefix = self.options.ipv4_prefix if ip.version == 4 else self.options.ipv6_prefix
        if prefix == ip.max_prefixlen:
            return f"{ip}/{prefix}"          # what ip_network would write, without parsing
        # from the address's integer: no text to parse again
        kind = ipaddress.IPv4Network if ip.version == 4 else ipaddress.IPv6Network
        return str(kind((int(ip), prefix), strict=False))

    def _token(self, conn) -> str:
        return f"{self.instance}:{conn.id}"

    def _sender_key(self, ctx, sender: str) -> tuple:
        """See :func:`sender_key`: what was verified of this sender."""
        conn = ctx.conn
        if conn.authenticated:
            return sender_key(sender, user=conn.auth_user)
        spf_pass = any(r.result == "pass" and r.mailfrom and r.mailfrom.lower() == sender
                       for r in ctx.results_of("spf"))
        if spf_pass:
            return sender_key(sender, spf_pass=True)
        network = self._network(conn.client_ip) if conn.client_ip is not None else ""
        return sender_key(sender, network=network)

    def _exempt(self, ctx) -> bool:
        return bool(self.options.exempt & ctx.tags)

    def _failed(self, ctx, exc: StateError):
        ctx.log.warning("limits: state store failed, not limiting: %s", clean(exc))
        return self.result("temperror", "LIMITS_TEMPERROR", f"state store: {exc}",
                           tempfail=False)

    def _over(self, ctx, symbol: str, limit: str, key: str, count, reply: Reply):
        ctx.log.warning("limits: %s exceeded for %s: %d of %s, refused with %s",
                        limit, clean(key), count.count, _limit_text(count, self.options, limit),
                        clean(reply.line()))
        return self.result("fail", symbol,
                           f"{limit} {key}: {count.count} of {count.limit}", reply=reply)

    # -- stages -------------------------------------------------------------

    def on_connect(self, ctx):
        ip = ctx.conn.client_ip
        o = self.options
        if ip is None or self._exempt(ctx) or not (o.concurrent_per_ip or o.connections_per_ip):
            return None
        net = self._network(ip)
        now = ctx.now()
        try:
            if o.concurrent_per_ip:
                held = self.store.acquire(f"conc:{net}", self._token(ctx.conn),
                                          o.concurrent_per_ip, o.lease, now)
                if not held.allowed:
                    return self._over(ctx, "LIMIT_CONCURRENT_IP", "concurrent_per_ip", net, held,
                                      Reply(Action.TEMPFAIL, 421, "4.7.0",
                                            "Too many concurrent connections from your "
                                            "network, try again later"))
            if o.connections_per_ip:
                rate = o.connections_per_ip
                taken = self.store.take(f"conn:{net}", 1, rate.count, rate.window, now)
                if not taken.allowed:
                    return self._over(ctx, "LIMIT_CONNECTIONS_IP", "connections_per_ip", net,
                                      taken, Reply(Action.TEMPFAIL, 421, "4.7.0",
                                                   "Too many connections from your network, "
                                                   "try again later"))
        except StateError as exc:
            return self._failed(ctx, exc)
        return None

    def on_mail(self, ctx):
        if self._exempt(ctx):
            return None
        o = self.options
        sender = ctx.msg.mail_from.lower()
        user = ctx.conn.auth_user
        now = ctx.now()
        try:
            if o.messages_per_sender and sender:
                key, label = self._sender_key(ctx, sender)
                found = self._rate(ctx, "LIMIT_MESSAGES_SENDER", "messages_per_sender",
                                   f"msg:sender:{key}", label, o.messages_per_sender,
                                   now, "Too many messages from this sender")
                if found is not None:
                    return found
            if o.messages_per_user and user:
                found = self._rate(ctx, "LIMIT_MESSAGES_USER", "messages_per_user",
                                   f"msg:user:{user}", f"user {user}", o.messages_per_user,
                                   now, "Too many messages from this user")
                if found is not None:
                    return found
        except StateError as exc:
            return self._failed(ctx, exc)
        return None

    def on_rcpt(self, ctx):
        if self._exempt(ctx):
            return None
        o = self.options
        if o.recipients_per_message and len(ctx.msg.rcpts) >= o.recipients_per_message:
            reply = Reply(Action.TEMPFAIL, 452, "4.5.3", "Too many recipients in this message")
            ctx.log.warning("limits: recipients_per_message exceeded: recipient %d of at most "
                            "%d, refused with %s", len(ctx.msg.rcpts) + 1,
                            o.recipients_per_message, reply.line())
            return self.result("fail", "LIMIT_RECIPIENTS_MESSAGE",
                               f"recipient {len(ctx.msg.rcpts) + 1} of at most "
                               f"{o.recipients_per_message}", reply=reply)
        sender = ctx.msg.mail_from.lower()
        user = ctx.conn.auth_user
        now = ctx.now()
        try:
            if o.recipients_per_sender and sender:
                key, label = self._sender_key(ctx, sender)
                found = self._rate(ctx, "LIMIT_RECIPIENTS_SENDER", "recipients_per_sender",
                                   f"rcpt:sender:{key}", label,
                                   o.recipients_per_sender, now,
                                   "Too many recipients from this sender")
                if found is not None:
                    return found
            if o.recipients_per_user and user:
                found = self._rate(ctx, "LIMIT_RECIPIENTS_USER", "recipients_per_user",
                                   f"rcpt:user:{user}", f"user {user}", o.recipients_per_user,
                                   now, "Too many recipients from this user")
                if found is not None:
                    return found
        except StateError as exc:
            return self._failed(ctx, exc)
        return None

    def on_close(self, conn) -> None:
        if not self.options.concurrent_per_ip or conn.client_ip is None:
            return
        try:
            self.store.release(f"conc:{self._network(conn.client_ip)}", self._token(conn))
        except StateError as exc:
            # the lease frees the slot in the end
            log.warning("conn#%d: limits: could not give back the connection slot: %s",
                        conn.id, clean(exc))

    def _rate(self, ctx, symbol, limit, key, label, rate: Rate, now, text):
        taken = self.store.take(key, 1, rate.count, rate.window, now)
        if taken.allowed:
            return None
        return self._over(ctx, symbol, limit, label, taken,
                          Reply(Action.TEMPFAIL, 451, "4.7.1", f"{text}, try again later"))


def _limit_text(count, options, limit: str) -> str:
    rate = getattr(options, limit, None)
    if isinstance(rate, Rate):
        return f"{count.limit} per {rate.window:g}s"
    return str(count.limit)


CHECKS = (LimitsCheck,)
