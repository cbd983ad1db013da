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

The authors of a message (RFC5322.From) are read the same way: by the
email package, bounded so that it cannot be made to recurse away, and by a
linear scanner that never recurses; :func:`authors` names every domain
either reading, or a reader of a broken field, could take for an author's.
Internationalized names become A-labels by one rule, UTS #46
(:func:`idna_to_ascii`), here and in URLs.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

import idna

__all__ = ["Route", "analyze", "normalize_domain", "DomainSet", "header_addresses",
           "Authors", "authors", "idna_to_ascii"]

# the email package parses a comment inside a comment, and a group inside a
# group ("a@b.example::::..."), by recursing: a From field of a few thousand
# "(" or ":" ends in RecursionError, in any check.  Fields beyond these
# bounds are not given to it; they are "unreadable" and read leniently.
MAX_COMMENT_DEPTH = 64
MAX_GROUPS = 8                  # ":" outside quotes, comments and <...>
MAX_FIELD_CHARS = 8192          # a From field no mail client writes longer
MAX_DOMAIN_CHARS = 1024         # input to normalize_domain (a DNS name: 253)
MAX_ADDRESS_CHARS = 1024        # an address given to analyze (RFC 5321: 256)
MAX_DOMAINS_KEPT = 64           # collected per message at most; the rest is overflow
MAX_DOMAIN_TOKENS = 256         # "@domain" tokens read per message; more is overflow


class AddressProblem(ValueError):
    pass


