"""The foundation through a real Postfix, a real mailwarden and unbound.

Clients are presented with XCLIENT (test networks only, never connected to);
DNS data is ``tests/data/zones/foundation.zone``.  Every message carries a
unique Message-ID (or body marker) so a test finds its own delivery.
"""

from __future__ import annotations

import random
import re

import pytest

from tests.harness import (AUTHSERV_ID, BlackholeDns, free_port, make_message, smtp_send,
                           wait_until)

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"

PASS_CLIENT = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "HELO": "mail.sender.example"}
FAIL_CLIENT = {"ADDR": "198.51.100.8", "NAME": "liar.sender.example", "HELO": "liar.sender.example"}
NOPTR_CLIENT = {"ADDR": "198.51.100.9", "NAME": "[UNAVAILABLE]", "HELO": "anon.sender.example"}
V6_CLIENT = {"ADDR": "IPV6:2001:db8::25", "NAME": "v6.sender.example", "HELO": "v6.sender.example"}
BLOCKED_CLIENT = {"ADDR": "203.0.113.9", "NAME": "[UNAVAILABLE]", "HELO": "blocked.example"}
ALLOWED_CLIENT = {"ADDR": "203.0.113.50", "NAME": "friend.sender.example", "HELO": "friend.sender.example"}

BLOCK_AND_ALLOW = {"check.iplist": {"block": "203.0.113.0/24", "allow": "203.0.113.50/32"}}


def send(postfix, client, data, **kw):
    return smtp_send(postfix.smtp_port, xclient=client, helo=client["HELO"],
                     mail_from=kw.pop("mail_from", SENDER), rcpts=kw.pop("rcpts", [RCPT]),
                     data=data, **kw)


def our_ar(message) -> list:
    """Values of the Authentication-Results headers that carry our authserv-id."""
    return [v for v in message.header_values("Authentication-Results")
            if v.lower().startswith(AUTHSERV_ID + ";")]


def deliver(postfix, sink, mw, client, subject, **kw):
    """Send one message that must be accepted; the message as the sink got it."""
    data, msgid = make_message(subject, **kw)
    result = send(postfix, client, data)
    assert result.accepted, f"{result}\n{mw.log_text()[-3000:]}"
    return sink.wait_for_match(msgid.encode(), timeout=30)


def assert_not_delivered(postfix, sink, needle: bytes):
    postfix.wait_queue_empty(timeout=30)
    assert sink.find(needle) == []


# -- iprev -------------------------------------------------------------------

def test_iprev_pass(postfix, sink, mailwarden):
    mw = mailwarden()
    got = deliver(postfix, sink, mw, PASS_CLIENT, "iprev pass")
    (ar,) = our_ar(got)
    assert re.search(r"\biprev=pass policy\.iprev=198\.51\.100\.7 \(mail\.sender\.example\)", ar), ar
    # the milter's header comes first, above Postfix's Received
    assert got.data.startswith(b"Authentication-Results:")


def test_iprev_pass_header_is_well_formed(postfix, sink, mailwarden):
    """The added header reads ``Name: value`` with one space (RFC 5322 §2.2 style)."""
    mw = mailwarden()
    got = deliver(postfix, sink, mw, PASS_CLIENT, "iprev format")
    assert got.data.startswith(b"Authentication-Results: " + AUTHSERV_ID.encode() + b";"), \
        got.data[:200]


def test_iprev_fail(postfix, sink, mailwarden):
    mw = mailwarden()
    got = deliver(postfix, sink, mw, FAIL_CLIENT, "iprev fail")
    (ar,) = our_ar(got)
    assert re.search(r"\biprev=fail\b.*policy\.iprev=198\.51\.100\.8", ar), ar


def test_iprev_permerror_without_ptr(postfix, sink, mailwarden):
    mw = mailwarden()
    got = deliver(postfix, sink, mw, NOPTR_CLIENT, "iprev permerror")
    (ar,) = our_ar(got)
    assert re.search(r"\biprev=permerror\b.*policy\.iprev=198\.51\.100\.9", ar), ar


def test_iprev_pass_ipv6(postfix, sink, mailwarden):
    mw = mailwarden()
    got = deliver(postfix, sink, mw, V6_CLIENT, "iprev v6")
    (ar,) = our_ar(got)
    # ':' is not a token character: RFC 8601 needs the address quoted
    assert re.search(r'\biprev=pass policy\.iprev="2001:db8::25" \(v6\.sender\.example\)', ar), ar


