"""helo, dnsbl and limits through a real Postfix, unbound and mailwarden.

Clients are presented with XCLIENT; list data (RFC 5782 test points,
Spamhaus's codes) comes from ``tests/data/zones/dnsbl.zone``.  For helo and
dnsbl, ``mailwarden scan`` must reach the verdict the milter reached.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.harness import make_message, smtp_send, wait_until

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"
STATUS = "X-Mailwarden-Status"
# XCLIENT LOGIN presents a client authenticated without TLS, which the
# submission policy refuses: it is not what these tests are about
NO_SUBMISSION = {"check.submission": {"enabled": "no"}}

ZEN = {"zone": "zen.dnsbl.mailwarden.test", "kind": "ip",
       "codes": "127.0.0.2:SBL 127.0.0.3:CSS 127.0.0.4-127.0.0.7:XBL 127.0.0.9:DROP "
                "127.0.0.10-127.0.0.11:PBL",
       "errors": "127.255.255.0/24", "score": "1"}
DBL = {"zone": "dbl.dnsbl.mailwarden.test", "kind": "domain", "prefix": "SMTP_DBL",
       "codes": "127.0.1.2:SPAM 127.0.1.4:PHISH", "errors": "127.0.1.255 127.255.255.0/24",
       "score": "1"}


def lists(zen=None, dbl=None, **check):
    return {"check.dnsbl": dict(check),
            "check.dnsbl.zen": {**ZEN, **(zen or {})},
            "check.dnsbl.dbl": {**DBL, **(dbl or {})},
            # the BLOCKED symbols show in the status header only with a weight
            "scores": {"ZEN_BLOCKED": "0.01", "SMTP_DBL_BLOCKED": "0.01"}}


def _status(values) -> str:
    return " ".join(re.sub(r"\s+", " ", v) for v in values)


def through_both(postfix, sink, mw, *, addr, helo, mail_from=SENDER, name=None, login=None,
                 rcpts=(RCPT,)):
    """Send through Postfix and scan the same; (smtp result, scan JSON, status header)."""
    xclient = {"ADDR": addr}
    if name:
        xclient["NAME"] = name
    if login:
        xclient["LOGIN"] = login
    data, msgid = make_message(f"conn {addr} {helo} {mail_from}")
    result = smtp_send(postfix.smtp_port, xclient=xclient, helo=helo, mail_from=mail_from,
                       rcpts=list(rcpts), data=data)
    scan_ip = addr[5:] if addr.upper().startswith("IPV6:") else addr
    verdict = mw.scan(data, client_ip=scan_ip, client_name=name or "", helo=helo,
                      mail_from=mail_from, rcpts=list(rcpts), auth=login or "")
    status = ""
    if result.accepted:
        got = sink.wait_for_match(msgid.encode(), timeout=30)
        status = _status(got.header_values(STATUS))
        assert status == _status(v for n, v in verdict["headers_added"] if n == STATUS), \
            (status, verdict)
        assert verdict["action"] in ("accept", "add_header")
    else:
        assert verdict["smtp_reply"] == f"{result.code} {result.text}", (result, verdict)
    return result, verdict, status


# ---------------------------------------------------------------- dnsbl

DNSBL_CASES = {
    # name: (overrides, addr, helo, mail_from, expected reply start or "accept",
    #        symbols in the status header, symbols that must not be there)
    "rfc5782 127.0.0.1 not listed": (
        lists(zen={"reject": "yes"}), "127.0.0.1", "client.dnsbl.example", SENDER,
        "accept", [], ["ZEN_"]),
    "xbl and pbl scored": (
        lists(), "198.51.100.40", "client.dnsbl.example", SENDER,
        "accept", ["ZEN_XBL(1.00)", "ZEN_PBL(1.00)"], ["ZEN_SBL"]),
    "refused code is an error": (
        lists(zen={"reject": "yes"}), "198.51.100.41", "client.dnsbl.example", SENDER,
        "accept", ["ZEN_BLOCKED"], ["ZEN_LISTED", "ZEN_SBL"]),
    "answer outside 127/8 is an error": (
        lists(zen={"reject": "yes"}), "198.51.100.42", "client.dnsbl.example", SENDER,
        "accept", ["ZEN_BLOCKED"], ["ZEN_LISTED"]),
    "ipv6 reversed nibbles": (
        lists(), "IPV6:2001:db8::40", "client.dnsbl.example", SENDER,
        "accept", ["ZEN_CSS(1.00)"], []),
    "rfc5782 domain test listed as sender domain, rejected at mail": (
        lists(dbl={"reject": "yes"}), "198.51.100.7", "mail.sender.example", "someone@test",
        "554 5.7.1 Service unavailable; sender domain test blocked using "
        "dbl.dnsbl.mailwarden.test; https://check.spamhaus.org/listed/?searchterm=test", [], []),
    "rfc5782 domain invalid not listed": (
        lists(dbl={"reject": "yes"}), "198.51.100.7", "invalid", "someone@invalid",
        "accept", [], ["SMTP_DBL"]),
    "helo name listed": (
        lists(), "198.51.100.7", "test", SENDER, "accept", ["SMTP_DBL_SPAM(1.00)"], []),
    "dbl ip-query code is an error": (
        lists(), "198.51.100.7", "mail.sender.example", "x@ipquery.dbl-host.test",
        "accept", ["SMTP_DBL_BLOCKED"], ["SMTP_DBL_SPAM", "SMTP_DBL_LISTED"]),
    "verified ptr name listed": (
        lists(), "198.51.100.43", "client.dnsbl.example", SENDER,
        "accept", ["SMTP_DBL_PHISH(1.00)"], []),
    "allow-listed client skipped": (
        {**lists(zen={"reject": "yes"}), "check.iplist": {"allow": "127.0.0.2"}},
        "127.0.0.2", "client.dnsbl.example", SENDER, "accept", [], ["ZEN_"]),
}


@pytest.mark.parametrize("case", sorted(DNSBL_CASES))
def test_dnsbl_through_postfix_and_scan_agrees(postfix, sink, mailwarden, case):
    overrides, addr, helo, mail_from, expected, present, absent = DNSBL_CASES[case]
    mw = mailwarden(overrides)
    name = "phish.dbl-host.test" if addr == "198.51.100.43" else None
    result, verdict, status = through_both(postfix, sink, mw, addr=addr, helo=helo,
                                           mail_from=mail_from, name=name)
    if expected == "accept":
        assert result.accepted, f"{result}\n{mw.log_text()[-3000:]}"
        for word in present:
            assert word in status, status
        for word in absent:
            assert word not in status, status
    else:
        assert not result.accepted
        assert f"{result.code} {result.text}".startswith(expected), (result, mw.log_text()[-2000:])
        assert verdict["action"] == "reject"


def _conversation(port: int, commands) -> list:
    """Raw SMTP: the greeting and each command's last reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def reply():
            while True:
                line = reader.readline()
                if not line or line[3:4] != b"-":
                    return line.decode().rstrip("\r\n")

        out = [reply()]
        for command in commands:
            sock.sendall(command.encode() + b"\r\n")
            out.append(reply())
        return out


