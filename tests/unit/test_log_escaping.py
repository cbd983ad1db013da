"""Network text in the log lines of relay, submission and limits.

Addresses, logins and client names are the client's to choose: each line
escapes them as the verdict line does (:func:`mailwarden.explain.clean`),
so no control character, line break or stray byte reaches a log record.
"""

from __future__ import annotations

import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from tests.hostile import HOSTILE_TEXTS

CONF = """[authserv]
id = mx.test.example
[relay]
trusted_networks = 127.0.0.0/8
local_domains = outbound.example
[check.iprev]
enabled = no
[check.limits]
messages_per_sender = 1/1h
messages_per_user = 1/1h
recipients_per_sender = 1/1h
[check.submission]
sender_login_map = {path}
require_tls_for_auth = {tls}
"""
MESSAGE = b"From: a@outbound.example\r\nSubject: x\r\n\r\nbody\r\n"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     r"\u2028\u2029\udc80-\udcff]")
TEXT = st.one_of(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
                 st.text(alphabet="\r\n\t\x00\x1b\x7f\x85\x9b\u202e\u2066\u2028\"\\ @<>a\u00e9",
                         max_size=40),
                 st.sampled_from(HOSTILE_TEXTS))


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _engine(path, tls):
    cfg = loads(CONF.format(path=path, tls=tls))
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend("")),
                  hostname="mx.test.example")


def _lines(engine, sender, login, rcpt, name, tls_version=""):
    logger = logging.getLogger("mailwarden")
    capture = Capture()
    logger.addHandler(capture)
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        for _ in range(2):                 # the second one is over every limit
            verdict, conn, msg = run_offline(
                engine, client_ip="198.51.100.70", client_name=name, helo="h.example",
                mail_from=sender, rcpts=[rcpt, "x" + rcpt], message=MESSAGE,
                auth_user=login, tls_version=tls_version)
            if msg is not None:
                msg.close()
            engine.close_connection(conn)
    finally:
        logger.removeHandler(capture)
        logger.setLevel(saved)
    return capture.lines


def _login_map(tmp_path_factory):
    path = tmp_path_factory.mktemp("logins") / "logins"
    path.write_text("alice: alice@outbound.example\n")
    return path


def test_hostile_text_reaches_each_log_line_escaped(tmp_path_factory):
    path = _login_map(tmp_path_factory)
    evil = "a\r\nmailwarden[1]: action=accept\x1b[2J\udcff"
    everything = []
    for tls, tls_version, login in (("yes", "", evil), ("no", "TLSv1.3", evil),
                                    ("no", "", "")):
        engine = _engine(path, tls)
        try:
            lines = _lines(engine, evil + "@outbound.example", login,
                           evil + "@elsewhere.example", evil, tls_version)
        finally:
            engine.close()
        for line in lines:
            assert not CONTROL.search(line), line
        # the text is still there, escaped, not dropped
        assert any("a\\x0d\\x0amailwarden[1]" in line for line in lines), lines
        everything += lines
    for wanted in ("relay denied", "submission refused for login", "without TLS refused",
                   "limits: messages_per_sender exceeded",
                   "limits: recipients_per_sender exceeded"):
        assert any(wanted in line for line in everything), (wanted, everything)


@given(sender=TEXT, login=TEXT, rcpt=TEXT, name=TEXT, tls=st.booleans())
def test_no_control_character_reaches_a_log_record(tmp_path_factory, sender, login, rcpt,
                                                   name, tls):
    path = _login_map(tmp_path_factory)
    engine = _engine(path, "yes" if tls else "no")
    try:
        lines = _lines(engine, sender + "@outbound.example", login, rcpt + "@elsewhere.example",
                       name, "TLSv1.3" if not tls else "")
    finally:
        engine.close()
    for line in lines:
        assert not CONTROL.search(line), line


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_clean_leaves_no_control_bidi_or_line_separator(text):
    from mailwarden.explain import clean
    out = clean(text)
    assert not CONTROL.search(out), out
    # letters pass as they are: an IDN or a name in another script stays readable
    assert all(ch in out for ch in text if ch.isalpha() and ord(ch) < 0x2000)


def test_clean_names_what_it_escaped():
    from mailwarden.explain import clean
    assert clean("a\u202eb\x9bc\u00e9\\d\x01") == "a\\u202eb\\u009bc\u00e9\\\\d\\x01"


@given(st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=60))
def test_clean_of_ascii_escapes_exactly_controls_delete_and_backslash(text):
    from mailwarden.explain import clean
    expected = "".join(f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or ord(ch) == 0x7f
                       else "\\\\" if ch == "\\" else ch for ch in text)
    assert clean(text) == expected
