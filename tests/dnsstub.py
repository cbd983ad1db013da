"""A tiny authoritative DNS server on loopback, in a thread, for tests.

Answers from a ZoneBackend-style zone text; names listed in ``servfail``
get SERVFAIL, names in ``silent`` get no answer at all (a timeout), and
``delay`` seconds pass before each answer.  UDP only; bounded by the test.
"""

from __future__ import annotations

import socket
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class StubDns:
    def __init__(self, zone_text: str = "", servfail=(), silent=(), delay: float = 0.0):
        self.records = {}
        for raw in zone_text.splitlines():
            line = raw.split(";", 1)[0].strip()
            if not line:
                continue
            name, rest = line.split(None, 1)
            parts = rest.split(None, 1)
            ttl = 300
            if parts[0].isdigit():
                ttl = int(parts[0])
                parts = parts[1].split(None, 1)
            rdtype, rdata = parts[0].upper(), parts[1]
            key = (name.rstrip(".").lower(), rdtype)
            self.records.setdefault(key, (ttl, []))[1].append(rdata)
        self.servfail = {n.rstrip(".").lower() for n in servfail}
        self.silent = {n.rstrip(".").lower() for n in silent}
        self.delay = delay
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(data, peer), daemon=True).start()

    def _answer(self, data, peer):
        self.queries += 1
        try:
            query = dns.message.from_wire(data)
        except Exception:          # garbage in a test server: ignore it
            return
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        if name in self.silent:
            return
        if self.delay:
            time.sleep(self.delay)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            ttl, values = self.records[(name, rdtype)]
            rrset = dns.rrset.from_text_list(q.name, ttl, dns.rdataclass.IN, q.rdtype, values)
            response.answer.append(rrset)
        elif any(n == name for n, _ in self.records):
            pass                      # NODATA
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        try:
            self.sock.sendto(response.to_wire(), peer)
        except OSError:
            pass
