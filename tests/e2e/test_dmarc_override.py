"""A DMARC failure overridden for mailing-list mail, through the real
Postfix: the author's domain publishes p=reject and signs; a list tags the
subject, adds a footer (the author's signature breaks) and ARC-seals.
Sealed by a trusted sealer the message is accepted with an A-R that says
why; sealed by another it is refused 550; a chain broken after sealing is
never trusted.  ``scan`` agrees each time.

The trusted list's key is ``tests/data/keys/lists-arc2026.private``
(``tests/data/zones/arc.zone``); the author's and the untrusted sealer's
keys are made here and served by the session's unbound.
"""

from __future__ import annotations

import dkim
import pytest

from tests import dkimkeys
from tests.e2e.authscenario import assert_scan_agrees, scenario
from tests.harness import ROOT

AUTHOR = "mw-listauthor.example"
TRUSTED = "lists.example"
UNTRUSTED = "lists.untrusted.example"
LIST = {"ADDR": "198.51.100.72", "NAME": "[UNAVAILABLE]", "HELO": "lists.example"}
LIST_AAR = (f"dkim=pass header.d={AUTHOR}; spf=pass smtp.mailfrom=author@{AUTHOR}; "
            f"dmarc=pass header.from={AUTHOR}")
SETTINGS = {"check.arc": {"trusted_sealers": TRUSTED}}


@pytest.fixture(scope="module")
def keys(dns_server):
    author, untrusted = dkimkeys.rsa_key(), dkimkeys.rsa_key()
    dns_server.add("\n".join([
        f'{AUTHOR}. TXT "v=spf1 -all"',
        f'_dmarc.{AUTHOR}. TXT "v=DMARC1; p=reject"',
        author.zone_line("s1", AUTHOR),
        untrusted.zone_line("arc2026", UNTRUSTED),
    ]))
    return {AUTHOR: author, UNTRUSTED: untrusted.private,
            TRUSTED: (ROOT / "tests/data/keys/lists-arc2026.private").read_bytes()}


def list_stage(keys, sealer, arc="none"):
    """What the list does to the author's signed message: a subject tag and
    a footer, then its A-R and its ARC set."""
    def change(data):
        head, _, body = data.partition(b"\r\n\r\n")
        head = head.replace(b"Subject: ", b"Subject: [list] ", 1)
        changed = head + b"\r\n\r\n" + body + b"-- \r\nlist footer\r\n"
        changed = (f"Authentication-Results: {sealer}; arc={arc}; {LIST_AAR}\r\n".encode()
                   + changed)
        made = dkim.arc_sign(changed, b"arc2026", sealer.encode(), keys[sealer],
                             sealer.encode(), include_headers=[
                                 b"from", b"to", b"subject", b"date", b"message-id"])
        assert made
        return b"".join(made) + changed
    return change


def send(postfix, sink, mw, keys, change):
    return scenario(postfix, sink, mw, LIST, f"list-bounces@{TRUSTED}", f"author@{AUTHOR}",
                    sign=[(keys[AUTHOR], "s1", AUTHOR)], change=change)


def results(report, check):
    return [(r["result"], r["symbol"]) for r in report["results"] if r["check"] == check]


def test_trusted_sealer_overrides_the_failure(postfix, sink, mailwarden, keys):
    mw = mailwarden(SETTINGS)
    outcome, ar, report = send(postfix, sink, mw, keys, list_stage(keys, TRUSTED))
    assert outcome == "delivered", (outcome, report, mw.log_text()[-2000:])
    assert [r for r, _s in results(report, "dkim")] == ["fail"], report
    assert results(report, "arc") == [("pass", "ARC_PASS_TRUSTED")]
    assert results(report, "dmarc") == [("fail", "DMARC_FAIL_OVERRIDDEN")]
    assert "arc=pass" in ar and "dmarc=fail reason=" in ar, ar
    assert f"header.from={AUTHOR} policy.dmarc=reject" in ar, ar
    assert f"dis=none, overridden: trusted ARC sealer {TRUSTED}" in ar, ar
    assert_scan_agrees(outcome, ar, report)


def test_untrusted_sealer_is_rejected(postfix, sink, mailwarden, keys):
    mw = mailwarden(SETTINGS)
    outcome, ar, report = send(postfix, sink, mw, keys, list_stage(keys, UNTRUSTED))
    assert outcome == "550 5.7.1", (outcome, report, mw.log_text()[-2000:])
    assert results(report, "arc") == [("pass", "ARC_PASS")]
    assert results(report, "dmarc") == [("fail", "DMARC_FAIL_REJECT")]
    assert_scan_agrees(outcome, ar, report)


def test_chain_broken_after_sealing_is_never_trusted(postfix, sink, mailwarden, keys):
    mw = mailwarden(SETTINGS)
    seal = list_stage(keys, TRUSTED)

    def broken(data):
        return seal(data).replace(b"list footer", b"changed on the way")
    outcome, ar, report = send(postfix, sink, mw, keys, broken)
    assert outcome == "550 5.7.1", (outcome, report)
    assert results(report, "arc")[0][0] == "fail"
    assert_scan_agrees(outcome, ar, report)

    # and sealed again by the trusted sealer, cv=fail: the chain has ended
    def resealed(data):
        return list_stage(keys, TRUSTED, arc="fail")(broken(data))
    outcome, ar, report = send(postfix, sink, mw, keys, resealed)
    assert outcome == "550 5.7.1", (outcome, report)
    assert results(report, "arc")[0][0] == "fail"
    assert_scan_agrees(outcome, ar, report)