# -- the milter on TCP --------------------------------------------------------


def test_mail_flows_over_tcp(postfix, sink, mailwarden, milter_socket_path):
    """On ``inet:`` the milter negotiates another protocol (the DATA step
    kept: see mailwarden.sockopt); the same mail goes through, rejected and
    accepted alike, headers changed at end of message."""
    address = f"inet:127.0.0.1:{free_port()}"      # Postfix's notation
    mw = mailwarden({"milter": {"socket": address}, **BLOCK_AND_ALLOW, **SMALL})
    postfix.postconf(smtpd_milters=address, non_smtpd_milters=address)
    postfix.restart()
    try:
        for n in range(2):
            got = deliver(postfix, sink, mw, PASS_CLIENT, f"over tcp {n}")
            (ar,) = our_ar(got)
            assert re.search(r"\biprev=pass\b", ar), ar
            assert got.data.startswith(b"Authentication-Results:")
        data, blocked = make_message("blocked over tcp")
        result = send(postfix, BLOCKED_CLIENT, data)
        assert (result.stage, result.code) == ("xclient", 554), result
        data, too_big = make_message("too big over tcp", body=("y" * 70 + "\n") * 300)
        result = send(postfix, PASS_CLIENT, data)
        assert (result.stage, result.code, result.enhanced) == ("data", 552, "5.3.4"), result
        for msgid in (blocked, too_big):
            assert_not_delivered(postfix, sink, msgid.encode())
    finally:
        unix = f"unix:{milter_socket_path}"
        postfix.postconf(smtpd_milters=unix, non_smtpd_milters=unix)
        postfix.restart()
    log = mw.log_text()
    port = address.rsplit(":", 1)[1]
    assert f"listening on inet:{port}@127.0.0.1" in log
    assert "Traceback" not in log


# -- size --------------------------------------------------------------------

SMALL = {"check.size": {"max_size": "10K"}}


def test_declared_size_over_limit_refused_at_mail_from(postfix, sink, mailwarden):
    mailwarden(SMALL)
    data, msgid = make_message("declared too big")
    result = send(postfix, PASS_CLIENT, data, esmtp_size=50_000)
    assert (result.stage, result.code, result.enhanced) == ("mail", 552, "5.3.4"), result
    assert_not_delivered(postfix, sink, msgid.encode())


def test_body_over_limit_refused_at_end_of_data(postfix, sink, mailwarden):
    mw = mailwarden(SMALL)
    data, msgid = make_message("too big", body="x" * 70 + "\n" * 1 + ("y" * 70 + "\n") * 300)
    assert len(data) > 10 * 1024
    result = send(postfix, PASS_CLIENT, data)
    assert (result.stage, result.code, result.enhanced) == ("data", 552, "5.3.4"), result
    assert_not_delivered(postfix, sink, msgid.encode())
    # the stop during the body is logged under the queue id Postfix logs it with
    found = []

    def refusal_logged():
        found[:] = re.findall(r"(\w+): milter-reject: END-OF-MESSAGE .*5\.3\.4",
                              postfix.log_path.read_text(errors="replace"))
        return bool(found)
    wait_until(refusal_logged, 15, "Postfix to log the refusal")
    assert f"{found[-1]}: stage=body action=reject" in mw.log_text(), mw.log_text()[-2000:]


def test_message_under_limit_passes(postfix, sink, mailwarden):
    mw = mailwarden(SMALL)
    data, msgid = make_message("small enough", body="z" * 2000 + "\n")
    result = send(postfix, PASS_CLIENT, data, esmtp_size=len(data))
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    sink.wait_for_match(msgid.encode())


# -- local IP lists -------------------------------------------------------------

def test_blocked_client_refused_with_554(postfix, sink, mailwarden):
    mailwarden(BLOCK_AND_ALLOW)
    data, msgid = make_message("blocked")
    result = send(postfix, BLOCKED_CLIENT, data)
    assert not result.accepted
    # Postfix answers a connect-stage reject with its own text ("554 ...
    # not accepting connections"), to XCLIENT, which stands for the connect
    assert (result.stage, result.code) == ("xclient", 554), result
    assert_not_delivered(postfix, sink, msgid.encode())


