"""DKIM signatures a hostile sender shapes, through Postfix, mailwarden and
unbound: a key name that cannot exist must not turn DMARC p=reject into a
temporary error."""

from __future__ import annotations

import pytest

from tests import dkimkeys

from tests.e2e.authscenario import NOT_ALIGNED, STRANGER, assert_scan_agrees, scenario

BANK = "mw-bank.example"


@pytest.fixture(scope="module")
def bank(dns_server):
    dns_server.add("\n".join([
        f'{BANK}. TXT "v=spf1 -all"',
        f'_dmarc.{BANK}. TXT "v=DMARC1; p=reject"',
    ]))
    return dkimkeys.ed25519_key()


@pytest.mark.parametrize("selector", [b"a" * 70, b"a..b", b".".join([b"a" * 63] * 4)],
                         ids=["label-70", "empty-label", "name-over-253"])
@pytest.mark.parametrize("overrides", [None, {"policy": {"temperror_action": "accept"}}],
                         ids=["default", "temperror-accept"])
def test_an_impossible_key_name_under_p_reject_is_refused_550(postfix, sink, mailwarden, bank,
                                                               selector, overrides):
    mw = mailwarden(overrides)

    def forge(data):
        return dkimkeys.sign_tags(data, bank, [(b"d", BANK.encode()), (b"s", selector)])

    outcome, ar, report = scenario(postfix, sink, mw, STRANGER, NOT_ALIGNED,
                                   f"service@{BANK}", change=forge)
    assert outcome == "550 5.7.1", (outcome, report, mw.log_text()[-2000:])
    dkim = [r for r in report["results"] if r["check"] == "dkim"]
    assert [(r["result"], r["symbol"]) for r in dkim] == [("permerror", "DKIM_BAD_NAME")]
    assert_scan_agrees(outcome, ar, report)