def idna_to_ascii(name: str) -> str:
    """``name`` with its U-labels as A-labels, by UTS #46 (non-transitional,
    so ``faß.de`` is ``xn--fa-hia.de``, not IDNA 2003's ``fass.de``).

    The one rule for internationalized names in mailwarden: addresses, From
    domains and URL hosts.  Raises AddressProblem for what it cannot map.
    """
    try:
        return idna.encode(name, uts46=True, std3_rules=False,
                           transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise AddressProblem(f"not a valid internationalized domain {name!r}") from None


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


# -- author addresses (RFC5322.From) ---------------------------------------------

@dataclass(frozen=True)
class Authors:
    """What the From field(s) of a message name as authors.

    ``addresses`` are the addr-specs the strict parser (the email package)
    read; ``domains`` every author domain found, normalized, in order of
    appearance: the strict parser's and those of every ``@domain`` outside
    quoted strings and comments (all of them, quoted or not, when quotes or
    comments do not balance, and those inside encoded words when nothing
    else names a domain).  A domain a reader could take for an author's is
    in ``domains``, so that a policy applied to every one of them cannot be
    dodged by shaping the field.  ``unreadable`` says why the strict parser
    could not be used or trusted ('' when it could).
    """

    fields: int = 0
    addresses: tuple = ()
    domains: tuple = ()
    groups: int = 0
    unreadable: str = ""
    overflow: bool = False          # more domains or tokens than are kept or read
    encoded: bool = False           # domains read from inside encoded words

    @property
    def single(self) -> bool:
        """Exactly one From field with exactly one address in one domain."""
        return (self.fields == 1 and not self.unreadable and not self.groups
                and not self.overflow and len(self.addresses) == 1
                and len(self.domains) == 1 and "@" in self.addresses[0])

    def irregular(self) -> str:
        """What RFC 5322 / RFC 7489 §6.6.1 would find odd, '' if nothing."""
        notes = []
        if self.fields != 1:
            notes.append(f"{self.fields} From header fields")
        if self.unreadable:
            notes.append(self.unreadable)
        if self.groups:
            notes.append("a group in From")
        if len(self.addresses) > 1:
            notes.append(f"{len(self.addresses)} addresses in From")
        if self.encoded:
            notes.append("domain read from an encoded word")
        return "; ".join(notes)


# specials the lenient scanner stops at; everything between is skipped at C speed
_SPECIAL = re.compile(r'["\\()\[\]<>:@]')
_TOKEN = re.compile(r'[ \t]*([^\s\x00-\x1f\x7f<>()\[\]",;:@\\]+)')
_RAW_DOMAIN = re.compile(r'@[ \t]*([^\s\x00-\x1f\x7f<>()\[\]",;:@\\]+)')
# a local part as the email package gives it back: a dot-atom (UTF-8 allowed,
# RFC 6532) or one quoted string; anything else is text it took for one
_LOCAL_PART = re.compile(r'(?:[A-Za-z0-9!#$%&\'*+/=?^_`{|}~.-]|[^\x00-\x7f])+'
                         r'|"(?:[^"\\]|\\.)*"')
# what a reader may still take for the domain when the whole token is none
_LDH_PREFIX = re.compile(r"[A-Za-z0-9._-]+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,40})\?([bBqQ])\?([^?\s]*)\?=")
_QP_ESCAPE = re.compile(r"=([0-9A-Fa-f]{2})")


def _scan(text: str) -> tuple:
    """(domain tokens outside quotes and comments, groups, balanced).

    Iterative and linear: it never recurses, whatever the nesting."""
    tokens: list = []
    groups = comment = angle = 0
    quoted = literal = False
    pos, n = 0, len(text)
    while pos < n:
        m = _SPECIAL.search(text, pos)
        if m is None:
            break
        ch, pos = m.group(), m.end()
        if ch == "\\":
            pos += 1                    # a quoted pair: the next character is data
        elif quoted:
            quoted = ch != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(ch, 0)
        elif literal:
            literal = ch != "]"
        elif ch == '"':
            quoted = True
        elif ch == "(":
            comment = 1
        elif ch == "[":
            literal = True
        elif ch == "<":
            angle += 1
        elif ch == ">":
            angle = max(0, angle - 1)
        elif ch == ":" and not angle:
            groups += 1
        elif ch == "@":
            t = _TOKEN.match(text, pos)
            if t is not None:
                tokens.append(t.group(1))
                pos = t.end()
    return tokens, groups, not (quoted or comment or literal)


def _decode_words(text: str) -> str:
    """Encoded words (RFC 2047) decoded as ASCII-compatible text; nothing else."""
    def word(m):
        data = m.group(3)
        try:
            if m.group(2) in "bB":
                raw = base64.b64decode(data + "=" * (-len(data) % 4))
            else:
                raw = _QP_ESCAPE.sub(lambda e: chr(int(e.group(1), 16)),
                                     data.replace("_", " ")).encode("latin-1")
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return m.group()
        return raw.decode("utf-8", "replace")
    return _ENCODED_WORD.sub(word, text)


def author_domain(text: str) -> Optional[str]:
    """``text`` as a normalized DNS domain, or None (literals are none)."""
    try:
        domain = normalize_domain(text)
    except AddressProblem:
        return None
    return None if domain.startswith("[") else domain


def _strict(value: str) -> tuple:
    """(addresses, why not) of one field by the email package, bounded."""
    if len(value) > MAX_FIELD_CHARS:
        return (), f"From header field longer than {MAX_FIELD_CHARS} characters"
    if _comment_depth(value) > MAX_COMMENT_DEPTH:
        return (), "From header field cannot be parsed: comments nested too deeply"
    try:
        pairs = email.utils.getaddresses([value])
    except (RecursionError, ValueError, LookupError, TypeError,
            AttributeError) as exc:
        # the email package's parser is not a closed set of failures; any of
        # them means the same: this field is not read by it
        return (), f"From header field cannot be parsed ({exc.__class__.__name__})"
    return tuple(addr for _name, addr in pairs if addr), ""


def authors(values) -> Authors:
    """Every author of a message, from the values of all its From fields."""
    addresses: list = []
    found: dict = {}
    overflow = False
    groups = 0
    why = ""

    read_as: dict = {}                  # token -> domain or None, each mapped once
    budget = MAX_DOMAIN_TOKENS

    def add(text: str) -> None:
        nonlocal overflow, budget
        if text in read_as:
            domain = read_as[text]
        elif budget <= 0:
            overflow = True
            return
        else:
            budget -= 1
            domain = author_domain(text)
            if domain is None:
                prefix = _LDH_PREFIX.match(text)
                if prefix is not None and prefix.end() < len(text):
                    domain = author_domain(prefix.group())
            read_as[text] = domain
        if domain is None or domain in found:
            return
        if len(found) >= MAX_DOMAINS_KEPT:
            overflow = True
            return
        found[domain] = None

    for value in values:
        tokens, field_groups, balanced = _scan(value)
        groups += field_groups
        problem = ""
        if not balanced:
            problem = "From header field has an unterminated quote, comment or literal"
        if field_groups > MAX_GROUPS:
            problem = problem or f"From header field has more than {MAX_GROUPS} groups"
            read: tuple = ()
        else:
            read, strict_problem = _strict(value)
            problem = problem or strict_problem
        seen = {author_domain(t) for t in tokens[:MAX_DOMAIN_TOKENS]}
        for addr in read:
            addresses.append(addr)
            if "@" in addr:
                local, _, domain = addr.rpartition("@")
                add(domain)
                mapped = author_domain(domain)
                if (mapped is not None and mapped not in seen) \
                        or not _LOCAL_PART.fullmatch(local):
                    # the email package took for an address what is none
                    # outside quotes and comments: trust neither reading
                    problem = problem or "From header field is read differently by two parsers"
        if problem:
            # no reading can be trusted: every @domain token, quoted or not
            tokens = _RAW_DOMAIN.findall(value)
            why = why or problem
        for token in tokens:
            add(token)
    encoded = False
    if not found:
        for value in values:
            decoded = _decode_words(value[:MAX_FIELD_CHARS])
            if decoded != value[:MAX_FIELD_CHARS]:
                for token in _RAW_DOMAIN.findall(decoded):
                    add(token)
        encoded = bool(found)
    return Authors(fields=len(values), addresses=tuple(addresses), domains=tuple(found),
                   groups=groups, unreadable=why, overflow=overflow, encoded=encoded)


def header_addresses(values) -> list | None:
    """``email.utils.getaddresses`` of header field values, or None when a
    value cannot be parsed safely (nested deeper, longer, or with more
    groups than any mail client writes, or the parser failed)."""
    out = []
    for value in values:
        if len(value) > MAX_FIELD_CHARS or _scan(value)[1] > MAX_GROUPS:
            return None
        if _comment_depth(value) > MAX_COMMENT_DEPTH:
            return None
        try:
            out.extend(email.utils.getaddresses([value]))
        except (RecursionError, ValueError, LookupError, TypeError,
                AttributeError):
            return None
    return out


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
    if len(d) > MAX_DOMAIN_CHARS:
        raise AddressProblem(f"domain longer than {MAX_DOMAIN_CHARS} characters")
    if not d.isascii():
        d = idna_to_ascii(d)
    d = d.lower()
    if len(d) > 253:
        raise AddressProblem("domain longer than 253 characters")
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
    if len(text) > MAX_ADDRESS_CHARS:
        return Route(address=text[:MAX_ADDRESS_CHARS], local_part="", domain="", hops=(),
                     problem=f"address longer than {MAX_ADDRESS_CHARS} characters")
    try:
        return _analyze(text)
    except AddressProblem as exc:
        return Route(address=text, local_part="", domain="", hops=(), problem=str(exc))
    except (RecursionError, ValueError, LookupError, TypeError) as exc:
        # a reading this module did not foresee: unreadable, which every
        # policy treats as refused, never as an error to let through
        return Route(address=text, local_part="", domain="", hops=(),
                     problem=f"unreadable address ({exc.__class__.__name__})")


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
