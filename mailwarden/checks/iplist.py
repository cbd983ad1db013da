"""iplist: local block and allow lists of IPv4 and IPv6 networks.

A blocked client is refused at connect with ``554 5.7.1``; an allowed one is
tagged ``allowlisted`` and the reputation checks (iprev, dnsbl, ...) skip it.
When a client is in both lists, the most specific network wins; on a tie the
block wins.  Files hold one address or CIDR per line, ``#`` comments; a bad
line is refused at start-up with the file's own ``path:line``.

INI keys (``[check.iplist]``):
  enabled      yes
  allow        (empty)   addresses or CIDRs, comma or space separated
  allow_file   (empty)   path to a list file
  block        (empty)
  block_file   (empty)
  block_text   Client address blocked by local policy
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..options import ConfigError, Networks, opt, parse_networks, parse_path, parse_str, \
    read_network_file
from ..model import Action, Reply, Trust
from . import Check, CheckOptions


@dataclass(frozen=True)
class IplistOptions(CheckOptions):
    allow: Networks = opt(Networks(), parse_networks)
    allow_file: str = opt("", parse_path)
    block: Networks = opt(Networks(), parse_networks)
    block_file: str = opt("", parse_path)
    block_text: str = opt("Client address blocked by local policy", parse_str)

    def resolve(self, error):
        """Merge the list files into the inline lists (start-up and reload)."""
        merged = {}
        for kind in ("allow", "block"):
            path = getattr(self, f"{kind}_file")
            nets = getattr(self, kind).networks
            if path:
                try:
                    nets = nets + read_network_file(path).networks
                except ConfigError as exc:
                    if exc.line is None:             # unreadable: point at our key
                        raise error(f"{kind}_file", exc.message + f": {path}") from None
                    raise
            merged[kind] = Networks(nets)
        return dataclasses.replace(self, **merged)


class IplistCheck(Check):
    name = "iplist"
    Options = IplistOptions
    symbols = {"IPLIST_ALLOW": -5.0, "IPLIST_BLOCK": 0.0}

    def on_connect(self, ctx):
        ip = ctx.conn.client_ip
        if ip is None:
            return None
        allow = self.options.allow.match(ip)
        block = self.options.block.match(ip)
        if block is not None and (allow is None or block.prefixlen >= allow.prefixlen):
            return self.result("fail", "IPLIST_BLOCK", f"{ip} in block list ({block})",
                               reply=Reply(Action.REJECT, 554, "5.7.1",
                                           f"{self.options.block_text} [{ip}]"))
        if allow is not None:
            return self.result("pass", "IPLIST_ALLOW", f"{ip} in allow list ({allow})",
                               tags=frozenset({Trust.ALLOWLISTED}))
        return None


CHECKS = (IplistCheck,)
