"""submission: what an authenticated client may send, and who may claim us.

* ``require_tls_for_auth``: an authenticated client without TLS (empty
  ``{tls_version}``) is refused at MAIL FROM with ``530 5.7.0``, so that
  passwords never cross the wire in clear.
* ``sender_login_map``: which addresses each SMTP AUTH login may use.  An
  authenticated client's MAIL FROM, and every address of the message's
  RFC5322.From, must be the login's: ``553 5.7.1`` otherwise (MAIL FROM is
  refused at MAIL, a forged From at end of data).  A login absent from the
  map may use no address.  The null sender is allowed (delivery reports);
  its From header is still checked.  Empty ``sender_login_map``: no sender
  restriction.
* A client neither authenticated nor trusted whose MAIL FROM is in
  ``[relay] local_domains`` gets ``SUBMISSION_LOCAL_SENDER_UNAUTH``: our own
  users submit with AUTH, so this is most often a forgery.

The map file (read by :mod:`mailwarden.loginmap`, which dkim_sign uses too)
has one login per line: ``LOGIN: ITEM, ITEM ...`` where an item
is an address (``alice@example.org``), ``@domain`` (any address there) or
``*`` (any address); ``#`` starts a comment.  Logins and addresses compare
case-insensitively, and an address extension (``alice+news@...``, see
``extension_delimiters``) is ignored.  A bad line is refused at start-up
with ``path:line``; the file is read again when it changes (an unreadable or
bad new version is logged and the previous one kept).

INI keys (``[check.submission]``):
  enabled                yes
  require_tls_for_auth   yes
  sender_login_map       (empty)  path of the map file
  extension_delimiters   +        characters that start an address extension
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Optional

from ..options import ConfigError, opt, parse_bool, parse_path, parse_str
from ..explain import clean
from ..loginmap import LoginMap, LoginMapFile, from_refusal, read_login_map, split_address
from ..model import Action, Reply, Trust
from . import Check, CheckOptions

log = logging.getLogger("mailwarden")


@dataclass(frozen=True)
class SubmissionOptions(CheckOptions):
    require_tls_for_auth: bool = opt(True, parse_bool)
    sender_login_map: str = opt("", parse_path)
    extension_delimiters: str = opt("+", parse_str)
    # read by resolve(), never from the INI
    login_map: Optional[LoginMap] = field(default=None)
    login_map_stamp: tuple = field(default=())

    def resolve(self, error):
        if not self.sender_login_map:
            return self
        try:
            login_map, stamp = read_login_map(self.sender_login_map, self.extension_delimiters)
        except ConfigError as exc:
            if exc.line is None:
                raise error("sender_login_map", exc.message + f": {self.sender_login_map}") \
                    from None
            raise
        return dataclasses.replace(self, login_map=login_map, login_map_stamp=stamp)


class SubmissionCheck(Check):
    name = "submission"
    Options = SubmissionOptions
    fail_closed = True
    symbols = {
        "SUBMISSION_NO_TLS": 0.0,
        "SUBMISSION_SENDER_MISMATCH": 0.0,
        "SUBMISSION_FROM_MISMATCH": 0.0,
        "SUBMISSION_LOCAL_SENDER_UNAUTH": 3.0,
    }

    def __init__(self, options, services):
        super().__init__(options, services)
        self._map = LoginMapFile.of(options)

    def _refuse(self, symbol: str, why: str, ctx):
        ctx.log.warning("submission refused for login %s: %s", clean(ctx.conn.auth_user),
                        clean(why))
        return self.result("fail", symbol, why,
                           reply=Reply(Action.REJECT, 553, "5.7.1", why))

    def on_mail(self, ctx):
        conn, msg = ctx.conn, ctx.msg
        if conn.authenticated:
            if self.options.require_tls_for_auth and not conn.tls_version:
                ctx.log.warning("authenticated submission by %s without TLS refused",
                                clean(conn.auth_user))
                return self.result("fail", "SUBMISSION_NO_TLS",
                                   f"login {conn.auth_user} without TLS",
                                   reply=Reply(Action.REJECT, 530, "5.7.0",
                                               "Authenticated submission requires TLS"))
            if self._map is None or not msg.mail_from:
                return None
            if not self._map.get(ctx).allows(conn.auth_user, msg.mail_from,
                                             self.options.extension_delimiters):
                return self._refuse("SUBMISSION_SENDER_MISMATCH",
                                    f"Sender address <{msg.mail_from}> not owned by user "
                                    f"{conn.auth_user}", ctx)
            return None
        local = self.services.config.relay.local
        if not local or ctx.trust != Trust.OTHER or not msg.mail_from:
            return None
        parts = split_address(msg.mail_from)
        if parts is not None and parts[1] in local:
            return self.result("fail", "SUBMISSION_LOCAL_SENDER_UNAUTH",
                               f"unauthenticated client {conn.label()} uses local sender "
                               f"<{msg.mail_from}>")
        return None

    def on_eom(self, ctx):
        conn = ctx.conn
        if not conn.authenticated or self._map is None:
            return None
        why = from_refusal(self._map.get(ctx), conn.auth_user, ctx.msg.header_texts("From"),
                           self.options.extension_delimiters)
        if why is not None:
            return self._refuse("SUBMISSION_FROM_MISMATCH", why, ctx)
        return None


CHECKS = (SubmissionCheck,)
