"""uribl: the domains a message links to, looked up in URL block lists.

At end of message every MIME part is read by :mod:`mailwarden.urls`; each
distinct registered domain (and each IP host, for lists that take IPs,
reversed as in RFC 5782) is looked up in every configured list, all in
parallel under the message's DNS deadline and through the shared cache.
Domains of ``skip_domains`` are never queried.  The message is read from
the header fields and body as received (:func:`mailwarden.urls.extract_message`),
never joined into one copy; what each host normalises to (IDNA, numeric
IPv4 forms, registered domain) is kept in a per-engine bounded cache, since
the same hosts recur from message to message.

A list is a ``[check.uribl.NAME]`` section, so a new list needs no code.
Its answer is read one of two ways:

* ``match = bitmask``: the last octet of ``127.0.0.X`` holds one bit per
  sub-list (SURBL ``multi.surbl.org``, URIBL ``multi.uribl.com``);
* ``match = codes``: each whole answer address means one thing (Spamhaus
  DBL ``127.0.1.2`` spam, ``127.0.1.4`` phish, ...).

``codes`` maps bits or addresses to symbols.  Answers are read by
:mod:`mailwarden.dnslist`, as the dnsbl check reads them: answers in
``errors`` (a resolver refused or blocked, "IP queries prohibited", ...)
and answers outside 127.0.0.0/8 are never listings: they give the list's
``NAME_BLOCKED`` symbol (a ``permerror`` of weight 0) and a log line.  A
SERVFAIL or timeout gives ``NAME_FAIL``, a ``temperror``; by default it
does not tempfail the message (``tempfail_on_error = no``): a list outage
should not hold mail.  Bits and codes not mapped are informational and
ignored.

Each listing gives a ``fail`` result with the list's symbol; the listed
domains are in its reason and shown next to the symbol in the status header.
A list with ``reject = yes`` also rejects the message at once with
``550 5.7.1``, naming the domain and the list.

INI keys (``[check.uribl]``):
  enabled             no
  tempfail_on_error   no
  lists               surbl, uribl, dbl   the [check.uribl.NAME] lists queried
  skip_domains        (big mail, web and CDN domains)   never queried
  max_domains         20      names (registered domains first, then IPs and
                              the names one label below) queried at most
  max_parts           200     MIME parts read at most
  max_bytes           2M      characters of text scanned at most
  max_urls            1000    distinct URLs collected at most

INI keys (``[check.uribl.NAME]``; surbl, uribl and dbl have built-in
definitions that a section of that name replaces):
  zone      (required)   the list's DNS zone
  match     bitmask      bitmask or codes
  codes     (required)   BIT:SYMBOL or ADDRESS:SYMBOL, comma separated
  errors    (empty)      answer addresses or networks that are errors
  ip        no           look up IP hosts (reversed) in this list too
  reject    no           a listing rejects the message (550 5.7.1)
  subdomains yes         also query the name one label below the registered
                         domain (``b.example.com`` of ``a.b.example.com``,
                         never ``www``): hosting customers, test points
  score     5            weight of this list's symbols that have no default
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from ..options import opt, parse_bool, parse_int, parse_list, parse_size
from ..dns import reverse_name
from ..dnslist import UrlSection, log_blocked, read
from ..model import Action, Reply, Trust
from ..urls import HostCache, Limits, extract_message, registered_domain
from . import Check, CheckOptions

log = logging.getLogger("mailwarden")


def _builtin(name: str, **values) -> UrlSection:
    def error(key, message):
        raise AssertionError(f"built-in list: {key}: {message}")
    fields = {f.name: f for f in dataclasses.fields(UrlSection)}
    parsed = {k: fields[k].metadata["parse"](v) for k, v in values.items()}
    return UrlSection(name=name, **parsed).resolve(error)


# The lists' documented return codes.  SURBL: bits 8 PH, 16 MW, 64 ABUSE,
# 128 CR; 127.0.0.1 means access is blocked; bits 2, 4 and 32 are no longer
# assigned.  URIBL: bits 2 black, 4 grey, 8 red; 127.0.0.1 means the query
# was refused.  Spamhaus DBL: 127.0.1.2-6 listed, 127.0.1.102-106 abused
# legitimate domains; 127.0.1.255 "IP queries prohibited" and
# 127.255.255.252/254/255 (typo, public resolver, excessive queries) are
# errors.
BUILTIN_LISTS = MappingProxyType({
    "surbl": _builtin("surbl", zone="multi.surbl.org", match="bitmask", ip="yes",
                      codes="8:SURBL_PH, 16:SURBL_MW, 64:SURBL_ABUSE, 128:SURBL_CR",
                      errors="127.0.0.1"),
    "uribl": _builtin("uribl", zone="multi.uribl.com", match="bitmask",
                      codes="2:URIBL_BLACK, 4:URIBL_GREY, 8:URIBL_RED",
                      errors="127.0.0.1, 127.0.0.255"),
    "dbl": _builtin("dbl", zone="dbl.spamhaus.org", match="codes",
                    codes="127.0.1.2:DBL_SPAM, 127.0.1.4:DBL_PHISH, 127.0.1.5:DBL_MALWARE, "
                          "127.0.1.6:DBL_BOTNET, 127.0.1.102:DBL_ABUSED_SPAM, "
                          "127.0.1.103:DBL_ABUSED_REDIRECTOR, 127.0.1.104:DBL_ABUSED_PHISH, "
                          "127.0.1.105:DBL_ABUSED_MALWARE, 127.0.1.106:DBL_ABUSED_BOTNET",
                    errors="127.0.1.255, 127.255.255.0/24"),
})

# Never worth a query: their listing would be a false positive on most
# mail, and skipping them saves the bulk of the lookups.
DEFAULT_SKIP = (
    "gmail.com googlemail.com google.com youtube.com gstatic.com googleapis.com "
    "googleusercontent.com outlook.com hotmail.com live.com microsoft.com office.com "
    "office365.com windows.net yahoo.com yahoo.co.jp aol.com icloud.com apple.com me.com "
    "amazon.com amazonaws.com cloudfront.net akamaihd.net akamai.net cloudflare.com "
    "facebook.com fbcdn.net instagram.com twitter.com x.com linkedin.com wikipedia.org "
    "w3.org schema.org mozilla.org github.com yandex.ru mail.ru gmx.net gmx.de web.de "
    "proton.me protonmail.com zoho.com"
)


def _parse_names(text: str) -> tuple:
    return tuple(item.strip().rstrip(".").lower() for item in parse_list(text))


@dataclass(frozen=True)
class UriblOptions(CheckOptions):
    enabled: bool = opt(False, parse_bool)
    tempfail_on_error: bool = opt(False, parse_bool)
    lists: tuple = opt(("surbl", "uribl", "dbl"), parse_list)
    skip_domains: tuple = opt(_parse_names(DEFAULT_SKIP), _parse_names)
    max_domains: int = opt(20, parse_int(1, 1000))
    max_parts: int = opt(200, parse_int(1, 100000))
    max_bytes: int = opt(2 * 1024 * 1024, parse_size)
    max_urls: int = opt(1000, parse_int(1, 1000000))
    # filled by resolve(): list name -> UrlSection, in the order of ``lists``
    active: Mapping = dataclasses.field(default_factory=lambda: MappingProxyType({}))

    def resolve(self, error):
        active = {}
        for name in self.lists:
            name = name.lower()
            definition = self.subsections.get(name) or BUILTIN_LISTS.get(name)
            if definition is None:
                raise error("lists", f"no [check.uribl.{name}] section defines list {name!r}")
            active[name] = definition
        return dataclasses.replace(self, active=MappingProxyType(active))

    @property
    def limits(self) -> Limits:
        # the extraction keeps more domains than are queried, so that skipped
        # ones do not use up the bound
        return Limits(max_parts=self.max_parts, max_bytes=self.max_bytes,
                      max_urls=self.max_urls,
                      max_domains=self.max_domains + len(self.skip_domains))


class UriblCheck(Check):
    name = "uribl"
    replayable = True              # pure but for its lookups (see checks/__init__)
    Options = UriblOptions
    Item = UrlSection
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.TRUSTED})
    symbols = {
        "SURBL_PH": 5.5, "SURBL_MW": 5.5, "SURBL_ABUSE": 5.0, "SURBL_CR": 3.0,
        "SURBL_FAIL": 0.0,
        "URIBL_BLACK": 5.0, "URIBL_RED": 1.0, "URIBL_GREY": 0.5, "URIBL_FAIL": 0.0,
        "DBL_SPAM": 5.0, "DBL_PHISH": 6.0, "DBL_MALWARE": 6.0, "DBL_BOTNET": 6.0,
        "DBL_ABUSED_SPAM": 2.5, "DBL_ABUSED_REDIRECTOR": 2.5, "DBL_ABUSED_PHISH": 3.5,
        "DBL_ABUSED_MALWARE": 3.5, "DBL_ABUSED_BOTNET": 3.5, "DBL_FAIL": 0.0,
        "SURBL_BLOCKED": 0.0, "URIBL_BLOCKED": 0.0, "DBL_BLOCKED": 0.0,
    }

    @classmethod
    def symbols_for(cls, options) -> dict:
        symbols = cls.all_symbols()
        for section in {**options.subsections, **options.active}.values():
            for symbol, weight in section.dnslist.symbols().items():
                symbols.setdefault(symbol, weight)
        return symbols

    def __init__(self, options, services):
        super().__init__(options, services)
        self.lists = {name: section.dnslist for name, section in options.active.items()}
        self.limits = options.limits
        self.skip = frozenset(options.skip_domains)
        # per list, built once: (name, "." + zone, queries IPs, queries subdomains)
        self.plan = tuple((name, "." + section.zone, bool(section.ip), bool(section.subdomains))
                          for name, section in options.active.items())
        self.hosts = HostCache()         # what each host seen lately normalises to

    def on_eom(self, ctx):
        msg = ctx.msg
        body = msg.body.read() if msg.body is not None else b""
        found = extract_message(msg.headers, body, self.limits, self.hosts)
        results = self._lookups(ctx, found)
        if found.truncated:          # after the lookups: a replayed run logs it once
            ctx.log.info("uribl: %s", "; ".join(n for n in found.notes if "limit" in n))
        return results

    def _lookups(self, ctx, found):
        skip = self.skip
        targets = [t for t in found.ordered if t not in skip][:self.options.max_domains]
        if not targets:
            return None
        ips = set(found.ips)
        subs = _subdomains(found.hosts, set(targets) - ips)
        room = max(0, self.options.max_domains - len(targets))
        subs = subs[:room]
        queries = []                     # (list name, target, query name)
        reversed_ips: dict = {}
        for name, suffix, with_ips, with_subs in self.plan:
            for target in (targets + subs) if with_subs and subs else targets:
                if target in ips:
                    if not with_ips or ":" in target:
                        continue
                    label = reversed_ips.get(target)
                    if label is None:
                        label = reversed_ips[target] = reverse_name(target)
                else:
                    label = target
                queries.append((name, target, label + suffix))
        if not queries:
            return None
        answers = ctx.dns.query_many([(q, "A") for _, _, q in queries])
        listed: dict = {}                # (list, symbol) -> [targets]
        problems: dict = {}              # (list, "fail" or "blocked") -> (result, [texts])
        for (name, target, qname), answer in zip(queries, answers):
            dl = self.lists[name]
            reading = read(dl, answer)
            problem = reading.problem
            if problem is not None:
                result, which, text = problem
                if which == "blocked":
                    log_blocked(ctx.log, self.name, dl, target, text)
                problems.setdefault((name, which), (result, []))[1].append(f"{qname}: {text}")
                continue
            for symbol in reading.listed:
                listed.setdefault((name, symbol), []).append(target)
        results = []
        for (name, symbol), hits in listed.items():
            dl = self.lists[name]
            hits = list(dict.fromkeys(hits))
            reason = f"{', '.join(hits)} listed in {dl.zone}"
            reply = None
            if dl.rejects(symbol):
                reply = Reply(Action.REJECT, 550, "5.7.1",
                              f"Message contains a link to {hits[0]}, listed in {dl.zone}")
            results.append(self.result("fail", symbol, reason, reply=reply,
                                       options=tuple(hits)))
        for (name, which), (result, texts) in problems.items():
            dl = self.lists[name]
            symbol = dl.blocked_symbol if which == "blocked" else dl.fail_symbol
            results.append(self.result(result, symbol, f"{dl.zone}: {texts[0]}"
                                       + (f" (and {len(texts) - 1} more)"
                                          if len(texts) > 1 else "")))
        return results


def _subdomains(hosts, domains: set) -> list:
    """The names one label below a queried registered domain, ``www`` aside:
    ``a.b.example.com`` -> ``b.example.com``.  Lists name abused hosting
    customers and their own test points (``test.surbl.org``) at that level."""
    out: dict = {}
    for host in hosts:
        reg = registered_domain(host) if "." in host else ""
        if not reg or reg == host or reg not in domains:
            continue
        label = host[:-len(reg) - 1].rsplit(".", 1)[-1]
        if label.startswith("www") and label[3:].isdigit() or label == "www":
            continue
        out.setdefault(f"{label}.{reg}", None)
    return list(out)


CHECKS = (UriblCheck,)
