"""size: the maximum message size, declared and real.

At MAIL FROM the ESMTP ``SIZE=`` parameter (RFC 1870) is compared with the
limit; while the body arrives the bytes actually received (header and body)
are counted and the transaction is refused as soon as they pass the limit,
without reading the rest.  Both answer ``552 5.3.4`` (RFC 3463: message too
big for system).

INI keys (``[check.size]``):
  enabled            yes
  max_size           25M     bytes, with K, M or G; 0 means no limit
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import opt, parse_size
from ..model import Action, Reply
from . import Check, CheckOptions


@dataclass(frozen=True)
class SizeOptions(CheckOptions):
    max_size: int = opt(25 * 1024 * 1024, parse_size)


class SizeCheck(Check):
    name = "size"
    Options = SizeOptions
    symbols = {"SIZE_DECLARED_EXCEEDED": 0.0, "SIZE_EXCEEDED": 0.0}

    def _reply(self) -> Reply:
        return Reply(Action.REJECT, 552, "5.3.4",
                     f"Message size exceeds fixed limit of {self.options.max_size} bytes")

    def on_mail(self, ctx):
        limit = self.options.max_size
        declared = ctx.msg.mail_params.get("SIZE", "")
        if not limit or not declared.isdigit():
            return None
        if int(declared) > limit:
            return self.result("fail", "SIZE_DECLARED_EXCEEDED",
                               f"declared SIZE={int(declared)} > {limit}", reply=self._reply())
        return None

    def on_body(self, ctx):
        limit = self.options.max_size
        if limit and ctx.msg.size > limit:
            return self.result("fail", "SIZE_EXCEEDED",
                               f"received more than {limit} bytes", reply=self._reply())
        return None


CHECKS = (SizeCheck,)
