"""URL lists through a real Postfix, a real mailwarden and unbound.

The lists' documented test points (``test.surbl.org``, ``test.uribl.com``,
``dbltest.com``, RFC 5782's ``TEST``) and their error codes are served from
``tests/data/zones/uribl.zone``; ``mailwarden scan`` must reach the same
verdict as the milter for each message.
"""

from __future__ import annotations

import re

import pytest

from tests.harness import make_message, smtp_send

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"
CLIENT = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "HELO": "mail.sender.example"}
STATUS = "X-Mailwarden-Status"

ON = {"check.uribl": {"enabled": "yes"}}
RHSBL_REJECT = {
    "check.uribl": {"enabled": "yes", "lists": "rhsbl"},
    "check.uribl.rhsbl": {"zone": "rhsbl.mailwarden.test", "match": "codes",
                          "codes": "127.0.0.2:RHSBL_LISTED", "reject": "yes"},
}
DBL_REJECT = {
    "check.uribl": {"enabled": "yes", "lists": "dbl"},
    "check.uribl.dbl": {"zone": "dbl.spamhaus.org", "match": "codes",
                        "codes": "127.0.1.2:DBL_SPAM", "reject": "yes",
                        "errors": "127.0.1.255, 127.255.255.0/24"},
}
HTML = "Content-Type: text/html; charset=utf-8"

# name: (overrides, body, extra headers, expected: "accept" or the reply text start,
#        symbols that must show in the status header, symbols that must not)
CASES = {
    "surbl test point rejected on score": (
        ON, '<a href="http://test.surbl.org/">x</a>\n', [HTML],
        "550 5.7.1 Message rejected by content policy", ["SURBL_PH[test.surbl.org]"], []),
    "uribl test point scored": (
        ON, "Go to http://test.uribl.com/ now.\n", [],
        "accept", ["URIBL_BLACK(5.00)[test.uribl.com]", "URIBL_RED(1.00)[test.uribl.com]"], []),
    "dbl test point scored": (
        ON, '<img src="https://dbltest.com/p.gif">\n', [HTML],
        "accept", ["DBL_SPAM(5.00)[dbltest.com]"], []),
    "dbl list with reject": (
        DBL_REJECT, '<a href="http://www.dbltest.com/">x</a>\n', [HTML],
        "550 5.7.1 Message contains a link to dbltest.com, listed in dbl.spamhaus.org", [], []),
    "rfc5782 TEST listed": (
        RHSBL_REJECT, "http://test/\n", [],
        "550 5.7.1 Message contains a link to test, listed in rhsbl.mailwarden.test", [], []),
    "rfc5782 INVALID not listed": (
        RHSBL_REJECT, "http://invalid/\n", [], "accept", [], ["RHSBL"]),
    "clean domains not listed": (
        ON, '<a href="https://www.clean.example.net/">x</a> http://other-clean.example.org/\n',
        [HTML], "accept", [], ["SURBL", "URIBL", "DBL"]),
    "refused and error codes not listings": (
        ON, "http://refused.uribl-refused.test/ http://blocked.surbl-refused.test/ "
            "http://dbl-publicresolver.test/ http://dbl-ipquery.test/ http://dbl-wildcard.test/\n",
        [], "accept", [], ["SURBL_", "URIBL_BLACK", "URIBL_GREY", "URIBL_RED", "DBL_SPAM"]),
}


def _status(headers) -> str:
    return " ".join(re.sub(r"\s+", " ", v) for n, v in headers if n.lower() == STATUS.lower())


@pytest.mark.parametrize("case", sorted(CASES))
def test_url_lists_through_postfix_and_scan_agrees(postfix, sink, mailwarden, case):
    overrides, body, extra, expected, present, absent = CASES[case]
    mw = mailwarden(overrides)
    data, msgid = make_message(f"uribl {case}", body=body, extra_headers=extra)
    result = smtp_send(postfix.smtp_port, xclient=CLIENT, helo=CLIENT["HELO"],
                       mail_from=SENDER, rcpts=[RCPT], data=data)
    verdict = mw.scan(data, client_ip=CLIENT["ADDR"], client_name=CLIENT["NAME"],
                      helo=CLIENT["HELO"], mail_from=SENDER, rcpts=[RCPT])
    if expected == "accept":
        assert result.accepted, f"{result}\n{mw.log_text()[-3000:]}"
        got = sink.wait_for_match(msgid.encode(), timeout=30)
        arrived = _status([(STATUS, v) for v in got.header_values(STATUS)])
        assert arrived == _status(verdict["headers_added"]), (arrived, verdict)
        for word in present:
            assert word in arrived, arrived
        for word in absent:
            assert word not in arrived, arrived
        assert verdict["action"] in ("accept", "add_header")
    else:
        assert not result.accepted
        line = f"{result.code} {result.text}"
        assert line.startswith(expected), (line, mw.log_text()[-3000:])
        for word in present:
            assert word in line, line
        assert verdict["action"] == "reject"
        assert verdict["smtp_reply"].startswith(expected), verdict
        postfix.wait_queue_empty(timeout=30)
        assert sink.find(msgid.encode()) == []