def test_dnsbl_reject_at_connect_carries_the_txt_reason(postfix, mailwarden):
    """Postfix answers a connect-stage reject with its own 554 greeting, then
    gives the milter's text (with the list's TXT reason) to MAIL FROM."""
    mw = mailwarden(lists(zen={"reject": "ZEN_SBL"}))
    replies = _conversation(postfix.smtp_port, [
        "EHLO client.dnsbl.example", "XCLIENT ADDR=127.0.0.2", "EHLO client.dnsbl.example",
        f"MAIL FROM:<{SENDER}>", "QUIT"])
    expected = ("554 5.7.1 Service unavailable; client [127.0.0.2] blocked using "
                "zen.dnsbl.mailwarden.test; Listed in SBL, see "
                "https://check.spamhaus.org/listed/?searchterm=127.0.0.2")
    assert replies[2].startswith("554 "), replies
    assert replies[4] == expected, replies
    data, _ = make_message("connect reject")
    verdict = mw.scan(data, client_ip="127.0.0.2", helo="client.dnsbl.example",
                      mail_from=SENDER, rcpts=[RCPT])
    assert verdict["action"] == "reject" and verdict["smtp_reply"] == expected


def test_dnsbl_authenticated_client_skipped_at_mail(postfix, sink, mailwarden):
    # 127.0.0.2 would be a trusted client here: a listed address outside 127/8
    mw = mailwarden({**lists(zen={"reject": "yes"}, lookup_at="mail"), **NO_SUBMISSION})
    result, verdict, _ = through_both(postfix, sink, mw, addr="198.51.100.40",
                                      helo="client.dnsbl.example", login="alice")
    assert result.accepted, result
    assert not any(r["check"] == "dnsbl" for r in verdict["results"])
    # the same client unauthenticated is refused at MAIL FROM
    result, verdict, _ = through_both(postfix, sink, mw, addr="198.51.100.40",
                                      helo="client.dnsbl.example")
    assert (result.stage, result.code) == ("mail", 554), result


