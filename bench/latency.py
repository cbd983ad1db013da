#!/usr/bin/env python3
"""Time mailwarden adds to a message when every DNS answer takes 50 ms.

unbound serves bench/compare.zone and the run's DKIM key; a proxy in this
process forwards each query to it and holds the answer back ``--delay``
seconds (one thread per query, so answers overlap as a real server's
would).  The engine runs in process with bench/compare.py's settings (every
inbound check on), a new one for each message, so every message meets
cold caches and makes every lookup; a name asked twice within a message
is answered by the cache the second time, as in production (with the
cache off instead, such repeats went to the network again and the bench
measured them, not mailwarden: 24 queries and a ratio of 1.47 where a
cold message makes 19).  Printed per SMTP stage: the median time, and
the longest chain of lookups that depend on each other at that stage
(each must wait for the one before), which is what the stage cannot go
below; then the message's total against the sum of those chains
(target: at most 1.3 times).

    .venv/bin/python bench/latency.py [--messages 30] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare import (  # noqa: E402
    BENCH, DOMAIN, HELO, RCPT, SELECTOR, SENDER, make_signed_message,
)
from engine_cpu import config_text                         # noqa: E402
from mailwarden.config import loads                        # noqa: E402
from mailwarden.engine import Engine                       # noqa: E402
from mailwarden.genkey import make_key, zone_line          # noqa: E402
from mailwarden.mime import split_message                  # noqa: E402
from mailwarden.model import Connection, parse_client_address   # noqa: E402
from tests.harness import DnsServer                    # noqa: E402
from tests.udpserver import UdpServer, forward            # noqa: E402

# Lookups that must follow one another, per stage, for the bench's message:
#   connect  iprev: PTR of 127.0.0.1, then A of the name (the IP lists ask
#            alongside)                                               2
#   helo     A of the HELO name; the domain list asks alongside       1
#   mail     SPF: TXT of the HELO identity, then TXT of the sender
#            domain (pyspf checks them in turn); sender domain list   2
#   eom      DKIM key TXT, then the DMARC record (DMARC needs the
#            DKIM result); URL lists alongside                        2
CHAINS = {"connect": 2, "helo": 1, "mail": 2, "rcpt": 0, "body": 0, "eom": 2}


class DelayingProxy(UdpServer):
    """DNS on 127.0.0.1: each query is forwarded upstream, its answer held back."""

    def __init__(self, upstream_port: int, delay: float):
        super().__init__()
        self.upstream_port = upstream_port
        self.delay = delay

    def handle(self, data: bytes):
        started = time.monotonic()
        answer = forward(data, self.upstream_port)
        if answer is None:
            return None
        self.stopping.wait(max(0.0, self.delay - (time.monotonic() - started)))
        return answer


def one_message(engine: Engine, message: bytes) -> dict:
    times = {}

    def timed(stage, call, *args):
        started = time.perf_counter()
        out = call(*args)
        times[stage] = times.get(stage, 0.0) + time.perf_counter() - started
        return out
    conn = Connection(client_ip=parse_client_address("127.0.0.1"), client_name="unknown")
    timed("connect", engine.connect, conn)
    timed("helo", engine.helo, conn, HELO)
    msg = engine.new_message(conn, SENDER, {})
    timed("mail", engine.mail, conn, msg)
    timed("rcpt", engine.rcpt, conn, msg, RCPT)
    headers, body, _problem = split_message(message)
    for name, value in headers:
        msg.add_header(name, value)
    timed("body", engine.body, conn, msg, body)
    verdict = timed("eom", engine.eom, conn, msg)
    msg.close()
    engine.close_connection(conn)
    passed = {r.check for r in conn.results + msg.results if r.result == "pass"}
    for check in ("iprev", "spf", "dkim", "dmarc"):
        if check not in passed:
            raise SystemExit(f"{check} did not pass: {verdict.symbols}")
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds (0.05)")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 1000 or not 0 <= args.delay <= 1:
        parser.error("--messages 1..1000, --delay 0..1")
    private, txt = make_key("rsa", 2048)
    message = make_signed_message(4096, private)
    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-latency-"))
    server = DnsServer(workdir, zone_text=zone_line(DOMAIN, SELECTOR, txt),
                       zone_files=[BENCH / "compare.zone"]).start()
    proxy = DelayingProxy(server.port, args.delay).start()
    try:
        config = loads(config_text({"dns": {"nameservers": "127.0.0.1",
                                            "port": str(proxy.port)}}))
        runs, counts = [], []
        for i in range(args.messages + 1):           # the first warms up imports
            engine = Engine(config, hostname="mx.test.example")
            try:
                before = proxy.queries
                times = one_message(engine, message)
                counts.append(proxy.queries - before)
            finally:
                engine.close()
            if i:
                runs.append(times)
        queries = statistics.mean(counts[1:])
    finally:
        proxy.stop()
        server.stop()
    delay_ms = args.delay * 1000
    print(f"{args.messages} messages, DNS answers after {delay_ms:.0f} ms, "
          f"{queries:.1f} queries per message, caches cold")
    print(f"{'stage':8s} {'median ms':>9s} {'chain':>5s} {'chain ms':>8s}")
    total = 0.0
    for stage, chain in CHAINS.items():
        ms = statistics.median(r.get(stage, 0.0) for r in runs) * 1000
        total += ms
        print(f"{stage:8s} {ms:9.1f} {chain:5d} {chain * delay_ms:8.0f}")
    chain_ms = sum(CHAINS.values()) * delay_ms
    whole = statistics.median(sum(r.values()) for r in runs) * 1000
    every = queries * delay_ms
    print(f"\nper message: {whole:.0f} ms (median); longest dependent chain "
          f"{sum(CHAINS.values())} lookups = {chain_ms:.0f} ms; ratio {whole / chain_ms:.2f} "
          f"(target <= 1.3); one lookup after another would take {every:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
