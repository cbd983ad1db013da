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

The map file has one login per line: ``LOGIN: ITEM, ITEM ...`` where an item
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
import os
import threading
from dataclasses import dataclass, field
from typing import Optional

from ..address import AddressProblem, authors, normalize_domain
from ..config import ConfigError, opt, parse_bool, parse_path, parse_str
from ..explain import clean
from ..model import Reply
from . import Check, CheckOptions

log = logging.getLogger("mailwarden")


class MapProblem(ValueError):
    pass


def split_address(address: str, delimiters: str = "") -> Optional[tuple]:
    """``(local, domain)`` lower-cased, extension removed; None if no address."""
    address = address.strip()
    at = address.rfind("@")
    if at <= 0:
        return None
    local, domain_text = address[:at], address[at + 1:]
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = local[1:-1]
    try:
        domain = normalize_domain(domain_text)
    except AddressProblem:
        return None
    local = local.lower()
    for delim in delimiters:
        # "+" alone is no extension: keep such a local part whole
        cut = local.find(delim)
        if cut > 0:
            local = local[:cut]
    return local, domain


@dataclass(frozen=True)
class LoginMap:
    """login -> (addresses, domains, anything)."""

    entries: dict = field(default_factory=dict)

    def allows(self, login: str, address: str, delimiters: str) -> bool:
        entry = self.entries.get(login.strip().lower())
        if entry is None:
            return False
        addresses, domains, anything = entry
        if anything:
            return True
        parts = split_address(address, delimiters)
        if parts is None:
            return False
        local, domain = parts
        return f"{local}@{domain}" in addresses or domain in domains


def from_refusal(login_map: LoginMap, login: str, froms: list, delimiters: str) -> Optional[str]:
    """Why the From field (``froms``, the values of every From field) is not
    ``login``'s to use, or None when it is: exactly one From field, every
    address in it readable and given to the login by ``login_map``.  The
    one rule for this check's refusal and for dkim_sign, which signs an
    authenticated client's mail only when this lets it through."""
    if len(froms) != 1:
        return f"Message must have exactly one From header field, has {len(froms)}"
    found = authors(froms)
    # fail closed: what the parser cannot read, or reads otherwise than a
    # lenient reader would, is refused, never let through as an error
    if found.unreadable or found.overflow or not found.addresses or any(
            "@" not in addr for addr in found.addresses):
        return "Unreadable From header field"
    for addr in found.addresses:
        if not login_map.allows(login, addr, delimiters):
            return f"From address <{_shown(addr)}> not owned by user {login}"
    owned = {parts[1] for parts in (split_address(a) for a in found.addresses) if parts}
    other = [d for d in found.domains if d not in owned]
    if other:
        return f"From header field also names {other[0]}"
    return None


def parse_login_map(lines, delimiters: str) -> LoginMap:
    """Raises MapProblem(lineno, message) for the first bad line."""
    entries: dict = {}
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        login, colon, rest = text.partition(":")
        login = login.strip().lower()
        if not colon or not login or any(c.isspace() for c in login):
            raise MapProblem(lineno, "expected LOGIN: ADDRESS, @DOMAIN or *")
        items = [i for i in rest.replace(",", " ").split() if i]
        if not items:
            raise MapProblem(lineno, f"login {login!r} has no address")
        addresses, domains, anything = entries.get(login, (set(), set(), False))
        for item in items:
            if item == "*":
                anything = True
            elif item.startswith("@"):
                try:
                    domains.add(normalize_domain(item[1:]))
                except AddressProblem as exc:
                    raise MapProblem(lineno, f"{item!r}: {exc}") from None
            else:
                parts = split_address(item, delimiters)
                if parts is None:
                    raise MapProblem(lineno, f"not an address, @domain or *: {item!r}")
                addresses.add(f"{parts[0]}@{parts[1]}")
        entries[login] = (addresses, domains, anything)
    return LoginMap({k: (frozenset(a), frozenset(d), any_) for k, (a, d, any_) in entries.items()})


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_login_map(path: str, delimiters: str) -> tuple:
    """(LoginMap, stamp); ConfigError located at ``path:line``."""
    try:
        stamp = _stamp(path)
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise ConfigError(path, None, None, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, None, None, f"not UTF-8 text: {exc.reason}") from None
    try:
        return parse_login_map(lines, delimiters), stamp
    except MapProblem as exc:
        raise ConfigError(path, exc.args[0], None, None, exc.args[1]) from None


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


class LoginMapFile:
    """The login map, read again when its file changes (thread-safe)."""

    def __init__(self, options: SubmissionOptions):
        self.path = options.sender_login_map
        self.delimiters = options.extension_delimiters
        self.current = options.login_map
        self.stamp = options.login_map_stamp
        self._lock = threading.Lock()

    def get(self, ctx) -> LoginMap:
        try:
            stamp = _stamp(self.path)
        except OSError as exc:
            ctx.log.error("sender_login_map %s: %s; keeping the map read before",
                          self.path, exc.strerror)
            return self.current
        if stamp == self.stamp:
            return self.current
        with self._lock:
            if stamp != self.stamp:
                try:
                    self.current, self.stamp = read_login_map(self.path, self.delimiters)
                    ctx.log.info("sender_login_map %s read again (%d logins)",
                                 self.path, len(self.current.entries))
                except ConfigError as exc:
                    # do not retry a broken file on every message: wait for the next change
                    self.stamp = stamp
                    ctx.log.error("sender_login_map: %s; keeping the map read before", exc)
        return self.current


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
        self._map = LoginMapFile(options) if options.login_map is not None else None

    def _refuse(self, symbol: str, why: str, ctx):
        ctx.log.warning("submission refused for login %s: %s", clean(ctx.conn.auth_user),
                        clean(why))
        return self.result("fail", symbol, why,
                           reply=Reply("reject", 553, "5.7.1", why))

    def on_mail(self, ctx):
        conn, msg = ctx.conn, ctx.msg
        if conn.authenticated:
            if self.options.require_tls_for_auth and not conn.tls_version:
                ctx.log.warning("authenticated submission by %s without TLS refused",
                                clean(conn.auth_user))
                return self.result("fail", "SUBMISSION_NO_TLS",
                                   f"login {conn.auth_user} without TLS",
                                   reply=Reply("reject", 530, "5.7.0",
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
        if not local or ctx.trust != "other" or not msg.mail_from:
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


def _shown(text: str, limit: int = 200) -> str:
    """An address for a reply: printable ASCII only, bounded."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


CHECKS = (SubmissionCheck,)
