"""helo: is the HELO/EHLO name one a real mail server would give?

One symbol per outcome, so that an admin weighs each on its own:

* ``HELO_INVALID``: neither an RFC 5321 ``Domain`` (letter-digit-hyphen
  labels of at most 63 octets, no trailing dot, at most 255 octets) nor an
  ``address-literal`` (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``);
* ``HELO_BARE_IP``: an address without the brackets a literal needs;
* ``HELO_NOT_FQDN``: a single label (``localhost``, ``PC-17``);
* ``HELO_LITERAL_MISMATCH``: a literal that is not the client's address
  (``HELO_LITERAL_MATCH`` when it is);
* ``HELO_OUR_NAME`` / ``HELO_OUR_ADDRESS``: the client claims to be us (our
  host name, the MTA's ``j`` macro, ``our_names``; or ``our_addresses``);
* for a fully qualified name, its A and AAAA records: ``HELO_FORWARD_MATCH``
  (one is the client's address), ``HELO_FORWARD_MISMATCH`` (addresses, but
  not the client's), ``HELO_NO_ADDRESS`` (NXDOMAIN or no A/AAAA),
  ``HELO_DNS_TEMPERROR`` (SERVFAIL or timeout, nothing matched).

Symbols in ``reject`` refuse the HELO with ``550 5.7.1``; the others only
score.  Allow-listed, trusted and (when the MTA already knows it at HELO)
authenticated clients are not checked: local programs say what they like.

INI keys (``[check.helo]``):
  enabled            yes
  tempfail_on_error  no     a DNS failure here does not hold mail back
  our_names          (empty)  host names of ours besides the host's own and macro j
  our_addresses      (empty)  addresses or networks of ours
  reject             (empty)  symbols that refuse the HELO, e.g. HELO_OUR_NAME HELO_INVALID
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..options import Networks, ValueProblem, opt, parse_bool, parse_list, parse_networks
from ..dns import normalize
from ..model import Action, Reply, Trust, unmapped
from ..orgdomain import is_domain
from . import Check, CheckOptions


SYMBOLS = {
    "HELO_INVALID": 2.0,
    "HELO_BARE_IP": 1.5,
    "HELO_NOT_FQDN": 1.5,
    "HELO_LITERAL_MISMATCH": 1.0,
    "HELO_LITERAL_MATCH": 0.0,
    "HELO_OUR_NAME": 3.0,
    "HELO_OUR_ADDRESS": 3.0,
    "HELO_FORWARD_MATCH": 0.0,
    "HELO_FORWARD_MISMATCH": 0.5,
    "HELO_NO_ADDRESS": 1.0,
    "HELO_DNS_TEMPERROR": 0.0,
}


def parse_symbols(text: str) -> frozenset:
    names = frozenset(s.upper() for s in parse_list(text))
    unknown = names - set(SYMBOLS)
    if unknown:
        raise ValueProblem(f"not a helo symbol: {', '.join(sorted(unknown))}")
    return names


def parse_names(text: str) -> frozenset:
    return frozenset(normalize(n) for n in parse_list(text))


@dataclass(frozen=True)
class HeloOptions(CheckOptions):
    tempfail_on_error: bool = opt(False, parse_bool)
    our_names: frozenset = opt(frozenset(), parse_names)
    our_addresses: Networks = opt(Networks(), parse_networks)
    reject: frozenset = opt(frozenset(), parse_symbols)


def parse_literal(text: str):
    """An RFC 5321 address-literal's address, or None when malformed."""
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            return ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return None
    # General-address-literal tags (other than IPv6) name no address we know
    try:
        return ipaddress.IPv4Address(inner)
    except ValueError:
        return None


