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

An A answer is read through the list's ``codes``; each code found gives
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

import ipaddress
import logging
import re
from dataclasses import dataclass

from ..options import Networks, ValueProblem, opt, parse_bool, parse_choice, parse_float, \
    parse_list, parse_networks, parse_str
from ..dns import normalize, reverse_name
from ..model import Reply
from . import Check, CheckOptions
from ..urls import registered_domain
from .helo import is_domain

log = logging.getLogger("mailwarden")

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
TARGETS = ("helo", "sender", "ptr")
_SUFFIX = re.compile(r"^[A-Z0-9_]+$")


@dataclass(frozen=True)
class Code:
    low: int
    high: int
    suffix: str

    def __contains__(self, address: ipaddress.IPv4Address) -> bool:
        return self.low <= int(address) <= self.high


def _v4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ValueProblem(f"not an IPv4 address: {text!r}") from None


def parse_codes(text: str) -> tuple:
    codes = []
    for item in parse_list(text):
        where, sep, suffix = item.rpartition(":")
        suffix = suffix.upper()
        if not sep or not _SUFFIX.match(suffix):
            raise ValueProblem(f"expected ADDRESS[-ADDRESS]:SUFFIX, got {item!r}")
        if "/" in where:
            try:
                net = ipaddress.IPv4Network(where, strict=False)
            except ValueError:
                raise ValueProblem(f"not an IPv4 network: {where!r}") from None
            low, high = net.network_address, net.broadcast_address
        else:
            first, _, last = where.partition("-")
            low = _v4(first)
            high = _v4(last) if last else low
        if int(high) < int(low):
            raise ValueProblem(f"range runs backwards: {where!r}")
        codes.append(Code(int(low), int(high), suffix))
    return tuple(codes)


def parse_reject(text: str) -> tuple:
    """() for no, ("*",) for yes, else the symbols named."""
    items = parse_list(text)
    if not items or (len(items) == 1 and items[0].lower() in ("no", "false", "off", "0")):
        return ()
    if len(items) == 1 and items[0].lower() in ("yes", "true", "on", "1", "all"):
        return ("*",)
    return tuple(s.upper() for s in items)


def parse_targets(text: str) -> frozenset:
    targets = frozenset(t.lower() for t in parse_list(text))
    unknown = targets - set(TARGETS)
    if unknown:
        raise ValueProblem(f"unknown target(s) {', '.join(sorted(unknown))} "
                           f"(known: {', '.join(TARGETS)})")
    return targets


def parse_zone(text: str) -> str:
    zone = normalize(text)
    if zone and not is_domain(zone):
        raise ValueProblem(f"not a DNS zone name: {text!r}")
    return zone


@dataclass(frozen=True)
class ListOptions:
    """One ``[check.dnsbl.NAME]`` section."""

    name: str = ""                 # the section's NAME, filled by the loader
    enabled: bool = opt(True, parse_bool)
    zone: str = opt("", parse_zone)
    kind: str = opt("ip", parse_choice("ip", "domain"))
    prefix: str = opt("", parse_str)
    codes: tuple = opt((), parse_codes)
    score: float = opt(3.0, parse_float())
    errors: Networks = opt(parse_networks("127.255.255.0/24"), parse_networks)
    reject: tuple = opt((), parse_reject)
    ipv6: bool = opt(True, parse_bool)
    targets: frozenset = opt(frozenset(TARGETS), parse_targets)

    def resolve(self, error):
        if not self.zone:
            raise error("zone", "missing: the list's DNS zone, e.g. zen.spamhaus.org")
        if self.prefix and not _SUFFIX.match(self.prefix):
            raise error("prefix", f"symbol prefix must be A-Z, 0-9 and _, got {self.prefix!r}")
        prefix = self.prefix or _prefix_of(self.name)
        known = {f"{prefix}_{c.suffix}" for c in self.codes} | {f"{prefix}_LISTED"}
        for symbol in self.reject:
            if symbol != "*" and symbol not in known:
                raise error("reject", f"{symbol} is not a listing symbol of this list "
                            f"(known: {', '.join(sorted(known))})")
        return self


def list_symbols(name: str, item: ListOptions) -> dict:
    """This list's symbols -> default weight."""
    prefix = item.prefix or _prefix_of(name)
    symbols = {f"{prefix}_{c.suffix}": item.score for c in item.codes}
    symbols[f"{prefix}_LISTED"] = item.score
    symbols[f"{prefix}_BLOCKED"] = 0.0
    symbols[f"{prefix}_FAIL"] = 0.0
    return symbols


