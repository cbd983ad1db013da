"""Nothing an SMTP client or a DNS answer sends can inject a line.

CR, LF and other controls in the HELO name, the envelope addresses and a
DNSBL TXT reason reach the adapter raw here (Postfix may clean some of
them first; tests/e2e/test_security.py does the same through Postfix).
Each must come out without splitting a log line (through the real log
formatter of ``mailwarden.logsetup``), the SMTP reply, or a header the
milter adds.
"""

from __future__ import annotations

import io
import logging
import re
import sys

import Milter
import pytest

from mailwarden.config import loads
from mailwarden.logsetup import setup_logging
from tests.milter.miltertest import Session, make_engine

EVIL = "\r\nX-Injected: yes\r\n250 2.0.0 ok"
BASE = "[authserv]\nid = mx.test.example\n[milter]\nlog = stderr\nlog_level = debug\n"
ZONE = r"""
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
66.100.51.198.evil.dnsbl.test. A 127.0.0.2
66.100.51.198.evil.dnsbl.test. TXT "listed\013\010X-Injected: yes\013\010250 2.0.0 ok"
"""
LISTS = ("[check.submission]\nenabled = no\n"
         "[check.dnsbl.evil]\nzone = evil.dnsbl.test\nkind = ip\nscore = 1\n")
MESSAGE = b"From: a@sender.example\r\nTo: b@rcpt.example\r\nSubject: x\r\n\r\nbody\r\n"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mailwarden\[\d+\]: ")


