"""How long the connect stage takes with N DNS lists on a slow DNS server.

A small DNS server on 127.0.0.1 answers every query after ``--delay``
seconds (NXDOMAIN, or 127.0.0.2 for the RFC 5782 test point), one thread
per query so that answers overlap as a real server's would.  The engine
runs with ``--zones`` IP lists and a real resolver pointed at it; each
connection comes from a new address (no cache hits).  Printed: the median,
the 90th percentile and the worst connect-stage time, next to the delay
times the number of lists (what one list after another would cost).

    .venv/bin/python bench/dnsbl_connect.py --zones 4 --delay 0.05
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailwarden.config import loads                     # noqa: E402
from mailwarden.engine import Engine                    # noqa: E402
from mailwarden.model import Connection, parse_client_address   # noqa: E402
from tests.udpserver import UdpServer                   # noqa: E402


class SlowDns(UdpServer):
    """DNS on 127.0.0.1 that answers after ``delay`` seconds."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def handle(self, data: bytes):
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        if name.startswith("2.0.0.127.") and question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A",
                                                       "127.0.0.2"))
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        self.stopping.wait(self.delay)              # the server's simulated latency
        return response.to_wire()


def config_text(port: int, zones: int, iprev: bool) -> str:
    lines = ["[authserv]", "id = mx.bench.example",
             "[dns]", "nameservers = 127.0.0.1", f"port = {port}", "timeout = 2s",
             "cache_size = 0",
             "[check.iprev]", f"enabled = {'yes' if iprev else 'no'}"]
    for i in range(zones):
        lines += [f"[check.dnsbl.list{i}]", f"zone = list{i}.bench.example",
                  "codes = 127.0.0.2:SBL"]
    return "\n".join(lines) + "\n"


def measure(port: int, zones: int, connections: int, iprev: bool) -> list:
    engine = Engine(loads(config_text(port, zones, iprev)), hostname="mx.bench.example")
    times = []
    try:
        for i in range(connections):
            ip = f"198.18.{i // 250}.{i % 250 + 1}" if i else "127.0.0.2"
            conn = Connection(client_ip=parse_client_address(ip), client_name="unknown")
            started = time.perf_counter()
            engine.connect(conn)
            times.append(time.perf_counter() - started)
            if i == 0:
                listed = sorted(r.symbol for r in conn.results if r.check == "dnsbl")
                assert listed == [f"LIST{n}_SBL" for n in range(zones)], listed
            engine.close_connection(conn)
    finally:
        engine.close()
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zones", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.05, help="DNS answer delay, seconds")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--iprev", action="store_true",
                        help="also run iprev (PTR then A: two round trips)")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 5000 or not 0 < args.zones <= 64:
        parser.error("--connections 1..5000, --zones 1..64")
    server = SlowDns(args.delay).start()
    try:
        times = measure(server.port, args.zones, args.connections, args.iprev)
    finally:
        server.stop()
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    print(f"connect stage, {args.zones} DNS lists{' + iprev' if args.iprev else ''}, "
          f"DNS answering in {args.delay * 1000:.0f} ms, {len(ms)} connections: "
          f"median {statistics.median(ms):.1f} ms, p90 {p90:.1f} ms, worst {ms[-1]:.1f} ms "
          f"(one list after another: {args.zones * args.delay * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
