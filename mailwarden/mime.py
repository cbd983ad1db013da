"""Splitting raw message bytes into header fields and body, for ``scan``.

The milter receives header fields one by one from the MTA; ``scan`` reads a
file and must hand the engine the same thing.  Values stay raw bytes exactly
as after the colon (leading white space and folding included).  Hostile input
never raises: a line that is not a header field ends the header (as Postfix's
cleanup treats it), a message without a blank line is all header, and bare
LF or CR line ends are accepted.
"""

from __future__ import annotations

import re

_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def split_message(data: bytes) -> tuple:
    """(headers, body, problem): headers as (name, raw value) pairs.

    ``problem`` is '' or a short note of what was odd about the input.
    """
    headers: list = []
    problem = ""
    pos = 0
    n = len(data)
    current = None                       # [name, bytearray]
    while pos < n:
        end = data.find(b"\n", pos)
        if end < 0:
            line, nxt = data[pos:], n
        else:
            line, nxt = data[pos:end + 1], end + 1
        bare = line.rstrip(b"\r\n")
        if not bare:                     # the blank line: body follows
            pos = nxt
            break
        if bare[:1] in (b" ", b"\t") and current is not None:
            current[1] += line           # a continuation line
            pos = nxt
            continue
        m = _FIELD.match(bare)
        if m is None:
            problem = "a line that is not a header field ended the header"
            break
        if current is not None:
            headers.append(_finish(current))
        current = [m.group(1).decode("ascii"), bytearray(line[m.end():])]
        pos = nxt
    else:
        if current is not None or n == 0:
            problem = problem or "no body separator"
    if current is not None:
        headers.append(_finish(current))
    return headers, data[pos:], problem


def _finish(current) -> tuple:
    name, value = current
    value = bytes(value)
    if value.endswith(b"\r\n"):
        value = value[:-2]
    elif value.endswith(b"\n") or value.endswith(b"\r"):
        value = value[:-1]
    # folded lines keep their own breaks, normalised to CRLF like the MTA's
    value = re.sub(rb"\r?\n", b"\r\n", value)
    return name, value
