"""The harness itself: DNS data, sink and Postfix without a milter."""

from __future__ import annotations

import socket

import dns.rcode
import pytest

from tests.harness import (BlackholeDns, DnsServer, Postfix, dot_stuff, make_message, smtp_send,
                           zone_to_local_data)


def test_zone_lines_become_local_data():
    records = zone_to_local_data(
        'a.test.example. 60 IN A 198.51.100.1\n'
        'b.test.example TXT "x;y" ; a comment\n'
        'c.test.example TIMEOUT\n'
        f'd.test.example TXT "{"z" * 300}"\n')
    assert records[0] == "a.test.example. 60 IN A 198.51.100.1"
    assert records[1] == 'b.test.example. 300 IN TXT "x;y"'
    assert len(records) == 3
    assert records[2] == f'd.test.example. 300 IN TXT "{"z" * 255}" "{"z" * 45}"'


def test_dot_stuffing():
    assert dot_stuff(b".a\n..b\nc") == b"..a\r\n...b\r\nc\r\n.\r\n"


def test_dns_server_answers_test_data(dns_server):
    dns_server_reply = dns_server.query("7.100.51.198.in-addr.arpa.", "PTR")
    assert dns_server_reply.rcode() == dns.rcode.NOERROR
    assert "mail.sender.example." in dns_server_reply.answer[0].to_text()
    assert dns_server.query("not-in-the-data.example.", "A").rcode() == dns.rcode.NXDOMAIN


def test_blackhole_never_answers():
    import dns.exception
    import dns.message
    import dns.query
    with BlackholeDns() as hole:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("x.example.", "A"), "127.0.0.1",
                          port=hole.port, timeout=0.3)


def test_postfix_without_milter_relays_to_sink(e2e_dir, sink):
    with Postfix(e2e_dir / "postfix-plain", sink.port) as plain:
        data, msgid = make_message("plain relay")
        result = smtp_send(plain.smtp_port, xclient={"ADDR": "IPV6:2001:db8::25"},
                           mail_from="a@sender.example", rcpts=["b@rcpt.example"], data=data)
        assert result.accepted, result
        got = sink.wait_for_match(msgid.encode(), timeout=30)
        assert got.mail_from == "a@sender.example"
        assert got.rcpts == ["b@rcpt.example"]
        assert got.headers["Subject"] == "plain relay"
        assert "2001:db8::25" in got.header_values("Received")[0]
        pid = plain.master_pid()
        assert pid
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", plain.smtp_port), timeout=1).close()


def test_dns_server_serves_long_txt_and_added_data(e2e_dir):
    key = "p=" + "A" * 400
    with DnsServer(e2e_dir / "dns-extra", zone_files=[],
                   zone_text=f'sel._domainkey.sender.example. TXT "v=DKIM1; k=rsa; {key}"') as server:
        reply = server.query("sel._domainkey.sender.example.", "TXT")
        (txt,) = reply.answer[0]
        assert b"".join(txt.strings) == f"v=DKIM1; k=rsa; {key}".encode()
        assert max(len(s) for s in txt.strings) <= 255
        assert server.query("added.sender.example.", "A").rcode() == dns.rcode.NXDOMAIN
        port = server.port
        server.add("added.sender.example. A 198.51.100.77\n"
                   "slow.sender.example. TIMEOUT")
        assert server.port == port
        reply = server.query("added.sender.example.", "A")
        assert reply.answer[0].to_text().endswith("198.51.100.77")


def test_sink_keeps_envelope_and_data(sink):
    import smtplib
    marker = b"sink-direct-test"
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
        client.sendmail("x@sender.example", ["y@rcpt.example", "z@rcpt.example"],
                        b"Subject: direct\r\n\r\n.leading dot\r\n" + marker + b"\r\n")
    got = sink.wait_for_match(marker, timeout=10)
    assert (got.mail_from, got.rcpts) == ("x@sender.example", ["y@rcpt.example", "z@rcpt.example"])
    assert got.headers["Subject"] == "direct"
    assert got.body.startswith(b".leading dot\r\n")



AUTHENTICATED = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "LOGIN": "alice"}


def test_starttls_then_xclient_hands_tls_to_the_milter(postfix, sink, mailwarden):
    """STARTTLS survives XCLIENT: the milter gets {tls_version} (an
    authenticated client without TLS is refused, with it accepted)."""
    mw = mailwarden({"check.submission": {"require_tls_for_auth": "yes"}})
    data, msgid = make_message("over tls")
    clear = smtp_send(postfix.smtp_port, mail_from="a@sender.example",
                      rcpts=["b@rcpt.example"], data=data, xclient=AUTHENTICATED)
    assert (clear.stage, clear.code) == ("mail", 530), clear
    result = smtp_send(postfix.smtp_port, starttls=True, mail_from="a@sender.example",
                       rcpts=["b@rcpt.example"], data=data, xclient=AUTHENTICATED)
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    assert [r[0] for r in result.replies[:5]] == ["CONNECT", "EHLO", "STARTTLS", "EHLO", "XCLIENT"]
    got = sink.wait_for_match(msgid.encode())
    assert "TLS" in got.header_values("Received")[0]
