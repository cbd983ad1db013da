"""dnsbl: DNS block lists (RFC 5782) for the client address and for names.

Each list is a ``[check.dnsbl.NAME]`` section; an admin adds one without
code.  An IP list is asked for the client address (IPv4 as reversed
octets, IPv6 as reversed nibbles, under the list's zone); a domain list for
the HELO name, the envelope sender's domain and the client's verified PTR
name (each name as given, and its registered domain when that differs, by
the Public Suffix List with its private domains, as the URL lists read it).
Every list of a stage is queried at once, in parallel, so a stage takes
about one round trip whatever the number of lists, bounded by ``[dns]``
``timeout`` and the connection's or message's DNS deadline.

An A answer is read by :mod:`mailwarden.dnslist` (as the uribl check
reads its lists) through the list's ``codes``; each code found gives
its symbol (``PREFIX_SUFFIX``).  A code in 127.0.0.0/8 that ``codes`` does
not name is ``PREFIX_LISTED``.  An answer outside 127.0.0.0/8, or one of
the list's ``errors`` (Spamhaus's 127.255.255.x "query refused", DBL's
127.0.1.255 "IP queried"), is never a listing: ``PREFIX_BLOCKED`` and a
log line, since the list will not answer this resolver.  SERVFAIL or a
timeout is ``PREFIX_FAIL`` (a temperror that by default does not hold mail
back).  NXDOMAIN and NODATA mean not listed.

A list whose ``reject`` names a symbol found refuses the client at that
stage with ``554 5.7.1``, the list's TXT record (asked together with the A
record) in the text.

When: with ``lookup_at = early`` IP lists are asked at connect, the HELO
name and PTR name at HELO (at MAIL FROM when there was none), the sender's
domain at MAIL FROM.  SMTP AUTH happens after HELO, so an early lookup
cannot know that the client will authenticate; with ``lookup_at = mail``
everything is asked at MAIL FROM, where authenticated clients are known
and skipped (on a port that also takes submissions).  Allow-listed clients
are always skipped.

The PTR name is the name iprev confirmed, when iprev ran; otherwise the
name the MTA passed (Postfix passes only forward-confirmed names).

INI keys (``[check.dnsbl]``):
  enabled            yes
  tempfail_on_error  no     a failing list does not hold mail back
  lookup_at          early  early or mail (see above)

INI keys of each list (``[check.dnsbl.NAME]``):
  enabled    yes
  zone       (required) e.g. zen.spamhaus.org
  kind       ip         ip or domain
  prefix     NAME in upper case: the start of this list's symbols
  codes      (empty)    ADDRESS[-ADDRESS]|CIDR:SUFFIX ..., e.g. 127.0.0.2:SBL 127.0.0.4-127.0.0.7:XBL
  score      3          default weight of the listing symbols ([scores] overrides each)
  errors     127.255.255.0/24   codes that mean "query refused", never a listing
  reject     no         no, yes (any listing) or symbols, e.g. ZEN_SBL ZEN_XBL
  ipv6       yes        ask an IP list about IPv6 clients
  targets    helo sender ptr    which names a domain list is asked about
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..options import opt, parse_bool, parse_choice
from ..dns import normalize, reverse_name
from ..dnslist import BLOCKED, DnsList, DnsblSection, log_blocked, read
from ..model import Action, Reply, Stage, Trust
from . import Check, CheckOptions
from ..orgdomain import is_domain, registered_domain

log = logging.getLogger("mailwarden")


@dataclass(frozen=True)
class DnsblOptions(CheckOptions):
    tempfail_on_error: bool = opt(False, parse_bool)
    lookup_at: str = opt("early", parse_choice("early", "mail"))

    def resolve(self, error):
        seen = {}
        for name, item in self.subsections.items():
            prefix = item.symbol_prefix
            if prefix in seen:
                raise error(None, f"lists {seen[prefix]} and {name} both make "
                            f"symbols {prefix}_*: give one a prefix")
            seen[prefix] = name
        return self


@dataclass(frozen=True)
class _Ask:
    """One thing to look up in one list."""

    section: DnsblSection
    dnslist: DnsList
    subject: str        # what is asked about: "client [1.2.3.4]", "HELO name x.example"
    query: str          # the DNS name


class DnsblCheck(Check):
    name = "dnsbl"
    replayable = True              # pure but for its lookups (see checks/__init__)
    Options = DnsblOptions
    Item = DnsblSection
    requires = ("iplist",)
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.AUTHENTICATED})

    @classmethod
    def symbols_for(cls, options) -> dict:
        symbols = cls.all_symbols()
        for item in options.subsections.values():
            symbols.update(item.dnslist.symbols())
        return symbols

    def __init__(self, options, services):
        super().__init__(options, services)
        lists = tuple((item, item.dnslist) for item in options.subsections.values()
                      if item.enabled)
        self.ip_lists = tuple(x for x in lists if x[0].kind == "ip")
        self.domain_lists = tuple(x for x in lists if x[0].kind == "domain")

    # -- stages -------------------------------------------------------------

    def runs_at(self, stage) -> bool:
        # with lookup_at = mail, connect and HELO have nothing to ask
        return stage is Stage.MAIL or self.options.lookup_at == "early"

    def cache_key(self, ctx):
        """What a stage's asks are made of (the result follows from them
        and DNS alone): see checks/__init__."""
        conn = ctx.conn
        stage = ctx.stage
        if stage is Stage.CONNECT:
            return conn.client_ip
        if stage is Stage.HELO:
            return (conn.helo, _verified_ptr(ctx))
        sender = ctx.msg.mail_from if ctx.msg is not None else ""
        domain = sender.rpartition("@")[2] if "@" in sender else ""
        if self.options.lookup_at == "early":      # the sender, and the PTR name without HELO
            return ("" if conn.helo else _verified_ptr(ctx), bool(conn.helo), domain)
        return (conn.client_ip, conn.helo, _verified_ptr(ctx), domain)

    def cacheable(self, results) -> bool:
        # a refused query is logged each time it is met: not kept
        return all(r.result != BLOCKED for r in results)

    def on_connect(self, ctx):
        if self.options.lookup_at == "early":
            return self._run(ctx, self._ip_asks(ctx))
        return None

    def on_helo(self, ctx):
        if self.options.lookup_at == "early":
            return self._run(ctx, self._name_asks(ctx, ("helo", "ptr")))
        return None

    def on_mail(self, ctx):
        asks = self._name_asks(ctx, ("sender",))
        if self.options.lookup_at == "mail":
            asks = self._ip_asks(ctx) + self._name_asks(ctx, ("helo", "ptr")) + asks
        elif not ctx.conn.helo:
            asks = self._name_asks(ctx, ("ptr",)) + asks      # no HELO stage ran
        return self._run(ctx, asks)

    # -- what to ask --------------------------------------------------------

    def _ip_asks(self, ctx) -> list:
        ip = ctx.conn.client_ip
        if ip is None:
            return []
        reverse = reverse_name(ip)
        return [_Ask(item, dl, f"client [{ip}]", f"{reverse}.{dl.zone}")
                for item, dl in self.ip_lists if ip.version == 4 or item.ipv6]

    def _names(self, ctx, target: str) -> list:
        if target == "helo":
            name = normalize(ctx.conn.helo)
            return [("HELO name", name)] if is_domain(name) else []
        if target == "sender":
            sender = ctx.msg.mail_from if ctx.msg is not None else ""
            domain = normalize(sender.rpartition("@")[2]) if "@" in sender else ""
            return [("sender domain", domain)] if is_domain(domain) else []
        name = _verified_ptr(ctx)
        return [("client name", name)] if name and is_domain(name) else []

    def _name_asks(self, ctx, targets) -> list:
        asks = []
        seen = set()
        for target in targets:
            for label, name in self._names(ctx, target):
                queries = [name]
                registered = registered_domain(name)
                if registered and registered != name:
                    queries.append(registered)
                for item, dl in self.domain_lists:
                    if target not in item.targets:
                        continue
                    for q in queries:
                        if (dl.name, q) not in seen:
                            seen.add((dl.name, q))
                            asks.append(_Ask(item, dl, f"{label} {q}", f"{q}.{dl.zone}"))
        return asks

    # -- asking and reading -------------------------------------------------

    def _run(self, ctx, asks: list):
        if not asks:
            return None
        queries = []
        for ask in asks:
            queries.append((ask.query, "A"))
            if ask.dnslist.reject:
                queries.append((ask.query, "TXT"))    # same round trip, for the reply text
        answers = iter(ctx.dns.query_many(queries))
        out = []
        for ask in asks:
            a = next(answers)
            txt = next(answers) if ask.dnslist.reject else None
            out.extend(self._report(ctx, ask, a, txt))
        return out

    def _report(self, ctx, ask: _Ask, a, txt) -> list:
        dl = ask.dnslist
        reading = read(dl, a)
        problem = reading.problem
        if problem is not None:
            result, which, text = problem
            if which == "blocked":
                log_blocked(ctx.log, self.name, dl, ask.subject, text)
                return [self.result(result, dl.blocked_symbol,
                                    f"{dl.zone}: {ask.subject}: {text}: an error, "
                                    "not a listing")]
            return [self.result(result, dl.fail_symbol, f"{dl.zone}: {ask.subject}: {text}")]
        reason_text = ""
        if txt is not None and txt.ok and txt.records:
            reason_text = " ".join(str(r) for r in txt.records)
        out = []
        for symbol, found in reading.listed.items():
            reply = None
            if dl.rejects(symbol):
                reply = Reply(Action.REJECT, 554, "5.7.1", _reply_text(ask, reason_text))
            out.append(self.result("fail", symbol,
                                   f"{ask.subject} listed in {dl.zone} ({', '.join(found)})",
                                   reply=reply))
        return out


def _reply_text(ask: _Ask, reason: str) -> str:
    text = f"Service unavailable; {ask.subject} blocked using {ask.dnslist.zone}"
    if reason:
        reason = "".join(ch if 0x20 <= ord(ch) < 0x7f else " " for ch in reason).strip()
        if len(reason) > 200:
            reason = reason[:200] + "..."
        text += f"; {reason}"
    return text


def _verified_ptr(ctx) -> str:
    iprev = ctx.results_of("iprev")
    if iprev:
        for r in iprev:
            if r.verified_name:
                return normalize(r.verified_name)
        return ""
    name = ctx.conn.client_name
    if not name or name.lower() == "unknown" or name.startswith("["):
        return ""
    return normalize(name)


CHECKS = (DnsblCheck,)
