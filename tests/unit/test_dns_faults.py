"""DNS faults from a misbehaving server on loopback, through the real resolver.

The server answers every query in one way: SERVFAIL, not at all, a truncated
UDP answer that needs TCP (served right over TCP), an answer with the wrong
query id, garbage bytes, or a good answer 10 s late.  Each must become the
right status (temporary or not), no lookup may outlast ``[dns] timeout`` or
the message deadline, and a whole message must still get its verdict within
the deadline, with the configured temperror action.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from mailwarden.config import loads
from mailwarden.dns import Resolver, Status
from mailwarden.engine import Engine, run_offline

GOOD_A = "192.0.2.55"


class BadDns:
    """UDP and TCP on one loopback port, misbehaving as ``mode`` says."""

    def __init__(self, mode: str):
        self.mode = mode
        for _ in range(50):           # one number free for both UDP and TCP
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.bind(("127.0.0.1", 0))
            self.port = self.tcp.getsockname()[1]
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.udp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self.udp.settimeout(0.1)
        self.tcp.settimeout(0.1)
        self.tcp_queries = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._udp_loop, daemon=True),
                         threading.Thread(target=self._tcp_loop, daemon=True)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()

    def _good(self, query):
        response = dns.message.make_response(query)
        q = query.question[0]
        response.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", GOOD_A))
        return response

    def _udp_loop(self):
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._udp_answer, args=(data, peer), daemon=True).start()

    def _udp_answer(self, data, peer):
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        mode = self.mode
        if mode == "silent":
            return
        if mode == "servfail":
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            wire = response.to_wire()
        elif mode == "truncated":
            response = dns.message.make_response(query)
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        elif mode == "wrong_id":
            response = self._good(query)
            response.id = (query.id + 1) & 0xffff
            wire = response.to_wire()
        elif mode == "garbage":
            wire = data[:2] + b"\x81\x80" + b"\xff" * 40
        elif mode == "late":
            if self._stop.wait(10):
                return
            wire = self._good(query).to_wire()
        else:
            wire = self._good(query).to_wire()
        try:
            self.udp.sendto(wire, peer)
        except OSError:
            pass

    def _tcp_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    size = struct.unpack("!H", conn.recv(2))[0]
                    query = dns.message.from_wire(conn.recv(size))
                except (OSError, struct.error, dns.exception.DNSException):
                    continue
                self.tcp_queries += 1
                wire = self._good(query).to_wire()
                conn.sendall(struct.pack("!H", len(wire)) + wire)


def _resolver(port, timeout="1s", deadline="2s"):
    cfg = loads(f"[authserv]\nid = mx.test.example\n[dns]\nnameservers = 127.0.0.1\n"
                f"port = {port}\ntimeout = {timeout}\nmessage_deadline = {deadline}\n")
    return cfg, Resolver(cfg.dns)


# an answer with the wrong id (or unreadable) is ignored and the real one
# waited for (CVE-2023-29483, "TuDoor"): mailwarden.dnswire reads these
# answers itself, so this holds on Debian 12's dnspython 2.3.0 too, where
# dnspython's own reader (before 2.6) ended the lookup at the first such
# packet


@pytest.mark.parametrize("mode,status", [
    ("servfail", Status.SERVFAIL),
    ("silent", Status.TIMEOUT),
    ("wrong_id", Status.TIMEOUT),
    ("garbage", None),                  # ERROR or TIMEOUT: temporary either way
    ("late", Status.TIMEOUT),
])
def test_fault_is_a_temporary_status_within_the_timeout(mode, status):
    with BadDns(mode) as server:
        _cfg, resolver = _resolver(server.port)
        try:
            started = time.monotonic()
            answer = resolver.query("a.fault.example", "A")
            took = time.monotonic() - started
        finally:
            resolver.close()
    assert answer.temporary, answer
    if status is not None:
        assert answer.status is status, answer
    assert took < 1.5, f"{mode}: {took:.2f}s for a 1s timeout"


def test_truncated_udp_answer_is_asked_again_over_tcp():
    with BadDns("truncated") as server:
        _cfg, resolver = _resolver(server.port)
        try:
            answer = resolver.query("tc.fault.example", "A")
        finally:
            resolver.close()
        assert answer.ok and answer.records == (GOOD_A,), answer
        assert server.tcp_queries == 1


@pytest.mark.parametrize("mode", ["silent", "late", "wrong_id"])
def test_message_deadline_bounds_many_lookups(mode):
    with BadDns(mode) as server:
        _cfg, resolver = _resolver(server.port, timeout="1s", deadline="1.5s")
        try:
            session = resolver.session()
            started = time.monotonic()
            for i in range(5):        # one after another: 5 s without the deadline
                answer = session.query(f"n{i}.fault.example", "A")
                assert answer.temporary
            took = time.monotonic() - started
        finally:
            resolver.close()
    assert took < 1.5 + 0.5, f"{took:.2f}s against a 1.5s deadline"


@pytest.mark.parametrize("action,expected", [("accept", {"accept", "add_header"}),
                                             ("tempfail", {"tempfail"})])
@pytest.mark.parametrize("mode", ["servfail", "silent", "garbage", "late"])
def test_mail_flows_with_the_temperror_action(mode, action, expected):
    with BadDns(mode) as server:
        cfg = loads(f"[authserv]\nid = mx.test.example\n[dns]\nnameservers = 127.0.0.1\n"
                    f"port = {server.port}\ntimeout = 0.5s\nmessage_deadline = 1s\n"
                    f"[policy]\ntemperror_action = {action}\n"
                    f"[check.spf]\ntempfail_on_error = yes\n")
        engine = Engine(cfg, hostname="mx.test.example")
        try:
            started = time.monotonic()
            verdict, conn, msg = run_offline(
                engine, client_ip="198.51.100.7", helo="mail.sender.example",
                mail_from="a@sender.example", rcpts=["b@rcpt.example"],
                message=b"From: a@sender.example\r\nSubject: x\r\n\r\nhttp://u.example.org/\r\n")
            took = time.monotonic() - started
            if msg is not None:
                msg.close()
        finally:
            engine.close()
    assert verdict.action in expected, (verdict.action, verdict.reason)
    assert any(r.result == "temperror" for r in verdict.results)
    # connect, HELO and the message each get a session with its own deadline
    assert took < 3 * 1 + 0.75, f"{mode}: the milter added {took:.1f}s"
