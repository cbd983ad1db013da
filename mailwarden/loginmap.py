"""The sender login map: which addresses each SMTP AUTH login may use.

Read by two checks: ``submission`` refuses what a login may not send, and
``dkim_sign`` signs an authenticated client's mail only when the same rule
(:func:`from_refusal`) lets it through.  It lives here, outside
``checks/``, so that neither check imports the other.

The file (``[check.submission] sender_login_map``) has one login per line:
``LOGIN: ITEM, ITEM ...`` where an item is an address
(``alice@example.org``), ``@domain`` (any address there) or ``*`` (any
address); ``#`` starts a comment.  Logins and addresses compare
case-insensitively, and an address extension (``alice+news@...``, after
one of the extension delimiters) is ignored.  A bad line is a
:class:`~mailwarden.options.ConfigError` at ``path:line``;
:class:`LoginMapFile` reads the file again when it changes, keeping the
previous map when the new one is unreadable or bad.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Optional

from .address import AddressProblem, authors, normalize_domain
from .options import ConfigError, read_text_file


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
    one rule for submission's refusal and for dkim_sign, which signs an
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
    except OSError as exc:
        raise ConfigError(path, None, None, None, f"cannot read: {exc.strerror}") from None
    lines = read_text_file(path).splitlines()
    try:
        return parse_login_map(lines, delimiters), stamp
    except MapProblem as exc:
        raise ConfigError(path, exc.args[0], None, None, exc.args[1]) from None


class LoginMapFile:
    """The login map, read again when its file changes (thread-safe)."""

    def __init__(self, path: str, delimiters: str, current: LoginMap, stamp: tuple):
        self.path = path
        self.delimiters = delimiters
        self.current = current
        self.stamp = stamp
        self._lock = threading.Lock()

    @classmethod
    def of(cls, options) -> Optional["LoginMapFile"]:
        """The map of ``[check.submission]`` options (read by their
        ``resolve()`` at start-up), or None when they give no map."""
        if getattr(options, "login_map", None) is None:
            return None
        return cls(options.sender_login_map, options.extension_delimiters,
                   options.login_map, options.login_map_stamp)

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


def _shown(text: str, limit: int = 200) -> str:
    """An address for a reply: printable ASCII only, bounded."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return out + ("..." if len(text) > limit else "")