def test_unlisted_client_still_passes_with_block_list(postfix, sink, mailwarden):
    mw = mailwarden(BLOCK_AND_ALLOW)
    got = deliver(postfix, sink, mw, PASS_CLIENT, "not blocked")
    (ar,) = our_ar(got)
    assert "iprev=pass" in ar


def test_allowlisted_client_skips_iprev(postfix, sink, mailwarden):
    mw = mailwarden(BLOCK_AND_ALLOW)
    got = deliver(postfix, sink, mw, ALLOWED_CLIENT, "allow-listed")
    assert all("iprev=" not in ar for ar in our_ar(got)), our_ar(got)


# -- DNS failures --------------------------------------------------------------

SLOW_DNS = {"dns": {"timeout": "500ms", "message_deadline": "2s"}}


def test_dns_timeout_tempfails(postfix, sink, mailwarden):
    with BlackholeDns() as hole:
        mailwarden(SLOW_DNS, dns_port=hole.port)
        data, msgid = make_message("dns down")
        result = send(postfix, PASS_CLIENT, data)
        assert 400 <= result.code < 500, result
        assert not result.accepted
    assert_not_delivered(postfix, sink, msgid.encode())


def test_dns_timeout_accepted_when_configured(postfix, sink, mailwarden):
    overrides = {**SLOW_DNS, "policy": {"temperror_action": "accept"}}
    with BlackholeDns() as hole:
        mw = mailwarden(overrides, dns_port=hole.port)
        got = deliver(postfix, sink, mw, PASS_CLIENT, "dns down, accept")
    (ar,) = our_ar(got)
    assert "iprev=temperror" in ar, ar


# -- forged Authentication-Results ------------------------------------------------

def test_forged_authentication_results_removed_others_kept(postfix, sink, mailwarden):
    mw = mailwarden()
    got = deliver(postfix, sink, mw, PASS_CLIENT, "forged", extra_headers=[
        f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=forged.example",
        "Authentication-Results: other.example; dkim=pass header.d=other.example",
        "Authentication-Results: (sneaky) MX.Test.Example.;\r\n\tdmarc=pass header.from=forged.example",
    ])
    values = got.header_values("Authentication-Results")
    assert not any("forged.example" in v for v in values), values
    assert "other.example; dkim=pass header.d=other.example" in values
    (ours,) = our_ar(got)
    assert "iprev=pass" in ours


# -- malformed input ---------------------------------------------------------------

def _normal_still_passes(postfix, sink, mw):
    got = deliver(postfix, sink, mw, PASS_CLIENT, "after malformed")
    assert our_ar(got)
    assert mw.alive(), mw.log_text()[-3000:]


def _marker():
    return f"marker-{random.getrandbits(64):016x}"