# ---------------------------------------------------------------- helo

HELO_SYMBOLS = ["HELO_INVALID", "HELO_BARE_IP", "HELO_NOT_FQDN", "HELO_LITERAL_MISMATCH",
                "HELO_LITERAL_MATCH", "HELO_OUR_NAME", "HELO_OUR_ADDRESS",
                "HELO_FORWARD_MATCH", "HELO_FORWARD_MISMATCH", "HELO_NO_ADDRESS"]
# every helo symbol weighs 0.1 so that each shows in the status header
HELO_ON = {"check.helo": {"our_names": "mx.test.example", "our_addresses": "192.0.2.25"},
           "scores": {s: "0.1" for s in HELO_SYMBOLS}}

HELO_CASES = [
    ("198.51.100.7", "mail.sender.example", ["HELO_FORWARD_MATCH"]),
    ("IPV6:2001:db8::40", "v6.helo.mailwarden.test", ["HELO_FORWARD_MATCH"]),
    ("198.51.100.7", "elsewhere.helo.mailwarden.test", ["HELO_FORWARD_MISMATCH"]),
    ("198.51.100.7", "noaddr.helo.mailwarden.test", ["HELO_NO_ADDRESS"]),
    ("198.51.100.7", "[198.51.100.7]", ["HELO_LITERAL_MATCH"]),
    ("198.51.100.7", "[203.0.113.9]", ["HELO_LITERAL_MISMATCH"]),
    ("198.51.100.7", "[192.0.2.25]", ["HELO_OUR_ADDRESS", "HELO_LITERAL_MISMATCH"]),
    ("198.51.100.7", "198.51.100.7", ["HELO_BARE_IP"]),
    ("198.51.100.7", "localhost", ["HELO_NOT_FQDN"]),
    ("198.51.100.7", "mx.test.example", ["HELO_OUR_NAME"]),
    ("198.51.100.7", "under_score.example", ["HELO_INVALID"]),
]


@pytest.mark.parametrize("addr,helo,symbols", HELO_CASES, ids=[c[1] for c in HELO_CASES])
def test_helo_outcomes_through_postfix_and_scan_agrees(postfix, sink, mailwarden, addr, helo,
                                                       symbols):
    mw = mailwarden(HELO_ON)
    result, verdict, status = through_both(postfix, sink, mw, addr=addr, helo=helo)
    assert result.accepted, f"{result}\n{mw.log_text()[-3000:]}"
    found = re.findall(r"\b(HELO_[A-Z_]+)\(", status)
    assert sorted(found) == sorted(symbols), status


def test_helo_reject_is_configurable(postfix, sink, mailwarden):
    mw = mailwarden({"check.helo": {**HELO_ON["check.helo"], "reject": "HELO_OUR_NAME"}})
    result, verdict, _ = through_both(postfix, sink, mw, addr="198.51.100.7",
                                      helo="mx.test.example")
    # Postfix holds a HELO-stage milter reject until MAIL FROM (its delayed reject)
    assert (result.stage, result.code, result.enhanced) == ("mail", 550, "5.7.1"), result
    assert verdict["smtp_reply"] == f"{result.code} {result.text}"


# ---------------------------------------------------------------- limits

