"""What ``audit``, ``audit-postfix`` and ``probe`` print comes from DNS,
remote servers and files: a control character in it must reach the
terminal escaped, never as itself (``audit.findings.printable``)."""

from __future__ import annotations

import io
import re
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from mailwarden.audit.findings import FAIL, WARN, Finding, printable, render
from mailwarden.cli import main
from tests.hostile import HOSTILE_TEXTS

BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _shown_safely(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cs") or c in BIDI for c in text)


ANY = st.one_of(st.text(max_size=80), st.sampled_from(HOSTILE_TEXTS),
                st.text(alphabet="\x1b\x07\x9b\x00\r\n\t\\[]0;m\u202e\udcff", max_size=40))


@given(ANY)
def test_printable_leaves_no_control_character(text):
    out = printable(text)
    assert _shown_safely(out)
    # ordinary text is left as it was; escaping is unambiguous
    if _shown_safely(text) and "\\" not in text:
        assert out == text
    assert printable(text.replace("\\", "")) .count("\\") == \
        sum(1 for c in text.replace("\\", "") if not _shown_safely(c))


@given(st.lists(st.tuples(ANY, ANY, ANY, ANY), max_size=5), ANY, st.lists(ANY, max_size=3))
def test_the_table_shows_no_control_character(rows, title, errors):
    out = io.StringIO()
    findings = [Finding(a, WARN, s, m, v) for a, s, m, v in rows]
    render(title, findings, False, out, errors)
    assert _shown_safely(out.getvalue().replace("\n", ""))
    # one line per finding: title, header, rows, counts, errors
    assert out.getvalue().count("\n") == 3 + len(rows) + len(errors)


def test_escapes_in_dns_text_do_not_reach_the_terminal(tmp_path, capsys):
    zone = tmp_path / "evil.zone"
    zone.write_text(
        'evil.audit.example. TXT "v=spf1 \\027[2J\\027]0;owned\\007 ip4:192.0.2.1 -all"\n'
        '_dmarc.evil.audit.example. TXT "v=DMARC1; p=none\\027[8m; rua=mailto:a@b.example"\n'
        'evil.audit.example. MX 10 mx\\027[31m.evil.audit.example.\n', encoding="utf-8")
    main(["audit", "--zone", str(zone), "evil.audit.example"])
    shown = capsys.readouterr()
    assert "\x1b" not in shown.out and "\x07" not in shown.out, shown.out
    assert "\\x1b[2J" in shown.out or "\\x1b[8m" in shown.out, shown.out
    assert _shown_safely(shown.out.replace("\n", "")) and _shown_safely(
        shown.err.replace("\n", ""))
    # the JSON form escapes them by itself
    main(["audit", "--zone", str(zone), "evil.audit.example", "--json"])
    assert "\x1b" not in capsys.readouterr().out


def test_a_colour_table_keeps_its_own_escapes_only():
    out = io.StringIO()
    render_findings = [Finding("spf", FAIL, "evil\x1b[0m", "x\x1b]0;t\x07")]
    from mailwarden.audit.findings import render_table
    render_table("t", render_findings, out, colour=True)
    text = out.getvalue()
    assert re.findall(r"\x1b\[[0-9;]*m", text) == ["\x1b[31m", "\x1b[0m"]
    assert "\x07" not in text and "\x1b]" not in text
