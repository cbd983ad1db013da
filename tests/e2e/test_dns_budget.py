"""A forged p=reject From that also multiplies lookups still gets its 550.

The message of tests/unit/test_dns_budget.py through the real Postfix,
unbound and mailwarden with the default configuration: its MAIL FROM and
HELO domains' SPF records and its URLs use up the message's lookup budget
(uribl on), and the lookups that decide DMARC (mw-reject.example's policy
record, the forged aligned signature's key) still run on the reserve.
"""

from __future__ import annotations

from tests.budgetcase import forged, hostile_zone

from tests.harness import smtp_send

STRANGER = {"ADDR": "198.51.100.142", "NAME": "[UNAVAILABLE]", "HELO": "mail.budget-evil.example"}


def test_a_forged_p_reject_from_is_refused_when_the_budget_is_used_up(
        dns_server, postfix, mailwarden):
    dns_server.add(hostile_zone())
    mw = mailwarden({"check.uribl": {"enabled": "yes"}})
    data = forged()
    result = smtp_send(postfix.smtp_port, xclient=STRANGER, helo=STRANGER["HELO"],
                       mail_from="x@budget-evil.example", rcpts=["bob@rcpt.example"], data=data)
    assert (result.stage, result.code) == ("data", 550), (result, mw.log_text()[-3000:])
    assert result.enhanced == "5.7.1", result
    report = mw.scan(data, client_ip=STRANGER["ADDR"], helo=STRANGER["HELO"],
                     mail_from="x@budget-evil.example", rcpts=["bob@rcpt.example"])
    assert report["smtp_reply"].startswith("550 5.7.1"), report
    (dmarc,) = [r for r in report["results"] if r["check"] == "dmarc"]
    assert dmarc["result"] == "fail", dmarc
    # the lookups the sender multiplied did run out of budget
    assert any("budget" in r["reason"] for r in report["results"]), report["results"]