def _hold_connection(port: int, addr: str) -> tuple:
    """An SMTP session presented as ``addr`` and left open (the milter saw it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    reader = sock.makefile("rb")

    def reply():
        while True:
            line = reader.readline()
            if not line or line[3:4] != b"-":
                return line

    assert reply().startswith(b"220")
    sock.sendall(b"EHLO hold.example\r\n")
    assert reply().startswith(b"250")
    sock.sendall(f"XCLIENT ADDR={addr}\r\n".encode())
    assert reply().startswith(b"220")
    sock.sendall(b"EHLO hold.example\r\n")
    assert reply().startswith(b"250")
    return sock, reader


def _send(postfix, addr="198.51.100.60", mail_from=SENDER, rcpts=(RCPT,), login=None):
    xclient = {"ADDR": addr}
    if login:
        xclient["LOGIN"] = login
    data, _ = make_message(f"limits {addr}")
    return smtp_send(postfix.smtp_port, xclient=xclient, helo="client.limits.example",
                     mail_from=mail_from, rcpts=list(rcpts), data=data)


def test_concurrent_connections_per_ip(postfix, mailwarden):
    mw = mailwarden({"check.limits": {"concurrent_per_ip": "1"}})
    held, reader = _hold_connection(postfix.smtp_port, "198.51.100.61")
    try:
        refused = _send(postfix, addr="198.51.100.61")
        # at connect Postfix replies 421 with its own text and hangs up
        assert (refused.stage, refused.code) == ("xclient", 421), refused
        assert _send(postfix, addr="198.51.100.62").accepted
    finally:
        held.sendall(b"QUIT\r\n")
        reader.close()
        held.close()
    # the slot comes back when Postfix closes the milter session
    wait_until(lambda: _send(postfix, addr="198.51.100.61").accepted, 20,
               "the connection slot to be given back")
    assert "concurrent_per_ip exceeded for 198.51.100.61/32: 1 of 1" in mw.log_text()


def test_connection_rate_per_ip(postfix, mailwarden):
    mw = mailwarden({"check.limits": {"connections_per_ip": "2/1h"}})
    results = [_send(postfix, addr="198.51.100.63") for _ in range(3)]
    assert [r.accepted for r in results] == [True, True, False]
    assert (results[2].stage, results[2].code) == ("xclient", 421), results[2]
    assert _send(postfix, addr="198.51.100.64").accepted
    log = mw.log_text()
    assert "connections_per_ip exceeded for 198.51.100.63/32: 2 of 2 per 3600s" in log
    assert "refused with 421 4.7.0 Too many connections from your network" in log


def test_messages_per_sender(postfix, mailwarden):
    """Anyone may write any MAIL FROM: a sender SPF did not pass for is
    counted per client network, so forgeries elsewhere cannot lock it out;
    one SPF passed for (limits.zone) is counted alone, whatever the client."""
    mw = mailwarden({"check.limits": {"messages_per_sender": "1/1h"}})
    assert _send(postfix, mail_from="bulk@sender.example").accepted
    refused = _send(postfix, mail_from="bulk@sender.example")
    assert (refused.stage, refused.code, refused.enhanced) == ("mail", 451, "4.7.1"), refused
    assert ("messages_per_sender exceeded for <bulk@sender.example> from 198.51.100.60/32: "
            "1 of 1") in mw.log_text()
    # the same address forged from other networks: their own counts
    for addr in ("198.51.100.65", "203.0.113.65", "IPV6:2001:db8:65::1"):
        assert _send(postfix, addr=addr, mail_from="bulk@sender.example").accepted, addr
    # SPF passes: one count for every address the domain gives
    assert _send(postfix, addr="198.51.100.66", mail_from="news@limits.sender.example").accepted
    refused = _send(postfix, addr="198.51.100.67", mail_from="news@limits.sender.example")
    assert (refused.stage, refused.code, refused.enhanced) == ("mail", 451, "4.7.1"), refused
    assert "messages_per_sender exceeded for <news@limits.sender.example>: 1 of 1" in \
        mw.log_text()


def test_recipients_per_user_and_per_message(postfix, mailwarden):
    mw = mailwarden({"check.limits": {"recipients_per_user": "3/1h",
                                      "recipients_per_message": "2"}, **NO_SUBMISSION})
    first = _send(postfix, login="carol", rcpts=["a@rcpt.example", "b@rcpt.example",
                                                 "c@rcpt.example"])
    assert first.accepted and first.accepted_rcpts == ["a@rcpt.example", "b@rcpt.example"]
    codes = [(code, text[:5]) for cmd, code, text in first.replies if cmd.startswith("RCPT")]
    assert codes[2] == (452, "4.5.3"), first.replies
    second = _send(postfix, login="carol", rcpts=["d@rcpt.example", "e@rcpt.example"])
    codes = [(code, text[:5]) for cmd, code, text in second.replies if cmd.startswith("RCPT")]
    assert codes == [(250, "2.1.5"), (451, "4.7.1")], second.replies
    assert "recipients_per_user exceeded for user carol: 3 of 3" in mw.log_text()


def test_redis_down_fails_open(postfix, sink, mailwarden):
    with socket.socket() as probe:          # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mw = mailwarden({"state": {"backend": "redis", "url": f"redis://127.0.0.1:{port}/0",
                               "timeout": "200ms"},
                     "check.limits": {"concurrent_per_ip": "1", "connections_per_ip": "1/1h",
                                      "messages_per_sender": "1/1h"}})
    for _ in range(2):
        assert _send(postfix, addr="198.51.100.66").accepted
    log = mw.log_text()
    assert "limits: state store failed, not limiting" in log
    assert "Traceback" not in log
