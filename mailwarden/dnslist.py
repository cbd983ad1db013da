"""DNS lists (RFC 5782): what a list is, and how its answers are read.

One definition and one reader serve the client and name lists (the dnsbl
check) and the URL lists (the uribl check); each check keeps only what to
ask and how to report it.  A list (:class:`DnsList`) is its zone, the
answer codes it documents (address ranges and, for the multi lists of
SURBL and URIBL, the bits of ``127.0.0.X``), the answers that are errors,
the default weight of its symbols and the symbols that reject.

An A answer is read (:func:`read`) the same way for every list:

* SERVFAIL or a timeout: the list did not answer.  ``NAME_FAIL``, a
  ``temperror`` (whether it may hold mail is the check's
  ``tempfail_on_error``, "no" by default).
* NXDOMAIN or NODATA: not listed.
* an answer that is not an IPv4 address in 127.0.0.0/8, or lies in the
  list's ``errors``: the list refused the query (Spamhaus 127.255.255.0/24:
  public resolver, excessive queries; DBL 127.0.1.255: an IP asked; SURBL
  and URIBL 127.0.0.1: this resolver is blocked).  The whole answer is an
  error, never a listing and never a temporary failure: ``NAME_BLOCKED``, a
  ``permerror`` of weight 0, and a log line, since the list will go on
  refusing this resolver (the lists' own documentation says so, and
  rspamd reports such answers the same way, as ``*_BLOCKED`` symbols).
* otherwise each code gives the symbols of the ranges and bits that hold
  it; a code in 127.0.0.0/8 that none names gives the list's ``unnamed``
  symbol when it has one (``PREFIX_LISTED`` for a dnsbl list), else nothing.

Two INI grammars build a :class:`DnsList`, both kept as documented:
:class:`DnsblSection` (``[check.dnsbl.NAME]``: ``codes`` as
``ADDRESS[-ADDRESS]|CIDR:SUFFIX``, symbols ``PREFIX_SUFFIX``) and
:class:`UrlSection` (``[check.uribl.NAME]``: ``match = bitmask`` or
``codes``, ``codes`` as ``BIT:SYMBOL`` or ``ADDRESS:SYMBOL``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional

from .options import Networks, ValueProblem, opt, parse_bool, parse_choice, parse_float, \
    parse_list, parse_networks, parse_str, parse_subset
from .dns import normalize
from .explain import clean
from .orgdomain import is_domain

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
FAILED = "temperror"        # the result of a list that did not answer
BLOCKED = "permerror"       # the result of a list that refused the query
TARGETS = ("helo", "sender", "ptr")
SYMBOL = re.compile(r"^[A-Z0-9_]+$")
_BITS = (1, 2, 4, 8, 16, 32, 64, 128)


# -- the list ---------------------------------------------------------------

@dataclass(frozen=True)
class Code:
    """Answer addresses ``low``..``high`` (as integers) mean ``symbol``."""

    low: int
    high: int
    symbol: str

    def __contains__(self, address: ipaddress.IPv4Address) -> bool:
        return self.low <= int(address) <= self.high


@dataclass(frozen=True)
class DnsList:
    """One DNS list, whichever grammar defined it."""

    name: str
    zone: str
    prefix: str                      # NAME_FAIL and NAME_BLOCKED start with it
    codes: tuple = ()                # Code ranges
    bits: tuple = ()                 # (bit, symbol): the last octet of 127.0.0.X
    errors: Networks = Networks()    # answers that mean "query refused"
    unnamed: str = ""                # symbol of a 127/8 code nothing names; "" ignores it
    score: float = 0.0               # default weight of the listing symbols
    reject: frozenset = frozenset()  # listing symbols that reject; "*" for all

    @property
    def fail_symbol(self) -> str:
        return f"{self.prefix}_FAIL"

    @property
    def blocked_symbol(self) -> str:
        return f"{self.prefix}_BLOCKED"

    def listing_symbols(self) -> tuple:
        names = [c.symbol for c in self.codes] + [s for _, s in self.bits]
        if self.unnamed:
            names.append(self.unnamed)
        return tuple(dict.fromkeys(names))

    def symbols(self) -> dict:
        """Every symbol of this list -> default weight (errors weigh 0)."""
        out = {s: self.score for s in self.listing_symbols()}
        out[self.blocked_symbol] = 0.0
        out[self.fail_symbol] = 0.0
        return out

    def rejects(self, symbol: str) -> bool:
        return "*" in self.reject or symbol in self.reject

    def meaning(self, code: ipaddress.IPv4Address) -> list:
        """The symbols of one answer code in 127.0.0.0/8."""
        found = [c.symbol for c in self.codes if code in c]
        if self.bits and int(code) >> 8 == 0x7F0000:          # 127.0.0.X
            last = int(code) & 0xFF
            found += [s for bit, s in self.bits if last & bit]
        if not found and self.unnamed:
            found = [self.unnamed]
        return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Reading:
    """One answer of one list, read."""

    listed: Mapping = dataclasses.field(      # symbol -> the codes that gave it
        default_factory=lambda: MappingProxyType({}))
    blocked: tuple = ()                      # what made the answer an error
    failed: str = ""                         # the DNS status of a failure

    @property
    def problem(self) -> Optional[tuple]:
        """(result, which symbol, description) when the list gave no answer
        to read: ``FAILED`` or ``BLOCKED``; else None."""
        if self.failed:
            return FAILED, "fail", self.failed
        if self.blocked:
            return BLOCKED, "blocked", ", ".join(self.blocked)
        return None


def read(dnslist: DnsList, answer) -> Reading:
    """Read an A answer (a :class:`mailwarden.dns.Answer`) of ``dnslist``."""
    if answer.temporary:
        return Reading(failed=answer.status.value)
    if not answer.ok:
        return Reading()                     # NXDOMAIN, NODATA: not listed
    codes, bad = [], []
    for record in answer.records:
        try:
            code = ipaddress.IPv4Address(record)
        except ValueError:
            bad.append(f"answer {str(record)[:64]!r} is not an IPv4 address")
            continue
        if code not in LOOPBACK:
            bad.append(f"answer {code} outside 127.0.0.0/8")
        elif code in dnslist.errors:
            bad.append(f"error code {code}")
        else:
            codes.append(code)
    if bad:
        return Reading(blocked=tuple(bad))
    listed: dict = {}
    for code in sorted(set(codes)):      # servers vary the RRset's order; results must not
        for symbol in dnslist.meaning(code):
            listed.setdefault(symbol, []).append(str(code))
    return Reading(listed=MappingProxyType({s: tuple(c) for s, c in listed.items()}))


def log_blocked(logger, check: str, dnslist: DnsList, subject: str, what: str) -> None:
    """The one log line of a refused query: the operator has to act."""
    logger.warning("%s %s refused or broke the query for %s: %s (a 'blocked' code: this "
                   "resolver may not use the list)", check, dnslist.zone, clean(subject),
                   clean(what))


def prefix_of(name: str) -> str:
    """A section NAME as the start of symbols: ``spam-list`` -> ``SPAM_LIST``."""
    return re.sub(r"[^A-Z0-9_]", "_", name.upper())


# -- value parsers shared by both grammars ------------------------------------

def parse_zone(text: str) -> str:
    zone = normalize(text)
    if zone and not is_domain(zone, underscore=True):
        raise ValueProblem(f"not a DNS zone name: {text!r}")
    return zone


def _v4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise ValueProblem(f"not an IPv4 address: {text!r}") from None


def _range(where: str) -> tuple:
    """``A``, ``A-B`` or ``A/N`` -> (low, high) as integers."""
    if "/" in where:
        try:
            net = ipaddress.IPv4Network(where.strip(), strict=False)
        except ValueError:
            raise ValueProblem(f"not an IPv4 network: {where!r}") from None
        return int(net.network_address), int(net.broadcast_address)
    first, _, last = where.partition("-")
    low = _v4(first)
    high = _v4(last) if last else low
    if int(high) < int(low):
        raise ValueProblem(f"range runs backwards: {where!r}")
    return int(low), int(high)


def _ipv4_errors(nets) -> Networks:
    return Networks(tuple(n for n in nets if n.version == 4))


# -- [check.dnsbl.NAME] --------------------------------------------------------

def parse_suffix_codes(text: str) -> tuple:
    """``127.0.0.2:SBL 127.0.0.4-127.0.0.7:XBL 127.0.1.0/24:X`` -> Codes whose
    symbol is the SUFFIX (the list's prefix is added once it is known)."""
    codes = []
    for item in parse_list(text):
        where, sep, suffix = item.rpartition(":")
        suffix = suffix.upper()
        if not sep or not SYMBOL.match(suffix):
            raise ValueProblem(f"expected ADDRESS[-ADDRESS]:SUFFIX, got {item!r}")
        low, high = _range(where)
        codes.append(Code(low, high, suffix))
    return tuple(codes)


def parse_reject(text: str) -> tuple:
    """() for no, ("*",) for yes, else the symbols named."""
    items = parse_list(text)
    if not items or (len(items) == 1 and items[0].lower() in ("no", "false", "off", "0")):
        return ()
    if len(items) == 1 and items[0].lower() in ("yes", "true", "on", "1", "all"):
        return ("*",)
    return tuple(s.upper() for s in items)


parse_targets = parse_subset(TARGETS, "target(s)")


@dataclass(frozen=True)
class DnsblSection:
    """One ``[check.dnsbl.NAME]`` section: a client address or name list."""

    name: str = ""                 # the section's NAME, filled by the loader
    enabled: bool = opt(True, parse_bool)
    zone: str = opt("", parse_zone)
    kind: str = opt("ip", parse_choice("ip", "domain"))
    prefix: str = opt("", parse_str)
    codes: tuple = opt((), parse_suffix_codes)
    score: float = opt(3.0, parse_float())
    errors: Networks = opt(parse_networks("127.255.255.0/24"), parse_networks)
    reject: tuple = opt((), parse_reject)
    ipv6: bool = opt(True, parse_bool)
    targets: frozenset = opt(frozenset(TARGETS), parse_targets)

    @property
    def symbol_prefix(self) -> str:
        return self.prefix or prefix_of(self.name)

    @property
    def dnslist(self) -> DnsList:
        prefix = self.symbol_prefix
        return DnsList(
            name=self.name, zone=self.zone, prefix=prefix,
            codes=tuple(Code(c.low, c.high, f"{prefix}_{c.symbol}") for c in self.codes),
            errors=_ipv4_errors(self.errors), unnamed=f"{prefix}_LISTED", score=self.score,
            reject=frozenset(self.reject))

    def resolve(self, error):
        if not self.zone:
            raise error("zone", "missing: the list's DNS zone, e.g. zen.spamhaus.org")
        if self.prefix and not SYMBOL.match(self.prefix):
            raise error("prefix", f"symbol prefix must be A-Z, 0-9 and _, got {self.prefix!r}")
        known = set(self.dnslist.listing_symbols())
        for symbol in self.reject:
            if symbol != "*" and symbol not in known:
                raise error("reject", f"{symbol} is not a listing symbol of this list "
                            f"(known: {', '.join(sorted(known))})")
        return self


# -- [check.uribl.NAME] --------------------------------------------------------

def parse_symbol_codes(text: str) -> tuple:
    """'8:SURBL_PH, 127.0.1.2:DBL_SPAM' -> (('8', 'SURBL_PH'), ...)."""
    codes = []
    for item in parse_list(text):
        code, sep, symbol = item.partition(":")
        symbol = symbol.strip().upper()
        if not sep or not code or not symbol:
            raise ValueProblem(f"expected CODE:SYMBOL, got {item!r}")
        if not symbol.replace("_", "").isalnum() or not symbol[0].isalpha():
            raise ValueProblem(f"a symbol is letters, digits and '_': {symbol!r}")
        codes.append((code.strip(), symbol))
    return tuple(codes)


def parse_ipv4_networks(text: str) -> tuple:
    nets = []
    for item in parse_list(text):
        try:
            nets.append(ipaddress.IPv4Network(item, strict=False))
        except ValueError:
            raise ValueProblem(f"not an IPv4 address or network: {item!r}") from None
    return tuple(nets)


@dataclass(frozen=True)
class UrlSection:
    """One ``[check.uribl.NAME]`` section: a list of the domains (and IP
    hosts) that messages link to."""

    name: str = ""                 # the section's NAME, filled by the loader
    zone: str = opt("", parse_zone)
    match: str = opt("bitmask", parse_choice("bitmask", "codes"))
    codes: tuple = opt((), parse_symbol_codes)
    errors: tuple = opt((), parse_ipv4_networks)
    ip: bool = opt(False, parse_bool)
    reject: bool = opt(False, parse_bool)
    # also query names one label below the registered domain (not www.)
    subdomains: bool = opt(True, parse_bool)
    score: float = opt(5.0, parse_float())
    # filled by resolve(): bit or address -> symbol
    table: Mapping = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    @property
    def dnslist(self) -> DnsList:
        if self.match == "bitmask":
            codes, bits = (), tuple(self.table.items())
        else:
            codes = tuple(Code(int(ipaddress.IPv4Address(a)), int(ipaddress.IPv4Address(a)), s)
                          for a, s in self.table.items())
            bits = ()
        return DnsList(name=self.name, zone=self.zone, prefix=prefix_of(self.name),
                       codes=codes, bits=bits, errors=Networks(self.errors),
                       score=self.score, reject=frozenset({"*"}) if self.reject else frozenset())

    def resolve(self, error):
        if not self.zone:
            raise error("zone", "missing: the list's DNS zone")
        if not self.codes:
            raise error("codes", "missing: BIT:SYMBOL or ADDRESS:SYMBOL pairs")
        table = {}
        for code, symbol in self.codes:
            if self.match == "bitmask":
                if not code.isdigit() or int(code) not in _BITS:
                    raise error("codes", f"a bitmask code is one bit (1, 2, 4 ... 128), got {code!r}")
                table[int(code)] = symbol
            else:
                try:
                    table[str(ipaddress.IPv4Address(code))] = symbol
                except ValueError:
                    raise error("codes", f"not an IPv4 answer address: {code!r}") from None
        return dataclasses.replace(self, table=MappingProxyType(table))

