"""Why a message got its verdict, for people and for log pipelines.

* :func:`verdict_fields`: the one record per verdict (queue id, client,
  envelope, action, score, every symbol with its weight, reply, reason), as
  an ordered dict.  The milter logs it once per message at end of message
  and once per stop at an earlier stage; with ``[milter] log_format = json``
  these are the keys of the JSON line, with ``text`` :func:`format_line`
  writes the same fields as ``key=value`` words.
* :func:`explain_table`: the table ``mailwarden scan --explain`` prints.

Every value that came from the network (HELO name, addresses, login, reply
and reason texts, client name) is escaped: control characters and bytes that
were not UTF-8 become ``\\xNN``, so one verdict is always one log line and
a client cannot forge a second one.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .model import Action, Connection, Message
from .policy import Verdict


# code points that reorder or break what a terminal or log viewer shows
# without being controls in ASCII's sense: C1 controls (U+0080-U+009F; some
# terminals act on U+009B as CSI), the bidirectional marks, embeddings,
# overrides and isolates (Unicode TR #9; "Trojan Source"), and the line and
# paragraph separators
_INVISIBLE = frozenset([*range(0x80, 0xa0), 0x061c, 0x200e, 0x200f, *range(0x202a, 0x202f),
                        *range(0x2066, 0x206a), 0x2028, 0x2029])


def clean(value) -> str:
    """Network text made safe for one line: controls and stray bytes as
    \\xNN, C1 controls, bidirectional controls and line separators as
    \\uNNNN; other text, non-ASCII letters included, as it is."""
    text = str(value)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text                  # printable ASCII without a backslash: nothing to do
    out = []
    for ch in text:
        o = ord(ch)
        if o < 0x20 or o == 0x7f or 0xdc80 <= o <= 0xdcff:
            out.append(f"\\x{o & 0xff:02x}")
        elif o in _INVISIBLE:
            out.append(f"\\u{o:04x}")
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


def _quoted(value: str) -> str:
    """An already cleaned value in double quotes."""
    return '"' + value.replace('"', '\\"') + '"'


def verdict_fields(conn: Connection, msg: Optional[Message], verdict: Verdict) -> dict:
    """The verdict as an ordered dict of plain values (JSON-ready)."""
    fields: dict = {}
    qid = msg.queue_id if msg is not None and msg.queue_id else ""
    fields["queue_id"] = clean(qid)
    fields["conn"] = conn.id
    if verdict.stage is not None and verdict.stage.name != "EOM":
        fields["stage"] = verdict.stage.name.lower()
    fields["action"] = verdict.action
    if verdict.dry_run:
        fields["dry_run_action"] = verdict.decided
    fields["score"] = round(verdict.score, 3)
    fields["client_ip"] = str(conn.client_ip) if conn.client_ip is not None else ""
    fields["client_name"] = clean(conn.client_name or "unknown")
    if conn.helo:
        fields["helo"] = clean(conn.helo)
    if msg is not None:
        fields["from"] = clean(msg.mail_from)
        fields["rcpts"] = len(msg.rcpts)
    if conn.auth_user:
        fields["auth"] = clean(conn.auth_user)
    fields["symbols"] = {symbol: weight for symbol, weight in verdict.symbols}
    if verdict.reply is not None:
        fields["reply"] = clean(verdict.reply.line())
    if verdict.reason:
        fields["reason"] = clean(verdict.reason)
    return fields


def format_line(fields: Mapping) -> str:
    """The text log line: ``action=... score=... client=NAME[IP] ...``.

    The queue id is not among the words: the logger puts it first, as
    Postfix does (``QUEUEID: ...``).
    """
    parts = []
    if "stage" in fields:
        parts.append(f"stage={fields['stage']}")
    parts.append(f"action={fields['action']}")
    if "dry_run_action" in fields:
        parts.append(f"dry_run_action={fields['dry_run_action']}")
    parts.append(f"score={fields['score']:.2f}")
    parts.append(f"client={fields['client_name']}[{fields['client_ip'] or 'local'}]")
    if "helo" in fields:
        parts.append(f"helo={_quoted(fields['helo']) if ' ' in fields['helo'] else fields['helo']}")
    if "from" in fields:
        parts.append(f"from=<{fields['from']}>")
        parts.append(f"rcpts={fields['rcpts']}")
    if "auth" in fields:
        parts.append(f"auth={fields['auth']}")
    symbols = ",".join(f"{s}({w:g})" for s, w in fields["symbols"].items())
    parts.append(f"symbols={symbols or '-'}")
    if "reply" in fields:
        parts.append(f"reply={_quoted(fields['reply'])}")
    if "reason" in fields:
        parts.append(f"reason={_quoted(fields['reason'])}")
    return " ".join(parts)


# --------------------------------------------------------------------------
# scan --explain

_ACTION_COLOUR = {Action.ACCEPT: "32", Action.ADD_HEADER: "33", Action.QUARANTINE: "33",
                  Action.TEMPFAIL: "35", Action.REJECT: "31", Action.DISCARD: "31"}


def explain_table(verdict: Verdict, scores: Mapping[str, float], policy, colour: bool = False,
                  width: int = 100) -> str:
    """A table of every result, then the total, the thresholds and the action.

    ``policy`` is ``[policy]`` (PolicyOptions); ``colour`` adds ANSI colours
    (callers pass it only when the output is a terminal).
    """
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text

    header = ("check", "result", "symbol", "weight", "reason")
    rows = []
    for r in verdict.results:
        weight = scores.get(r.symbol, 0.0) if r.symbol else 0.0
        rows.append((r.check, r.result, r.symbol or "-", f"{weight:.2f}", clean(r.reason)))
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(4)]
    reason_room = max(20, width - sum(widths) - 8)

    def line(row, codes=("", "", "", "", "")) -> str:
        cells = []
        for i, cell in enumerate(row[:4]):
            text = cell.rjust(widths[i]) if i == 3 else cell.ljust(widths[i])
            cells.append(paint(text, codes[i]))
        reason = row[4]
        if len(reason) > reason_room:
            reason = reason[:reason_room - 3] + "..."
        cells.append(paint(reason, codes[4]))
        return "  ".join(cells).rstrip()

    out = [line(header, ("1",) * 5), "  ".join("-" * w for w in widths) + "  " + "-" * 6]
    for row in rows:
        weight = float(row[3])
        code = "31" if weight > 0 else "32" if weight < 0 else ""
        result_code = {"pass": "32", "fail": "31", "temperror": "35", "permerror": "35",
                       "softfail": "33"}.get(row[1], "")
        out.append(line(row, ("", result_code, code, code, "")))
    if not rows:
        out.append("(no check gave a result)")
    out.append("")
    out.append(f"total      {verdict.score:.2f}")
    out.append(f"thresholds add_header {policy.add_header_score:g}, "
               f"quarantine {policy.quarantine_score:g}, reject {policy.reject_score:g}")
    action = verdict.action
    if verdict.dry_run:
        action += f" (dry run; would be {verdict.decided})"
    out.append("action     " + paint(action, _ACTION_COLOUR.get(verdict.action, "")))
    if verdict.stage is not None and verdict.stage.name != "EOM":
        out.append(f"stage      {verdict.stage.name.lower()}")
    if verdict.reply is not None:
        out.append(f"reply      {clean(verdict.reply.line())}")
    if verdict.reason:
        out.append(f"reason     {clean(verdict.reason)}")
    return "\n".join(out) + "\n"