def bare_address(text: str):
    if ":" not in text and not text.replace(".", "").isdigit():
        return None                # no IPv6 colon, and not dotted digits: a name
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class HeloCheck(Check):
    name = "helo"
    replayable = True              # pure but for its lookups (see checks/__init__)
    Options = HeloOptions
    requires = ("iplist",)
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.TRUSTED, Trust.AUTHENTICATED})
    symbols = SYMBOLS

    def _say(self, result: str, symbol: str, reason: str, helo: str):
        reply = None
        if symbol in self.options.reject:
            reply = Reply(Action.REJECT, 550, "5.7.1", f"HELO/EHLO {helo} rejected: {reason}")
        return self.result(result, symbol, reason, reply=reply)

    def _ours(self, ctx, address) -> bool:
        return address is not None and address in self.options.our_addresses

    def cache_key(self, ctx):
        # the result follows from these and DNS alone (our host name is the engine's)
        conn = ctx.conn
        return (conn.helo, conn.client_ip, conn.our_hostname)

    def on_helo(self, ctx):
        helo = ctx.conn.helo.strip()
        client = ctx.conn.client_ip
        shown = _printable(helo)
        if helo.startswith("[") and helo.endswith("]") and len(helo) > 2:
            literal = parse_literal(helo)
            if literal is None:
                return self._say("fail", "HELO_INVALID", f"malformed address literal {shown}",
                                 shown)
            literal = unmapped(literal)
            out = []
            if self._ours(ctx, literal):
                out.append(self._say("fail", "HELO_OUR_ADDRESS",
                                     f"{shown} is one of our addresses", shown))
            if client is not None and literal != client:
                out.append(self._say("fail", "HELO_LITERAL_MISMATCH",
                                     f"{shown} is not the client address {client}", shown))
            elif client is not None:
                out.append(self.result("pass", "HELO_LITERAL_MATCH", f"{shown} is the client"))
            return out
        bare = bare_address(helo)
        if bare is not None:
            out = [self._say("fail", "HELO_BARE_IP", f"{shown} is an address without brackets",
                             shown)]
            if self._ours(ctx, bare):
                out.append(self._say("fail", "HELO_OUR_ADDRESS",
                                     f"{shown} is one of our addresses", shown))
            return out
        if not is_domain(helo):
            return self._say("fail", "HELO_INVALID", f"{shown or 'empty name'} is not a "
                             "domain name or address literal", shown or "(empty)")
        name = helo.lower()
        if "." not in name:
            return self._say("fail", "HELO_NOT_FQDN", f"{shown} is not fully qualified", shown)
        ours = set(self.options.our_names)
        for candidate in (self.services.hostname, ctx.conn.our_hostname):
            if candidate and "." in candidate:
                ours.add(normalize(candidate))
        if name in ours:
            return self._say("fail", "HELO_OUR_NAME", f"{shown} is our own host name", shown)
        if client is None:
            return None
        a, aaaa = ctx.dns.query_many([(name, "A"), (name, "AAAA")])
        addresses = [r for answer in (a, aaaa) if answer.ok for r in answer.records]
        text = str(client)       # the usual record text: no parsing when it is
        if any(r == text or _same(client, r) for r in addresses):
            return self.result("pass", "HELO_FORWARD_MATCH", f"{shown} resolves to {client}")
        if a.temporary or aaaa.temporary:
            failed = a if a.temporary else aaaa
            return self.result("temperror", "HELO_DNS_TEMPERROR",
                               f"{shown}: {failed.rdtype} lookup {failed.status.value}")
        if addresses:
            return self._say("fail", "HELO_FORWARD_MISMATCH",
                             f"{shown} resolves to {', '.join(addresses[:4])}, not {client}",
                             shown)
        return self._say("fail", "HELO_NO_ADDRESS", f"{shown} has no A or AAAA record", shown)


def _same(ip, text) -> bool:
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return False
    return unmapped(found) == ip


def _printable(text: str) -> str:
    """HELO text for reasons and replies: bounded, controls replaced."""
    text = "".join(ch if 0x20 < ord(ch) < 0x7f else "?" for ch in text)
    return text if len(text) <= 100 else text[:100] + "..."


CHECKS = (HeloCheck,)
