"""Outbound mail: per-user limits, hold instead of score, checks run on it by choice."""

import logging

import pytest

from mailwarden.config import ConfigError, loads
from mailwarden.engine import run_offline

from .outboundcase import (BASE, LOOPBACK_SIGNING, OUTSIDE, engine_for, keydir,  # noqa: F401
                                   make_message, run, sign_text)

AUTH = {"auth_user": "alice", "tls_version": "TLSv1.3"}


def test_messages_per_user_limit_names_the_user(caplog):
    engine, _ = engine_for(BASE + "[check.limits]\nmessages_per_user = 2/1h\n")
    caplog.set_level(logging.INFO, logger="mailwarden")
    try:
        verdicts = []
        for _ in range(3):
            verdict, _, msg = run_offline(engine, client_ip=OUTSIDE, mail_from="alice@outbound.example",
                                          rcpts=["x@elsewhere.example"], message=make_message(),
                                          **AUTH)
            msg.close()
            verdicts.append(verdict)
    finally:
        engine.close()
    assert [v.action for v in verdicts[:2]] == ["accept", "accept"]
    third = verdicts[2]
    assert third.action == "tempfail" and (third.reply.code, third.reply.xcode) == (451, "4.7.1")
    assert "LIMIT_MESSAGES_USER" in [r.symbol for r in third.results]
    assert any("user alice" in rec.getMessage() for rec in caplog.records)


def test_recipients_per_user_limit_applies_to_outbound_mail():
    engine, _ = engine_for(BASE + "[check.limits]\nrecipients_per_user = 3/1h\n")
    try:
        verdict, _, msg = run_offline(engine, client_ip="127.0.0.1",
                                      mail_from="alice@outbound.example",
                                      rcpts=[f"r{i}@elsewhere.example" for i in range(5)],
                                      message=make_message(), **AUTH)
        assert len(msg.rcpts) == 3
        msg.close()
    finally:
        engine.close()


def test_hold_quarantines_scoring_outbound_mail(keydir):
    # a weight on a symbol outbound mail gets (DKIM_SIGNED) makes it score
    text = sign_text(keydir, LOOPBACK_SIGNING) + "[scores]\nDKIM_SIGNED = 6\n"
    held = text.replace("[relay]\n", "[policy]\noutbound_action = hold\n[relay]\n")
    for who in ({"client_ip": "127.0.0.1"}, AUTH):
        assert run(text, **who).action == "add_header"
        verdict = run(held, **who)
        assert verdict.action == "quarantine" and verdict.reply is None
        assert "held" in verdict.quarantine_reason
        # held mail keeps its signatures: released, it is delivered signed
        assert len([n for n, _ in verdict.headers_added if n == "DKIM-Signature"]) == 2
    # inbound mail is scored as ever
    inbound = run(held + "[check.submission]\nskip_for =\n", rcpts=["bob@outbound.example"])
    assert inbound.action in ("accept", "add_header") and inbound.reply is None


def test_hold_applies_to_authenticated_and_trusted_only():
    # a weight on a symbol that outbound mail gets: DKIM_SIGNED with a key
    text = BASE + "[scores]\nRELAY_DENIED = 0\n"
    cfg = loads(text.replace("[relay]\n", "[policy]\noutbound_action = hold\n[relay]\n"))
    assert cfg.policy.outbound_action == "hold"
    from mailwarden.policy import Policy
    from mailwarden.model import Result, Stage
    policy = Policy(cfg.policy, {"X": 20.0})
    results = [Result(check="t", result="fail", symbol="X")]
    for trust in ("authenticated", "trusted"):
        verdict = policy.decide(results, trust, Stage.EOM, final=True)
        assert verdict.action == "quarantine" and verdict.reply is None
        assert verdict.reason.startswith(f"outbound {trust} mail held (reject")
    assert policy.decide(results, "other", Stage.EOM, final=True).action == "reject"
    # a hard reply (e.g. a sender the login may not use) is never softened
    from mailwarden.model import Reply
    hard = [Result(check="t", result="fail", symbol="X",
                   reply=Reply("reject", 553, "5.7.1", "not yours"))]
    assert policy.decide(hard, "authenticated", Stage.EOM, final=True).action == "reject"


def test_skip_for_override_runs_a_check_on_outbound_mail():
    trick = "user%other.example@outbound.example"
    assert run(BASE, rcpts=[trick], **AUTH).action != "reject"
    verdict = run(BASE + "[check.relay]\nskip_for = allowlisted\n", rcpts=[trick], **AUTH)
    assert verdict.action == "reject" and verdict.reply.code == 554


def test_skip_for_unknown_tag_refused():
    with pytest.raises(ConfigError) as err:
        loads(BASE + "[check.relay]\nskip_for = outsiders\n")
    assert "[check.relay] skip_for:" in str(err.value)
