"""spf: Sender Policy Framework (RFC 7208) for the MAIL FROM and HELO identities.

pyspf evaluates the records; every lookup it makes goes through this
message's :class:`~mailwarden.dns.Lookup` (``[dns]`` servers, the shared
cache, the message budget and deadline) by a :class:`spf.query` subclass
that overrides its lookup method.  The RFC 7208 §4.6.4 limits (DNS
mechanisms and void lookups) are attributes of that one query object, so
one message's limits never touch another's and no pyspf global is written.

The ``ptr`` mechanism and the ``%{p}`` macro follow RFC 7208 §5.5: a DNS
error on the client's PTR lookup means no name, and a name whose address
lookup fails (a timeout, a CNAME loop) is skipped, never a temperror.

Identities (RFC 7208 §2.3, §2.4):

* MAIL FROM: the envelope sender's domain; for the null sender, the HELO
  identity ``postmaster@HELO`` stands in for it (DMARC aligns with that);
* HELO: the HELO/EHLO name, when it is a domain name (not an address
  literal); reported as ``smtp.helo``.

Each identity gets one of the seven results and its own symbol
(``SPF_PASS`` .. ``SPF_PERMERROR`` for MAIL FROM, ``SPF_HELO_*`` for HELO).
Authentication-Results gets ``spf=RESULT smtp.mailfrom=ADDRESS`` and
``spf=RESULT smtp.helo=NAME``.  Authenticated and trusted clients are not
checked: their mail is ours, not judged as inbound; nor are allow-listed
ones ([check.iplist] allow), which the admin vouches for.

A ``fail`` of the MAIL FROM identity is scored; with ``reject_fail = yes``
it is refused at MAIL FROM with ``550 5.7.23`` and the domain's explanation
(RFC 7208 §8.4), a local policy stricter than the published one.

Results are kept (per engine, at most ``CACHE_SIZE``) by client address,
MAIL FROM domain (empty for the HELO identity) and HELO name, until the
first DNS answer they came from leaves the resolver's cache; never a
temperror, nor a result that a temporary DNS error touched (a PTR name
skipped, an ``exp=`` dropped), nor one whose records expanded the ``%{l}``,
``%{s}`` or ``%{t}`` macros (they depend on the local part or the time).

INI keys (``[check.spf]``):
  enabled             yes
  tempfail_on_error   yes
  helo                yes   also check the HELO identity
  reject_fail         no    refuse MAIL FROM on fail (550 5.7.23) instead of scoring
  max_lookups         10    DNS-querying mechanisms and modifiers per check (RFC 7208 §4.6.4)
  max_void_lookups    2     lookups answering NXDOMAIN or no data (RFC 7208 §4.6.4)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import spf as pyspf

from ..options import opt, parse_bool, parse_int
from ..model import Action, Reply, Trust, unmapped
from ..orgdomain import is_domain
from ..ttlcache import TtlCache
from . import Check, CheckOptions

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

CACHE_SIZE = 4096          # results kept per engine
# macros whose value is not in the cache's key: the local part, the whole
# sender, the time (RFC 7208 §7.2); a result that expanded one is not kept
_UNKEYED_MACRO = re.compile(r"%\{[lLsStT]")


@dataclass(frozen=True)
class SpfOptions(CheckOptions):
    helo: bool = opt(True, parse_bool)
    reject_fail: bool = opt(False, parse_bool)
    max_lookups: int = opt(10, parse_int(1, 100))
    max_void_lookups: int = opt(2, parse_int(0, 100))


class _Query(pyspf.query):
    """A pyspf query that asks our resolver and keeps its limits to itself.

    ``dns`` replaces pyspf's module-level lookup function for this object
    only; ``check_lookups`` counts against this object's ``max_lookups``.
    Our resolver already follows CNAMEs, so no CNAME bookkeeping is needed.
    """

    def __init__(self, lookup, max_lookups: int, max_void: int, **kw):
        self._lookup = lookup
        self.max_lookups = max_lookups
        self.max_void = max_void
        # until when the result may be kept: the first of the answers'
        # expiries; 0 when it may not (a temporary error, a macro the key misses)
        self.expires = float("inf")
        super().__init__(**kw)

    def set_ip(self, i):
        """pyspf's, without parsing the address again: ``i`` is the client's
        address object, an IPv4-mapped one already unmapped."""
        if isinstance(i, str):
            return super().set_ip(i)
        self.iplist = False
        self.ipaddr = i
        self.c = str(i)
        if i.version == 6:
            self.A, self.v, self.cidrmax = "AAAA", "ip6", 128
            self.i = ".".join(i.exploded.replace(":", "").upper())
        else:
            self.A, self.v, self.cidrmax = "A", "in-addr", 32
            self.i = i.exploded
        return None

    def expand(self, s, stripdot=True):
        if "%" in s and _UNKEYED_MACRO.search(s):
            self.expires = 0.0
        return super().expand(s, stripdot)

    def check_lookups(self):
        self.lookups += 1
        if self.lookups > self.max_lookups:
            raise pyspf.PermError(f"More than {self.max_lookups} DNS lookups")

    def validated_ptrs(self):
        """The client's PTR names whose address records include the client
        (the ``ptr`` mechanism and the ``%{p}`` macro), RFC 7208 §5.5: a DNS
        error on the PTR lookup means no name; one on a name's address
        lookup (a timeout, a CNAME loop) skips that name and the search goes
        on; at most 10 names are looked at (§4.6.4)."""
        try:
            names = self.dns_ptr(self.i)
        except pyspf.TempError:
            return []
        validated = []
        for name in names[:pyspf.MAX_PTR]:
            try:
                addresses = self.dns_a(name, self.A)
            except pyspf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                validated.append(name)
        return validated

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        try:
            answer = self._lookup.query(name, qtype)
        except BaseException:                # CacheMiss: a speculative pass
            self.expires = 0.0
            raise
        if answer.temporary:
            # pyspf catches some (exp=, type SPF): what it computes without is not kept
            self.expires = 0.0
            raise pyspf.TempError(f"DNS {answer.describe()}")
        if self.expires:
            self.expires = min(self.expires,
                               self._lookup.resolver.expiry(name, qtype, answer))
        records = list(answer.records) if answer.ok else []
        if qtype in ("TXT", "SPF"):
            # pyspf joins the character-strings of each record itself
            records = [[r.encode("utf-8")] for r in records]
        if not records and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > self.max_void:
                raise pyspf.PermError(f"Void lookup limit of {self.max_void} exceeded")
        return records


def spf_domain(name: str) -> bool:
    """Whether a HELO or MAIL FROM domain can be an SPF identity: RFC 7208
    §7.1 domain-spec syntax (labels may hold "_", a toplabel that is not
    all digits); a trailing dot is allowed."""
    return is_domain(name.rstrip("."), underscore=True, multi_label=True)


class SpfCheck(Check):
    name = "spf"
    replayable = True              # pure but for its lookups (see checks/__init__)
    method = "spf"
    Options = SpfOptions
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.AUTHENTICATED, Trust.TRUSTED})
    symbols = {
        "SPF_PASS": 0.0,
        "SPF_FAIL": 3.0,
        "SPF_SOFTFAIL": 1.0,
        "SPF_NEUTRAL": 0.0,
        "SPF_NONE": 0.0,
        "SPF_TEMPERROR": 0.0,
        "SPF_PERMERROR": 0.5,
        "SPF_HELO_PASS": 0.0,
        "SPF_HELO_FAIL": 1.0,
        "SPF_HELO_SOFTFAIL": 0.5,
        "SPF_HELO_NEUTRAL": 0.0,
        "SPF_HELO_NONE": 0.0,
        "SPF_HELO_TEMPERROR": 0.0,
        "SPF_HELO_PERMERROR": 0.0,
    }

    def __init__(self, options, services):
        super().__init__(options, services)
        # (client address, MAIL FROM domain or '', HELO) -> (result, explanation)
        self.cache = TtlCache(CACHE_SIZE)

    def _evaluate(self, ctx, sender: str, helo: str) -> tuple:
        """(result, explanation) of one identity; ``sender`` '' means HELO."""
        address = unmapped(ctx.conn.client_ip)
        ip = str(address)
        # pyspf's own split: the domain is what follows the first "@"
        key = (ip, sender.partition("@")[2] if sender else "", helo)
        dns = ctx.dns
        found = self.cache.get(key, dns.clock())
        if found is not None:
            return found
        query = _Query(dns, self.options.max_lookups, self.options.max_void_lookups,
                       i=address, s=sender, h=helo,
                       receiver=self.services.hostname or "unknown")
        result, _code, explanation = query.check()
        if result not in SPF_RESULTS:        # 'ambiguous' only exists in harsh mode
            result = "permerror"
        if result != "temperror" and query.expires != float("inf"):
            self.cache.put(key, (result, explanation), query.expires, dns.clock())
        return result, explanation

    def on_mail(self, ctx):
        if ctx.conn.client_ip is None:
            return None
        helo = ctx.conn.helo.strip()
        helo_ok = spf_domain(helo)
        out = []
        helo_result = None
        if helo_ok and (self.options.helo or not ctx.msg.mail_from):
            helo_result = self._evaluate(ctx, "", helo)

        sender = ctx.msg.mail_from
        if sender:
            domain = sender.rpartition("@")[2]
            if "@" not in sender or not spf_domain(domain):
                result, explanation = "none", "MAIL FROM has no valid domain"
            else:
                result, explanation = self._evaluate(ctx, sender, helo or domain)
            identity, comment = sender, None
        elif helo_ok:
            result, explanation = helo_result
            identity, comment = f"postmaster@{helo}", "null sender, HELO identity"
        else:
            result, explanation = "none", "null sender and no usable HELO name"
            identity, comment = "", None

        reply = None
        if result == "fail" and self.options.reject_fail:
            reply = Reply(Action.REJECT, 550, "5.7.23", explanation or "SPF fail - not authorized")
        props = (("smtp.mailfrom", identity, comment),) if identity else ()
        out.append(self.result(result, "SPF_" + result.upper(),
                               _reason(result, explanation, identity), properties=props,
                               reply=reply))
        if helo_result is not None and self.options.helo:
            result, explanation = helo_result
            out.append(self.result(result, "SPF_HELO_" + result.upper(),
                                   _reason(result, explanation, helo),
                                   properties=(("smtp.helo", helo),)))
        elif self.options.helo and helo and not helo_ok:
            out.append(self.result("none", "SPF_HELO_NONE", "HELO is not a domain name",
                                   properties=(("smtp.helo", helo),)))
        return out


def _reason(result: str, explanation: str, identity: str) -> str:
    # pyspf's stock words for pass ("sender SPF authorized") say nothing new
    if result == "pass":
        return ""
    return explanation or ""


CHECKS = (SpfCheck,)
