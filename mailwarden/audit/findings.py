"""Findings of an audit, and the one way they are printed.

Every audit (``audit DOMAIN``, ``audit-postfix``, ``probe``, ``audit-host``)
returns a list of :class:`Finding`; :func:`render` prints them as a table
(colour only on a terminal) or JSON, and :func:`exit_code` gives 0 (nothing
fails), 1 (a finding fails) or 2 (the audit itself could not be done).

What an audit shows comes from DNS, remote servers and files: a TXT
record or a banner may hold terminal escapes.  :func:`printable` is the one
way any of it reaches a terminal (JSON escapes control characters itself).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from typing import Iterable, TextIO

OK, WARN, FAIL = "ok", "warn", "fail"
LEVELS = (OK, WARN, FAIL)

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2

_COLOURS = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m"}
_RESET = "\033[0m"


@dataclass(frozen=True)
class Finding:
    area: str          # "mx", "spf", "tls", ...
    level: str         # ok | warn | fail
    subject: str       # what was looked at: a host, a record, a setting
    message: str       # the reason, and for warn/fail the advice
    value: str = ""    # the value seen, when there is one

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}")


# C0, DEL and C1 controls (C1 0x9b is a CSI on some terminals), the
# directional formatting characters (they reorder what is shown), lone
# surrogates (bytes that were not UTF-8), and the backslash that escapes them
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u061c\u200e\u200f\u202a-\u202e"
                          r"\u2066-\u2069\ud800-\udfff]")


def _escape(match) -> str:
    ch = match.group()
    if ch == "\\":
        return "\\\\"
    o = ord(ch)
    if 0xdc80 <= o <= 0xdcff:               # a byte kept by surrogateescape
        return f"\\x{o & 0xff:02x}"
    return f"\\x{o:02x}" if o <= 0xff else f"\\u{o:04x}"


def printable(text) -> str:
    """``text`` with every control character escaped (``\\x1b``), so that
    nothing an audited party wrote can move the cursor, recolour or retitle
    the terminal, or start a line of its own."""
    return _UNPRINTABLE.sub(_escape, str(text))


class AuditError(Exception):
    """The audit could not be done (lookups failed, a command is missing)."""


def exit_code(findings: Iterable[Finding], errors: Iterable[str] = ()) -> int:
    """``errors`` are what could not be looked at (a lookup that timed out):
    then the findings are incomplete, whatever they say."""
    if any(True for _ in errors):
        return EXIT_ERROR
    return EXIT_FAIL if any(f.level == FAIL for f in findings) else EXIT_OK


def render_json(title: str, findings: list, out: TextIO, errors: Iterable[str] = ()) -> None:
    doc = {"target": title, "findings": [asdict(f) for f in findings],
           "summary": {lvl: sum(1 for f in findings if f.level == lvl) for lvl in LEVELS}}
    errors = list(errors)
    if errors:
        doc["errors"] = errors
    json.dump(doc, out, indent=2)
    out.write("\n")


def render_table(title: str, findings: list, out: TextIO, colour: bool | None = None,
                 errors: Iterable[str] = ()) -> None:
    if colour is None:
        colour = out.isatty()
    headers = ("AREA", "RESULT", "SUBJECT", "FINDING")
    rows = [(printable(f.area), f.level, printable(f.subject),
             printable(f.message) + (f" [{printable(f.value)}]" if f.value else ""))
            for f in findings]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers[:3])]
    out.write(f"{printable(title)}\n")
    out.write("  ".join(h.ljust(w) for h, w in zip(headers[:3], widths)) + "  " + headers[3] + "\n")
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2])]
        if colour:
            cells[1] = _COLOURS[row[1]] + cells[1] + _RESET
        out.write("  ".join(cells) + "  " + row[3] + "\n")
    counts = {lvl: sum(1 for f in findings if f.level == lvl) for lvl in LEVELS}
    out.write(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail\n")
    for error in errors:
        out.write(f"incomplete: {printable(error)}\n")


def render(title: str, findings: list, as_json: bool, out: TextIO | None = None,
           errors: Iterable[str] = ()) -> int:
    """Print the findings; return the exit code (2 when ``errors``)."""
    # sys.stdout looked up now, not at import: tests and callers may swap it
    if out is None:
        out = sys.stdout
    errors = list(errors)
    if as_json:
        render_json(title, findings, out, errors)
    else:
        render_table(title, findings, out, errors=errors)
    return exit_code(findings, errors)
