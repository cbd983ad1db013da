"""relay: no open relay, whatever the address tricks.

At RCPT TO, a recipient is accepted from any client only when every domain
the address could be routed to is one of ``[relay] local_domains`` (see
:mod:`mailwarden.address`: source routes, the ``%`` hack, bang paths, an
``@`` in the local part, quoted or not, trailing dots, case, address
literals).  Any other recipient, and any address that cannot be read
unambiguously, needs an authenticated client (``{auth_authen}``) or one in
``[relay] trusted_networks``; otherwise ``554 5.7.1 Relay access denied``
for that recipient alone.  A recipient without a domain (``<postmaster>``,
RFC 5321 §4.5.1) is local.

With ``[relay] local_domains`` and ``local_domains_file`` both empty the
check does nothing: the MTA's own relay rules decide.

INI keys (``[check.relay]``):
  enabled      yes
  reject_text  Relay access denied
The domains themselves are ``[relay] local_domains`` (inline) and
``[relay] local_domains_file`` (one per line), shared with ``submission``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..address import analyze
from ..options import opt, parse_str
from ..explain import clean
from ..model import Action, Reply, Trust
from . import Check, CheckOptions


@dataclass(frozen=True)
class RelayCheckOptions(CheckOptions):
    reject_text: str = opt("Relay access denied", parse_str)


class RelayCheck(Check):
    name = "relay"
    Options = RelayCheckOptions
    symbols = {"RELAY_DENIED": 0.0}
    # authenticated and trusted clients may relay: nothing to decide for them
    skip_for = frozenset({Trust.AUTHENTICATED, Trust.TRUSTED})
    fail_closed = True

    def runs_at(self, stage) -> bool:
        # no local domains: the MTA's own relay rules decide
        return bool(self.services.config.relay.local)

    def on_rcpt(self, ctx):
        local = self.services.config.relay.local
        if not local or ctx.rcpt is None:
            return None
        route = analyze(ctx.rcpt)
        if route.problem:
            why = f"unreadable recipient <{route.address}>: {route.problem}"
        else:
            foreign = [hop for hop in route.hops if hop not in local]
            if not foreign:
                return None
            why = (f"recipient <{route.address}> routes to non-local "
                   f"{', '.join(dict.fromkeys(foreign))}")
        ctx.log.info("relay denied: %s, client %s not authenticated nor trusted",
                     clean(why), clean(ctx.conn.label()))
        return self.result("fail", "RELAY_DENIED", why,
                           reply=Reply(Action.REJECT, 554, "5.7.1", self.options.reject_text))


CHECKS = (RelayCheck,)
