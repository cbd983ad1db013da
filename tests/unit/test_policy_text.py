"""The status header and a score reject show the options results gave
(listed domains, taken from the message): they stay plain words."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mailwarden.config import loads
from mailwarden.model import Result, Stage
from mailwarden.policy import Policy
from tests.hostile import HOSTILE_TEXTS

OPTION = st.one_of(st.text(max_size=30), st.sampled_from(HOSTILE_TEXTS))


@given(st.lists(OPTION, min_size=1, max_size=8))
def test_options_cannot_break_the_status_header_or_the_reply(options):
    cfg = loads("[authserv]\nid = mx.test.example\n")
    policy = Policy(cfg.policy, {"URIBL_X": 20.0})
    results = [Result(check="uribl", result="fail", symbol="URIBL_X", options=tuple(options))]
    verdict = policy.decide(results, "other", Stage.EOM, final=True)
    name, value = policy.status_header(verdict.action, verdict.score, verdict.symbols, results)
    shown = re.search(r"URIBL_X\(20\.00\)\[(.*)\]$", value)
    assert shown, value
    # the words: between the brackets only plain characters and our commas
    assert re.fullmatch(r"[A-Za-z0-9._:/?,-]*", shown.group(1)), value
    assert not re.search(r"\n(?!\t)", value) and "\r" not in value
    text = verdict.reply.text
    assert all(0x20 <= ord(c) < 0x7f for c in text), text
    assert re.search(r"URIBL_X\[[A-Za-z0-9._:/?,-]*\]\)$", text), text