@pytest.fixture
def logged(monkeypatch):
    """Everything the ``mailwarden`` logger writes, through the real formatter."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logger = logging.getLogger("mailwarden")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    setup_logging(loads(BASE).milter, force_stderr=True)
    yield out
    logger.handlers[:], logger.level, logger.propagate = saved


def engine_for(extra=""):
    from mailwarden.checks import registry
    cfg = loads(BASE + extra)
    return make_engine(cfg, ZONE, registry=registry())


def assert_one_line_each(text: str):
    lines = text.splitlines()
    assert lines, "nothing was logged"
    for line in lines:
        assert LINE_START.match(line), f"a log line was split: {line!r}\n---\n{text}"
    assert "\r" not in text


def assert_header_safe(value: str):
    # a line break only as folding: followed by white space, never by a field
    assert "\r" not in value, value
    assert not re.search(r"\n(?![ \t])", value), value
    assert not re.search(r"(?m)^X-Injected", value), value


def assert_reply_safe(reply):
    assert reply is not None
    for part in reply:
        assert "\r" not in str(part) and "\n" not in str(part), reply


@pytest.mark.parametrize("where", ["helo", "mail_from", "rcpt"])
def test_envelope_controls_stay_in_one_line_and_one_header(logged, where):
    engine = engine_for()
    try:
        s = Session(engine, macros={"i": "QID1", "j": "mx.test.example"})
        helo = "mail" + EVIL if where == "helo" else "mail.sender.example"
        sender = "a" + EVIL + "@sender.example" if where == "mail_from" else "a@sender.example"
        rcpt = "b" + EVIL + "@rcpt.example" if where == "rcpt" else "b@rcpt.example"
        assert s.connect("198.51.100.7", "mail.sender.example") == Milter.CONTINUE
        s.helo(helo)
        s.mail(sender)
        rc = s.rcpt(rcpt)
        if rc == Milter.CONTINUE:
            rc = s.data(MESSAGE)
        s.close()
        if s.reply is not None:
            assert_reply_safe(s.reply)
        for name, value, _ in s.ctx.added:
            assert_header_safe(name + ": " + value)
        if where != "rcpt":
            assert s.ctx.added, "the message went through: headers were added"
        assert_one_line_each(logged.getvalue())
        if where != "rcpt":      # the verdict line names HELO and sender, escaped
            assert "\\x0d\\x0aX-Injected: yes" in logged.getvalue()
    finally:
        engine.close()


def test_dnsbl_txt_reason_cannot_split_reply_or_log(logged):
    engine = engine_for(LISTS + "reject = yes\n")
    try:
        s = Session(engine, macros={"j": "mx.test.example"})
        rc = s.connect("198.51.100.66", "unknown")
        assert rc == Milter.REJECT
        assert_reply_safe(s.reply)
        text = " ".join(map(str, s.reply))
        assert "listed" in text and "X-Injected" in text   # kept, on the same line
        s.close()
        assert_one_line_each(logged.getvalue())
    finally:
        engine.close()


def test_dnsbl_txt_reason_cannot_split_a_header(logged):
    engine = engine_for(LISTS)
    try:
        s = Session(engine, macros={"i": "QID2", "j": "mx.test.example"})
        assert s.connect("198.51.100.66", "unknown") == Milter.CONTINUE
        s.helo("mail.sender.example")
        s.mail("a@sender.example")
        s.rcpt("b@rcpt.example")
        assert s.data(MESSAGE) == Milter.ACCEPT
        s.close()
        assert s.ctx.added
        for name, value, _ in s.ctx.added:
            assert_header_safe(name + ": " + value)
        assert any("EVIL_LISTED" in v for _, v, _ in s.ctx.added), s.ctx.added
        assert_one_line_each(logged.getvalue())
    finally:
        engine.close()


# -- a reply longer than libmilter takes --------------------------------------

LONG_EXP = " ".join(['"' + ("%%-" * 5 + "a\\034\\\"b%%" + "x" * 220)[:250] + '"'] * 6)
EXP_ZONE = ZONE + ("evil.example. TXT \"v=spf1 -all exp=exp.evil.example\"\n"
                   f"exp.evil.example. TXT {LONG_EXP}\n")


def test_a_long_sender_text_in_a_reject_is_cut_and_the_reject_kept():
    from mailwarden.milter import reply_text
    from tests.milter.miltertest import LibmilterReplyCtx
    cfg = loads(BASE + "[check.spf]\nreject_fail = yes\n[check.submission]\nenabled = no\n")
    from mailwarden.checks import registry
    engine = make_engine(cfg, EXP_ZONE, registry=registry())
    try:
        s = Session(engine, ctx_class=LibmilterReplyCtx)
        assert s.connect("198.51.100.7", "mail.sender.example") == Milter.CONTINUE
        assert s.helo("mail.sender.example") == Milter.CONTINUE
        assert s.mail("x@evil.example") == Milter.REJECT
    finally:
        engine.close()
    code, xcode, text = s.reply
    assert (code, xcode) == ("550", "5.7.23")
    assert len(text) <= 980 and text.endswith("...")
    assert text.startswith("%%-%%-")              # the sender's %, doubled for libmilter
    # the line the client sees (each %% a % again) fits RFC 5321's 512 octets
    assert len(f"{code} {xcode} {text}\r\n".replace("%%", "%")) <= 512
    assert not re.search(r"(?<!%)%(%%)*(?!%)", text)        # never a % alone
    assert all(0x20 <= ord(c) < 0x7f for c in text)
    # the cut: every length, every run of %
    for n in range(0, 40):
        for body in ("%" * n, "a" * n + "%" * 7, "%" * n + "\r\n\u00e9" * 3):
            out = reply_text(body, most=20)
            assert len(out) <= 20
            assert not re.search(r"(?<!%)%(%%)*(?!%)", out), (body, out)
    # all %: within libmilter's 980 whatever the line room
    out = reply_text("%" * 2000, "5.7.1")
    assert len(out) <= 980 and not re.search(r"(?<!%)%(%%)*(?!%)", out)
    assert len("550 5.7.1 " + out.replace("%%", "%") + "\r\n") <= 512


# -- sender text in the Authentication-Results the adapter adds ----------------

def _exp_zone():
    from tests.hostile import FORGED_RESULTS
    text = FORGED_RESULTS.replace("\\", "\\\\").replace('"', '\\"')
    return ZONE + ("forged.example. TXT \"v=spf1 -all exp=exp.forged.example\"\n"
                   f"exp.forged.example. TXT \"{text}\"\n")


def _hostile_helos():
    from tests.hostile import HOSTILE_TEXTS
    return [t for t in HOSTILE_TEXTS if t] + [EVIL]


@pytest.mark.parametrize("helo", _hostile_helos())
def test_added_authentication_results_read_back_as_found(helo):
    import authres

    from mailwarden.checks import registry
    from tests.hostile import FORGED_RESULTS
    cfg = loads(BASE + "[check.submission]\nenabled = no\n[check.spf]\nhelo = yes\n")
    engine = make_engine(cfg, _exp_zone(), registry=registry())
    try:
        s = Session(engine, {"i": "4QUEUE", "j": "mx.test.example"})
        assert s.connect("198.51.100.7", "mail.sender.example") == Milter.CONTINUE
        assert s.helo(helo) == Milter.CONTINUE
        assert s.mail("x@forged.example") == Milter.CONTINUE
        assert s.rcpt("b@rcpt.example") == Milter.CONTINUE
        assert s.data(MESSAGE) == Milter.ACCEPT
    finally:
        engine.close()
    (value,) = [v for n, v, _ in s.ctx.added if n == "Authentication-Results"]
    header = authres.core.AuthenticationResultsHeader(authres.core_features(), strict=True)
    header._parse_text = value.replace("\n", "").strip()
    header._parse()
    found = [(r.method, r.result) for r in header.results]
    assert ("spf", "fail") in found and ("dkim", "pass") not in found
    assert ("dmarc", "pass") not in found
    (mailfrom,) = [r for r in header.results
                   if [p.name for p in r.properties] == ["mailfrom"]]
    assert re.sub(r"\\(.)", r"\1", mailfrom.reason) == FORGED_RESULTS
    helo_props = [p.value for r in header.results for p in r.properties if p.name == "helo"]
    # the HELO name as the engine kept it (trimmed), made printable, not cut
    # short by a quote or a parenthesis in it
    clean = re.sub(r"[^\x20-\x7e]", "?", helo)
    for value in helo_props:
        value = re.sub(r"\\(.)", r"\1", value)
        assert value and value in clean, (value, clean)
        assert value == clean.strip("? ") or value == clean.strip(), (value, clean)