MALFORMED = {
    "no headers": lambda m: f"\r\nno header section at all {m}\r\n".encode(),
    "no header separator": lambda m: f"just words, not a header {m}\r\nmore words\r\n".encode(),
    "binary garbage": lambda m: (random.Random(7).randbytes(6000).replace(b"\x00", b"\x01")
                                 + f"\r\n{m}\r\n".encode()),
    "nul bytes": lambda m: b"Subject: nul\x00here\r\n\r\nbody\x00" + m.encode() + b"\r\n",
    "8-bit header": lambda m: (b"From: caf\xc3\xa9 <a@sender.example>\r\nSubject: \xff\xfe\xfd "
                               b"raw 8-bit\r\nX-Latin1: \xe9t\xe9\r\n\r\n" + m.encode() + b"\r\n"),
    "1000-line header": lambda m: (b"Subject: long\r\nX-Long: start\r\n"
                                   + b"".join(b"\tcontinuation line %d\r\n" % i for i in range(1000))
                                   + b"\r\n" + m.encode() + b"\r\n"),
    "1000 header fields": lambda m: (b"".join(b"X-Field-%d: value\r\n" % i for i in range(1000))
                                     + b"\r\n" + m.encode() + b"\r\n"),
    "header without colon": lambda m: (b"Subject: x\r\nthis line has no colon\r\n\r\n"
                                       + m.encode() + b"\r\n"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_message_does_not_break_the_milter(postfix, sink, mailwarden, kind):
    mw = mailwarden()
    marker = _marker()
    result = send(postfix, PASS_CLIENT, MALFORMED[kind](marker))
    # whatever the verdict, it is a verdict: not the tempfail of a dead milter
    assert result.accepted or result.code >= 500, f"{result}\n{mw.log_text()[-3000:]}"
    assert mw.alive(), mw.log_text()[-3000:]
    if result.accepted:
        sink.wait_for_match(marker.encode())
    assert "Traceback" not in mw.log_text(), mw.log_text()[-3000:]
    _normal_still_passes(postfix, sink, mw)


# -- mailwarden scan agrees with the milter -----------------------------------------

def _scan_reply_code(verdict) -> int:
    return int(verdict["smtp_reply"].split()[0]) if verdict["smtp_reply"] else 250


def _scan_ar(verdict) -> list:
    return [re.sub(r"\s+", " ", value).strip() for name, value in verdict["headers_added"]
            if name.lower() == "authentication-results"]


AGREEMENT_CASES = {
    "iprev pass": (None, PASS_CLIENT, {}),
    "iprev fail": (None, FAIL_CLIENT, {}),
    "iprev permerror": (None, NOPTR_CLIENT, {}),
    "ipv6 pass": (None, V6_CLIENT, {}),
    "blocked": (BLOCK_AND_ALLOW, BLOCKED_CLIENT, {}),
    "allow-listed": (BLOCK_AND_ALLOW, ALLOWED_CLIENT, {}),
    "declared too big": (SMALL, PASS_CLIENT, {"esmtp_size": 50_000}),
    "too big": (SMALL, PASS_CLIENT, {"body": "w" * 12_000 + "\n"}),
    "forged A-R": (None, PASS_CLIENT, {"extra_headers": [
        f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=x.example"]}),
}


@pytest.mark.parametrize("case", sorted(AGREEMENT_CASES))
def test_scan_agrees_with_milter(postfix, sink, mailwarden, case):
    overrides, client, extra = AGREEMENT_CASES[case]
    mw = mailwarden(overrides)
    esmtp_size = extra.get("esmtp_size")
    data, msgid = make_message(f"agreement {case}", body=extra.get("body", "Hello.\n"),
                               extra_headers=extra.get("extra_headers", ()))
    result = send(postfix, client, data, esmtp_size=esmtp_size)

    ip = re.sub(r"(?i)^ipv6:", "", client["ADDR"])
    name = client["NAME"] if not client["NAME"].startswith("[") else ""
    verdict = mw.scan(data, client_ip=ip, client_name=name, helo=client["HELO"],
                      mail_from=SENDER, rcpts=[RCPT], esmtp_size=esmtp_size)

    if result.accepted:
        assert verdict["action"] in ("accept", "add_header"), (verdict, result)
        got = sink.wait_for_match(msgid.encode())
        arrived = [re.sub(r"\s+", " ", v) for v in our_ar(got)]
        assert arrived == _scan_ar(verdict), (arrived, verdict)
        removed = [value for _name, value in verdict["headers_removed"]]
        for value in removed:
            assert value.strip() not in got.data.decode("utf-8", "replace")
    else:
        assert verdict["action"] in ("reject", "tempfail"), (verdict, result)
        assert _scan_reply_code(verdict) == result.code, (verdict, result)
        if result.stage != "xclient":       # Postfix keeps its own text at connect
            assert verdict["smtp_reply"].split()[1] == result.enhanced, (verdict, result)
        assert_not_delivered(postfix, sink, msgid.encode())


# -- local submission (non_smtpd_milters) ------------------------------------------

def test_local_submission_goes_through_the_milter(postfix, sink, mailwarden):
    mw = mailwarden()
    data, msgid = make_message("sendmail submission")
    proc = postfix.sendmail(SENDER, [RCPT], data)
    assert proc.returncode == 0, proc.stderr
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    # the milter saw it: its verdict header is there, no client to look up
    assert got.header_values("X-Mailwarden-Status"), got.data[:500]
    assert all("iprev=" not in ar for ar in our_ar(got))
    assert mw.alive()


# -- dry run -----------------------------------------------------------------------

def test_dry_run_lets_a_blocked_client_through_and_says_so(postfix, sink, mailwarden):
    mw = mailwarden({**BLOCK_AND_ALLOW, "policy": {"dry_run": "yes"}})
    got = deliver(postfix, sink, mw, BLOCKED_CLIENT, "dry run")
    assert got.header_values("X-Mailwarden-Status"), got.data[:500]
    assert "IPLIST_BLOCK" in mw.log_text(), mw.log_text()[-2000:]
