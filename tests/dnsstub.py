"""A tiny authoritative DNS server on loopback, in a thread, for tests.

Answers from a ZoneBackend-style zone text; names listed in ``servfail``
get SERVFAIL, names in ``silent`` get no answer at all (a timeout), and
``delay`` seconds pass before each answer.  UDP only; bounded by the test.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.udpserver import UdpServer


class StubDns(UdpServer):
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
        super().__init__()

    def handle(self, data: bytes):
        try:
            query = dns.message.from_wire(data)
        except Exception:          # garbage in a test server: ignore it
            return None
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        if name in self.silent:
            return None
        if self.delay:
            self.stopping.wait(self.delay)
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
        return response.to_wire()
