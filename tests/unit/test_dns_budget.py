"""The lookup budget keeps room for the lookups that decide DMARC.

A sender can multiply lookups (SPF mechanisms, URLs, DKIM signatures of
its own domains) until the message's budget is gone; the lookups DMARC's
verdict rests on (the From domain's policy record, the key of each DKIM
signature) must still be made, so that a forged p=reject From gets its
550, not a temperror (451, or an accept with temperror_action = accept).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mailwarden.config import ConfigError, DnsOptions, loads
from mailwarden.dns import Resolver, Status, ZoneBackend
from mailwarden.engine import Engine, run_offline

DATA = Path(__file__).resolve().parents[1] / "data"
AUTH_ZONE = (DATA / "zones" / "auth.zone").read_text()
STRANGER = "198.51.100.142"
BASE = "[authserv]\nid = mx.test.example\n[check.uribl]\nenabled = yes\n"

from tests.budgetcase import forged, hostile_zone  # noqa: E402


def verdict_for(ini: str = "", message: bytes | None = None):
    cfg = loads(BASE + ini)
    resolver = Resolver(cfg.dns, backend=ZoneBackend(AUTH_ZONE + hostile_zone()))
    engine = Engine(cfg, resolver=resolver, hostname="mx.test.example")
    try:
        verdict, _conn, msg = run_offline(engine, client_ip=STRANGER, helo="mail.budget-evil.example",
                                          mail_from="x@budget-evil.example",
                                          rcpts=["bob@rcpt.example"],
                                          message=message if message is not None else forged())
    finally:
        engine.close()
    return verdict, msg


def test_exhausting_the_budget_does_not_turn_a_dmarc_fail_into_temperror():
    verdict, msg = verdict_for()
    # everything but the reserve is used up
    assert msg.dns.used >= msg.dns.budget - getattr(msg.dns, "reserve", 0), msg.dns.used
    # what the sender multiplied ran out of budget ...
    assert any("budget" in r.reason for r in verdict.results if r.check == "uribl"), \
        [(r.check, r.result, r.reason) for r in verdict.results]
    # ... what decides DMARC did not
    (dmarc,) = [r for r in verdict.results if r.check == "dmarc"]
    assert dmarc.result == "fail", dmarc
    aligned = [r for r in verdict.results if r.check == "dkim"
               and ("header.d", "mw-reject.example") in [p[:2] for p in r.properties]]
    assert [r.result for r in aligned] == ["permerror"], aligned
    assert verdict.action == "reject" and verdict.reply.code == 550, verdict


def test_a_small_budget_and_reserve_from_the_ini():
    verdict, msg = verdict_for("[dns]\nmessage_budget = 40\ndecisive_reserve = 15\n")
    assert msg.dns.budget == 40 and msg.dns.reserve == 15
    (dmarc,) = [r for r in verdict.results if r.check == "dmarc"]
    assert dmarc.result == "fail" and verdict.reply.code == 550


@settings(max_examples=15, deadline=None)
@given(urls=st.integers(0, 40), others=st.integers(0, 9))
def test_whatever_the_sender_adds_the_forged_from_is_refused(urls, others):
    verdict, _msg = verdict_for("[dns]\nmessage_budget = 60\ndecisive_reserve = 15\n",
                                forged(urls, others))
    (dmarc,) = [r for r in verdict.results if r.check == "dmarc"]
    assert dmarc.result == "fail", dmarc
    assert verdict.action == "reject" and verdict.reply.code == 550


def test_the_reserve_is_only_for_decisive_lookups():
    zone = "".join(f"n{i}.example. A 192.0.2.{i}\n" for i in range(1, 20))
    r = Resolver(DnsOptions(message_budget=10, decisive_reserve=3), backend=ZoneBackend(zone))
    session = r.session()
    answers = session.query_many([(f"n{i}.example", "A") for i in range(1, 10)])
    assert [a.status for a in answers] == [Status.NOERROR] * 7 + [Status.BUDGET] * 2
    assert session.query("n10.example", "A", decisive=True).ok
    assert session.query_many([("n11.example", "A"), ("n12.example", "A"),
                               ("n13.example", "A")], decisive=True)[2].status is Status.BUDGET
    assert session.used == 10
    # asking again for what was asked is still free, decisive or not
    assert session.query("n1.example", "A").ok


def test_the_reserve_must_leave_room_for_the_rest():
    with pytest.raises(ConfigError, match=r"\[dns\] decisive_reserve: must be less than"):
        loads(BASE + "[dns]\nmessage_budget = 20\ndecisive_reserve = 20\n")