def _prefix_of(name: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", name.upper())


@dataclass(frozen=True)
class DnsblOptions(CheckOptions):
    tempfail_on_error: bool = opt(False, parse_bool)
    lookup_at: str = opt("early", parse_choice("early", "mail"))

    def resolve(self, error):
        seen = {}
        for name, item in self.subsections.items():
            prefix = item.prefix or _prefix_of(name)
            if prefix in seen:
                raise error(None, f"lists {seen[prefix]} and {name} both make "
                            f"symbols {prefix}_*: give one a prefix")
            seen[prefix] = name
        return self


@dataclass(frozen=True)
class _List:
    name: str
    zone: str
    kind: str
    prefix: str
    codes: tuple
    errors: Networks
    reject: tuple
    ipv6: bool
    targets: frozenset


@dataclass(frozen=True)
class _Ask:
    """One thing to look up in one list."""

    dnsbl: _List
    subject: str        # what is asked about: "client [1.2.3.4]", "HELO name x.example"
    query: str          # the DNS name


class DnsblCheck(Check):
    name = "dnsbl"
    replayable = True              # pure but for its lookups (see checks/__init__)
    Options = DnsblOptions
    Item = ListOptions
    requires = ("iplist",)
    skip_for = frozenset({"allowlisted", "authenticated"})

    @classmethod
    def symbols_for(cls, options) -> dict:
        symbols = cls.all_symbols()
        for name, item in options.subsections.items():
            symbols.update(list_symbols(name, item))
        return symbols

    def __init__(self, options, services):
        super().__init__(options, services)
        self.lists = tuple(
            _List(name, item.zone, item.kind, item.prefix or _prefix_of(name), item.codes,
                  item.errors, item.reject, item.ipv6, item.targets)
            for name, item in options.subsections.items() if item.enabled)
        self.ip_lists = tuple(x for x in self.lists if x.kind == "ip")
        self.domain_lists = tuple(x for x in self.lists if x.kind == "domain")

    # -- stages -------------------------------------------------------------

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
        return [_Ask(x, f"client [{ip}]", f"{reverse}.{x.zone}")
                for x in self.ip_lists if ip.version == 4 or x.ipv6]

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
                for x in self.domain_lists:
                    if target not in x.targets:
                        continue
                    for q in queries:
                        if (x.name, q) not in seen:
                            seen.add((x.name, q))
                            asks.append(_Ask(x, f"{label} {q}", f"{q}.{x.zone}"))
        return asks

    # -- asking and reading -------------------------------------------------

    def _run(self, ctx, asks: list):
        if not asks:
            return None
        queries = []
        for ask in asks:
            queries.append((ask.query, "A"))
            if ask.dnsbl.reject:
                queries.append((ask.query, "TXT"))    # same round trip, for the reply text
        answers = iter(ctx.dns.query_many(queries))
        out = []
        for ask in asks:
            a = next(answers)
            txt = next(answers) if ask.dnsbl.reject else None
            out.extend(self._read(ctx, ask, a, txt))
        return out

    def _read(self, ctx, ask: _Ask, a, txt) -> list:
        x = ask.dnsbl
        if a.temporary:
            return [self.result("temperror", f"{x.prefix}_FAIL",
                                f"{x.zone}: {ask.subject}: {a.status.value}")]
        if not a.ok:
            return []
        codes, bad = [], []
        for record in a.records:
            try:
                code = ipaddress.IPv4Address(record)
            except ValueError:
                bad.append(str(record))
                continue
            if code not in LOOPBACK or code in x.errors:
                bad.append(str(code))
            else:
                codes.append(code)
        if bad:
            ctx.log.warning("dnsbl %s refused or broke the query for %s: %s (a 'blocked' "
                            "code: this resolver may not use the list)", x.zone, ask.subject,
                            ", ".join(bad))
            return [self.result("permerror", f"{x.prefix}_BLOCKED",
                                f"{x.zone}: {ask.subject}: answer {', '.join(bad)} "
                                "is an error code, not a listing")]
        symbols = {}
        for code in sorted(codes):           # servers vary the RRset's order; results must not
            suffixes = [c.suffix for c in x.codes if code in c] or ["LISTED"]
            for suffix in suffixes:
                symbols.setdefault(f"{x.prefix}_{suffix}", []).append(str(code))
        reason_text = ""
        if txt is not None and txt.ok and txt.records:
            reason_text = " ".join(str(r) for r in txt.records)
        out = []
        for symbol, found in symbols.items():
            reply = None
            if "*" in x.reject or symbol in x.reject:
                reply = Reply("reject", 554, "5.7.1", _reply_text(ask, reason_text))
            out.append(self.result("fail", symbol,
                                   f"{ask.subject} listed in {x.zone} ({', '.join(found)})",
                                   reply=reply))
        return out


def _reply_text(ask: _Ask, reason: str) -> str:
    text = f"Service unavailable; {ask.subject} blocked using {ask.dnsbl.zone}"
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
            if r.result == "pass":
                for prop in r.properties:
                    if len(prop) > 2 and prop[2]:
                        return normalize(prop[2])
        return ""
    name = ctx.conn.client_name
    if not name or name.lower() == "unknown" or name.startswith("["):
        return ""
    return normalize(name)


CHECKS = (DnsblCheck,)
