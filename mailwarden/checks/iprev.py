"""iprev: reverse DNS with forward confirmation (RFC 8601 §3).

The client address's PTR names are looked up; the result is ``pass`` when
one of them (at most ``max_names``) resolves back to the address.  Results
as RFC 8601 §2.7.3 defines them:

* ``pass``: a PTR name resolves back to the client address;
* ``fail``: PTR names exist but none resolves back to it;
* ``permerror``: no PTR data is published (NXDOMAIN or NODATA);
* ``temperror``: SERVFAIL, timeout or another transient DNS error on the
  way to an answer (a fail or a pass found elsewhere still wins).

Authentication-Results gets ``iprev=RESULT policy.iprev=IP (NAME)``.
Allow-listed and trusted clients are not looked up.

INI keys (``[check.iprev]``):
  enabled             yes
  tempfail_on_error   yes
  max_names           10    PTR names tried at most
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..options import opt, parse_int
from ..dns import ptr_name
from ..model import Trust
from . import Check, CheckOptions


@dataclass(frozen=True)
class IprevOptions(CheckOptions):
    max_names: int = opt(10, parse_int(1, 100))


class IprevCheck(Check):
    name = "iprev"
    replayable = True              # pure but for its lookups (see checks/__init__)
    method = "iprev"
    Options = IprevOptions
    requires = ("iplist",)
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.TRUSTED})
    symbols = {
        "IPREV_PASS": 0.0,
        "IPREV_FAIL": 1.0,
        "IPREV_PERMERROR": 1.5,
        "IPREV_TEMPERROR": 0.0,
    }

    def cache_key(self, ctx):
        # the result follows from the address and DNS alone (see checks/__init__)
        return ctx.conn.client_ip

    def on_connect(self, ctx):
        ip = ctx.conn.client_ip
        if ip is None:
            return None
        text = str(ip)
        props = lambda name=None: (("policy.iprev", text, name),)   # noqa: E731
        ptr = ctx.dns.query(ptr_name(ip), "PTR")
        if ptr.temporary:
            return self.result("temperror", "IPREV_TEMPERROR",
                               f"PTR lookup: {ptr.status.value}", properties=props())
        if not ptr.ok or not ptr.records:
            return self.result("permerror", "IPREV_PERMERROR", "no PTR record",
                               properties=props())
        names = list(dict.fromkeys(n.lower() for n in ptr.records))[:self.options.max_names]
        rdtype = "A" if ip.version == 4 else "AAAA"
        answers = ctx.dns.query_many([(name, rdtype) for name in names])
        transient = False
        for name, answer in zip(names, answers):
            if answer.ok and any(a == text or _same(ip, a) for a in answer.records):
                return self.result("pass", "IPREV_PASS", "", properties=props(name))
            transient |= answer.temporary
        if transient:
            return self.result("temperror", "IPREV_TEMPERROR",
                               "forward lookup of the PTR name failed", properties=props(names[0]))
        return self.result("fail", "IPREV_FAIL",
                           f"{', '.join(names)} does not resolve to {ip}",
                           properties=props(names[0]))


def _same(ip, text) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


CHECKS = (IprevCheck,)
