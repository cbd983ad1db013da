"""Where a mail address really goes: RFC 5321 paths and the relay tricks.

An MTA does not only route on the text after the last ``@``.  Depending on
its settings (Postfix ``allow_percent_hack``, ``swap_bangpath``,
``resolve_dequoted_address``; Sendmail's rulesets) it also honours

* source routes ``@hop1,@hop2:user@domain`` (RFC 5321 §4.1.1.3, C.),
* the ``%`` hack ``user%other@local`` (routes to ``user@other``),
* UUCP bang paths ``other!user@local`` (routes to ``other``),
* ``@`` inside the local part, quoted or not: ``"user@other"@local`` and
  ``user@other@local`` (the local part is re-parsed as an address),

and it routes ``other.example.`` like ``other.example`` and ``OTHER.example``
like ``other.example``.  :func:`analyze` collects every domain that any of
those readings could send the message to (``hops``), so that a relay check
can demand that *all* of them be local, and flags what cannot be read
unambiguously (``problem``).
"""

from __future__ import annotations

import email.utils
import ipaddress
from dataclasses import dataclass

__all__ = ["Route", "analyze", "normalize_domain", "DomainSet", "header_addresses"]

# the email package parses a comment inside a comment by recursing: a From
# field of a few thousand "(" would end in RecursionError, in any check
MAX_COMMENT_DEPTH = 64


def _comment_depth(text: str) -> int:
    depth = deepest = 0
    escaped = quoted = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"' and not depth:
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")" and depth:
            depth -= 1
    return deepest


def header_addresses(values) -> list | None:
    """``email.utils.getaddresses`` of header field values, or None when a
    value cannot be parsed safely (comments nested deeper than any mail
    client writes them)."""
    if any(_comment_depth(v) > MAX_COMMENT_DEPTH for v in values):
        return None
    return email.utils.getaddresses(values)


@dataclass(frozen=True)
class Route:
    address: str            # as given, brackets stripped
    local_part: str         # dequoted
    domain: str             # normalized domain after the last unquoted "@", or ""
    hops: tuple = ()        # every domain some reading of the address routes to
    problem: str = ""       # non-empty: the address cannot be read unambiguously

    @property
    def ok(self) -> bool:
        return not self.problem


class AddressProblem(ValueError):
    pass


def normalize_domain(text: str) -> str:
    """Lower case, one trailing dot dropped, IDNs as A-labels, literals checked.

    ``[203.0.113.5]`` stays a literal (``[203.0.113.5]``, ``[ipv6:2001:db8::1]``
    normalized); raises AddressProblem for what is no domain.
    """
    d = text.strip()
    if d.startswith("[") or d.endswith("]"):
        if not (d.startswith("[") and d.endswith("]")):
            raise AddressProblem(f"unbalanced address literal {text!r}")
        inner = d[1:-1].strip()
        if inner[:5].lower() == "ipv6:":
            try:
                return f"[ipv6:{ipaddress.IPv6Address(inner[5:])}]"
            except ValueError:
                raise AddressProblem(f"bad IPv6 address literal {text!r}") from None
        try:
            return f"[{ipaddress.IPv4Address(inner)}]"
        except ValueError:
            raise AddressProblem(f"bad address literal {text!r}") from None
    if d.endswith("."):
        d = d[:-1]
    if not d:
        raise AddressProblem("empty domain")
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            raise AddressProblem(f"not a valid internationalized domain {text!r}") from None
    d = d.lower()
    labels = d.split(".")
    for label in labels:
        if not label or len(label) > 63:
            raise AddressProblem(f"bad domain {text!r}")
        if not all(c.isalnum() or c in "-_" for c in label):
            raise AddressProblem(f"bad character in domain {text!r}")
    return d


def _split_quoted(text: str) -> tuple:
    """``"quoted"@rest`` -> (dequoted, rest after the closing quote)."""
    out = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                raise AddressProblem("backslash at the end of a quoted string")
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), text[i + 1:]
        out.append(ch)
        i += 1
    raise AddressProblem("unterminated quoted string")


def _unescape(text: str) -> str:
    """Backslash escapes outside quotes (some MTAs accept them)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _strip_source_route(text: str, hops: list) -> str:
    """``@a,@b:mailbox`` -> mailbox, the route's domains appended to ``hops``."""
    colon = text.find(":")
    if colon < 0:
        raise AddressProblem("source route without ':'")
    for part in text[:colon].split(","):
        part = part.strip()
        if not part.startswith("@"):
            raise AddressProblem(f"bad source route element {part!r}")
        hops.append(normalize_domain(part[1:]))
    return text[colon + 1:]


def _local_part_hops(local: str, hops: list, depth: int) -> None:
    """Domains hidden in a local part: ``%``, ``!`` and a nested ``@``."""
    if depth > 8:
        raise AddressProblem("address nested too deeply")
    if "@" in local:
        inner = _analyze(local, depth + 1)
        hops.extend(inner.hops)
        return
    if "%" in local:
        parts = local.split("%")
        for part in parts[1:]:
            hops.append(normalize_domain(part))
        local = parts[0]
    if "!" in local:
        parts = local.split("!")
        if not parts[-1]:
            raise AddressProblem("bang path without a user")
        for part in parts[:-1]:
            hops.append(normalize_domain(part))


def _analyze(text: str, depth: int = 0) -> Route:
    hops: list = []
    s = text.strip()
    if s.startswith("@"):
        s = _strip_source_route(s, hops)
    if s.startswith('"'):
        local, rest = _split_quoted(s)
        if rest and not rest.startswith("@"):
            raise AddressProblem("text after a quoted local part")
        domain_text = rest[1:] if rest else None
    else:
        if '"' in s:
            raise AddressProblem("quote inside an unquoted local part")
        at = s.rfind("@")
        if at < 0:
            local, domain_text = _unescape(s), None
        else:
            local, domain_text = _unescape(s[:at]), s[at + 1:]
    if not local:
        raise AddressProblem("empty local part")
    _local_part_hops(local, hops, depth)
    domain = ""
    if domain_text is not None:
        domain = normalize_domain(domain_text)
        hops.append(domain)
    return Route(address=text, local_part=local, domain=domain, hops=tuple(hops))


def analyze(address: str) -> Route:
    """Read ``address`` (angle brackets optional) as every MTA might."""
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    try:
        return _analyze(text)
    except AddressProblem as exc:
        return Route(address=text, local_part="", domain="", hops=(), problem=str(exc))


@dataclass(frozen=True)
class DomainSet:
    """Domain names; an entry ``.example.org`` also holds every subdomain."""

    exact: frozenset = frozenset()
    parents: tuple = ()

    @classmethod
    def of(cls, names) -> "DomainSet":
        exact, parents = set(), []
        for name in names:
            if name.startswith(".") and len(name) > 1:
                parents.append(normalize_domain(name[1:]))
            else:
                exact.add(normalize_domain(name))
        return cls(frozenset(exact), tuple(sorted(set(parents))))

    def __contains__(self, domain: str) -> bool:
        if domain in self.exact:
            return True
        return any(domain.endswith("." + p) for p in self.parents)

    def __bool__(self) -> bool:
        return bool(self.exact or self.parents)

    def __or__(self, other: "DomainSet") -> "DomainSet":
        return DomainSet(self.exact | other.exact,
                         tuple(sorted(set(self.parents) | set(other.parents))))
