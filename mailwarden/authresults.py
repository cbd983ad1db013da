"""The one place that writes Authentication-Results (RFC 8601), and the one
that recognises forged ones.

Results are written in a fixed order of methods (iprev, auth, spf, dkim,
dmarc, then any other in name order), one resinfo per folded line.  An
incoming header is ours, and so forged, when its authserv-id matches
``[authserv] id`` case-insensitively after comments and folding are
skipped (RFC 8601 §5).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import authres

from .model import Result

HEADER = "Authentication-Results"
METHOD_ORDER = ("iprev", "auth", "spf", "dkim", "dmarc", "arc")
FOLD = "\n\t"

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _clean(value: str) -> str:
    """Nothing from the network may break the header: no controls, no 8-bit."""
    return _UNSAFE.sub("?", value)


def _comment(text: str) -> str:
    """A comment must not close itself early or nest: parentheses go."""
    return _clean(str(text)).replace("(", "[").replace(")", "]").replace("\\", "/")


_TOKEN = re.compile(r"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f-\uffff]+")
_MAILBOX = re.compile(r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)?"
                      r"@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class _PValue(str):
    """An RFC 8601 pvalue: a token or an address as is, anything else quoted.

    authres leaves any value with an "@" unquoted, spaces and all, and fails
    on an empty one; a sender address is the client's to choose.
    """

    def quote_if_needed(self) -> str:
        if _TOKEN.fullmatch(self) or _MAILBOX.fullmatch(self):
            return str(self)
        return '"' + re.sub(r'(["\\])', r"\\\1", self) + '"'


def _property(ptype: str, pname: str, value: str, comment):
    prop = authres.core.AuthenticationResultProperty(ptype, pname, None, comment)
    prop.value = _PValue(value)
    return prop


def _order(result: Result):
    try:
        return (METHOD_ORDER.index(result.method), "")
    except ValueError:
        return (len(METHOD_ORDER), result.method)


def resinfos(results: Iterable[Result]) -> list:
    """authres result objects for every result that names a method, in order."""
    reported = [r for r in results if r.method]
    reported.sort(key=_order)            # stable: a check's own order is kept
    out = []
    for r in reported:
        props = []
        for prop in r.properties:           # (key, value) or (key, value, comment)
            key, value = prop[0], prop[1]
            comment = _comment(prop[2]) if len(prop) > 2 and prop[2] else None
            ptype, _, pname = key.partition(".")
            props.append(_property(ptype, pname, _clean(str(value)), comment))
        out.append(authres.AuthenticationResult(
            method=r.method, result=r.result, reason=_clean(r.reason) if r.reason else None,
            properties=props))
    return out


def build(authserv_id: str, results: Iterable[Result]) -> str:
    """The header value: ``id;`` then one resinfo per folded line."""
    parts = [str(info) for info in resinfos(results)]
    if not parts:
        return f"{authserv_id}; none"
    return f"{authserv_id};{FOLD}" + f";{FOLD}".join(parts)


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


def forged(authserv_id: str, headers: Iterable[tuple]) -> list:
    """(name, value, index) of each incoming A-R header claiming our id.

    ``index`` counts occurrences of that header name from 1, as milter's
    chgheader wants.  ``headers`` are (name, raw bytes value) pairs.
    """
    ours = authserv_id.rstrip(".").lower()
    out = []
    index = 0
    for name, raw in headers:
        if name.lower() != HEADER.lower():
            continue
        index += 1
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if authserv_id_of(value) == ours:
            out.append((name, value.strip(), index))
    return out
