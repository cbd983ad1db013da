"""The one place that writes Authentication-Results (RFC 8601), and the one
that recognises forged ones.

Results are written in a fixed order of methods (iprev, auth, spf, dkim,
dmarc, then any other in name order), one resinfo per folded line.  An
incoming header is ours, and so forged, when its authserv-id matches
``[authserv] id`` case-insensitively after comments and folding are
skipped (RFC 8601 §5).

Everything a sender controls (SPF explanations, DKIM tags, PTR and HELO
names, addresses) is data here, never structure: a strict RFC 8601 parser
(authres's) must read the header back to exactly the methods, results,
reasons and properties written.  So

* text is made printable ASCII (anything else becomes ``?``) and bounded;
* a ``reason`` is a token or a quoted-string;
* a property value is a token, an address (``local@domain``, ``@domain``,
  ``"quoted local"@domain``) as is, or else a quoted-string;
* authres reads a quoted-string pvalue only at the end of a resinfo, so
  each resinfo writes at most one, last, and drops any further one;
* a comment loses its parentheses and backslashes.

tests/unit/test_authresults.py holds this to any text (hypothesis) and pins
the authres behaviour it is shaped for.  The header is not parsed back at
run time: authres's parser costs about 1.3 ms per message.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from .model import Result

HEADER = "Authentication-Results"
METHOD_ORDER = ("iprev", "auth", "spf", "dkim", "dmarc", "arc")
FOLD = "\n\t"
PTYPES = ("smtp", "header", "body", "policy")

MAX_REASON = 200            # characters of a reason kept
MAX_VALUE = 320             # of a property value (a full address fits)
MAX_COMMENT = 200           # of a property comment
MAX_LINE = 900              # a folded line, well under RFC 5322's 998

_UNSAFE = re.compile(r"[^\x20-\x7e]")
# RFC 2045 token: printable ASCII without SP and tspecials
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
# [local-part] "@" domain-name, local-part a dot-atom or a quoted-string
_QUOTED = r"\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])+\""
_ADDRESS = re.compile(rf"(?:{_ATOM}(?:\.{_ATOM})*|{_QUOTED})?@{_DOMAIN}")
_KEY_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+?^_`{|}~-]+)*")
_RESULT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")


def _clean(value, most: int) -> str:
    """Nothing from the network may break the header: no controls, no 8-bit,
    no endless text."""
    text = str(value)
    if text.isascii() and text.isprintable():      # already \x20-\x7e: the usual case
        return text[:most]
    return _UNSAFE.sub("?", text)[:most]


def _comment(text) -> str:
    """A comment must not close itself early or nest: parentheses go."""
    return _clean(text, MAX_COMMENT).replace("(", "[").replace(")", "]").replace("\\", "/")


def quoted(text: str) -> str:
    """``text`` as an RFC 5322 quoted-string."""
    return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'


def plain_value(value: str) -> bool:
    """Whether a pvalue may be written as is: a token or an address."""
    return bool(_TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value))


def _order(result: Result):
    try:
        return (METHOD_ORDER.index(result.method), "")
    except ValueError:
        return (len(METHOD_ORDER), result.method)


# what the checks' code names (methods, results, property keys) repeats with
# every message: read once, remembered (bounded: it is not sender data)
_KNOWN: dict = {}
_KNOWN_MAX = 1024


def _writable(method: str, result: str) -> bool:
    """Whether a resinfo ``method=result`` may be written at all."""
    key = (method, result)
    ok = _KNOWN.get(key)
    if ok is None:
        ok = bool(_KEY_ATOM.fullmatch(method) and _RESULT.fullmatch(result))
        if len(_KNOWN) < _KNOWN_MAX:
            _KNOWN[key] = ok
    return ok


def _property_key(name) -> Optional[str]:
    """``ptype.property`` in lower case, or None when it may not be written."""
    found = _KNOWN.get(name, False) if isinstance(name, str) else False
    if found is False:
        key = str(name).lower()
        ptype, _, pname = key.partition(".")
        found = key if ptype in PTYPES and _KEY_ATOM.fullmatch(pname) else None
        if isinstance(name, str) and len(_KNOWN) < _KNOWN_MAX:
            _KNOWN[name] = found
    return found


def written(results: Iterable[Result]) -> list:
    """What the header says, per resinfo: ``(method, result, reason or None,
    [(ptype.property, value, comment or None), ...])``, texts cleaned and
    bounded, unquoted, in the order they are written."""
    reported = [r for r in results if r.method and _writable(r.method, r.result)]
    reported.sort(key=_order)            # stable: a check's own order is kept
    out = []
    for r in reported:
        reason = _clean(r.reason, MAX_REASON) if r.reason else None
        plain, quoted_one = [], None
        for prop in r.properties:           # (key, value) or (key, value, comment)
            key = _property_key(prop[0])
            if key is None:
                continue
            value = _clean(prop[1], MAX_VALUE)
            comment = _comment(prop[2]) if len(prop) > 2 and prop[2] else None
            if plain_value(value):
                plain.append((key, value, comment))
            elif quoted_one is None:
                quoted_one = (key, value, comment)
            # a further value that needs quoting is dropped: see the docstring
        out.append((r.method.lower(), r.result.lower(), reason,
                    plain + ([quoted_one] if quoted_one else [])))
    return out


def _render(info) -> list:
    """One resinfo as words, to be joined by a space or a fold."""
    method, result, reason, props = info
    words = [f"{method}={result}"]
    if reason is not None:
        words.append("reason=" + (reason if _TOKEN.fullmatch(reason) else quoted(reason)))
    for key, value, comment in props:
        word = f"{key}={value if plain_value(value) else quoted(value)}"
        if comment is not None:
            word += f" ({comment})"
        words.append(word)
    return words


def _join(words: list) -> str:
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > MAX_LINE:
            lines.append(word)
        else:
            lines[-1] += " " + word
    return FOLD.join(lines)


def _value(authserv_id: str, infos: list) -> str:
    if not infos:
        return f"{authserv_id}; none"
    return f"{authserv_id};{FOLD}" + f";{FOLD}".join(_join(_render(i)) for i in infos)


def build(authserv_id: str, results: Iterable[Result]) -> str:
    """The header value: ``id;`` then one resinfo per folded line."""
    return _value(authserv_id, written(results))


def _skip_cfws(text: str, i: int) -> int:
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch == "(":
            depth = 0
            while i < n:
                ch = text[i]
                if ch == "\\":
                    i += 2
                    continue
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def authserv_id_of(value: str) -> Optional[str]:
    """The authserv-id an A-R header value claims, or None if it has none."""
    i = _skip_cfws(value, 0)
    if i >= len(value):
        return None
    if value[i] == '"':
        out = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            out.append(value[i])
            i += 1
        ident = "".join(out)
    else:
        m = re.match(r"[^\s;()\"]+", value[i:])
        ident = m.group(0) if m else ""
    ident = ident.strip().rstrip(".").lower()
    return ident or None


def forged(authserv_id: str, headers: Iterable[tuple], status_header: str = "") -> list:
    """(name, value, index) of each incoming header that would speak for us:
    an A-R claiming our id, and any ``status_header`` field (``[policy]
    status_header``) whatever it says, since a Sieve rule may trust it.

    ``index`` counts occurrences of that header name from 1, as milter's
    chgheader wants.  ``headers`` are (name, raw bytes value) pairs.
    """
    ours = authserv_id.rstrip(".").lower()
    status = status_header.lower()
    out = []
    counts: dict = {}
    for name, raw in headers:
        lower = name.lower()
        if lower not in (HEADER.lower(), status):
            continue
        index = counts[lower] = counts.get(lower, 0) + 1
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if lower == status or authserv_id_of(value) == ours:
            out.append((name, value.strip(), index))
    return out


# -- reading an A-R (or ARC-Authentication-Results) value ---------------------

def _split_top(text: str, sep: str = ";") -> list:
    """``text`` cut at each ``sep`` outside comments and quoted-strings."""
    parts, start, depth, quoted_ = [], 0, 0, False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and (depth or quoted_):
            i += 2
            continue
        if quoted_:
            quoted_ = ch != '"'
        elif ch == '"' and not depth:
            quoted_ = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == sep and not depth:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def _strip_comments(text: str) -> str:
    out, depth, quoted_, i = [], 0, False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and (depth or quoted_):
            if not depth:
                out.append(text[i:i + 2])
            i += 2
            continue
        if quoted_:
            quoted_ = ch != '"'
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            out.append(" ")
        elif not depth:
            quoted_ = ch == '"'
            out.append(ch)
        i += 1
    return "".join(out)


_PROP = re.compile(r'([A-Za-z0-9_-]+)\.([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;"]+)')
_METHOD = re.compile(r"\s*([A-Za-z0-9_.-]+)(?:/[0-9]+)?\s*=\s*([A-Za-z0-9_-]+)")
_REASON = re.compile(r'\breason\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;"]+)', re.I)


def _unquote(value: str) -> str:
    if value.startswith('"') and value.endswith('"') and len(value) > 1:
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def resinfo_texts(value: str) -> tuple:
    """(authserv-id, [resinfo text, ...]) of an A-R value, each resinfo as
    written (comments kept, folding made one space); ``none`` gives no
    resinfo.  Lenient: made for reading what other hosts wrote, never for
    deciding that a header is ours."""
    flat = " ".join(value.replace("\r", " ").replace("\n", " ").split())
    parts = [p.strip() for p in _split_top(flat)]
    head = _strip_comments(parts[0]).split()
    ident = head[0].lower() if head else ""
    infos = [p for p in parts[1:] if p and _strip_comments(p).strip().lower() != "none"]
    return ident, infos


def read_resinfo(text: str) -> Optional[tuple]:
    """One resinfo text -> (method, result, reason, ((ptype.property,
    value), ...)), all lower case but the values; None if it is no
    ``method=result``.  Comments are dropped."""
    bare = _strip_comments(text)
    m = _METHOD.match(bare)
    if m is None:
        return None
    rest = bare[m.end():]
    reason = _REASON.search(rest)
    props = tuple((f"{p.group(1).lower()}.{p.group(2).lower()}", _unquote(p.group(3)))
                  for p in _PROP.finditer(rest))
    return (m.group(1).lower(), m.group(2).lower(),
            _unquote(reason.group(1)) if reason else "", props)
