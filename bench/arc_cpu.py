#!/usr/bin/env python3
"""CPU per message of ARC: verifying a 2-hop chain, and sealing.

A 4 KB message is sealed twice by two list domains (dkimpy's arc_sign,
2048-bit RSA keys), then mailwarden's ``arc`` check verifies it through the
engine (``run_offline``, DNS answered from memory, every other check off),
and the same message is sealed by mailwarden as a forward (``on_leave``).
Times are the CPU time of this thread (the engine's ``timer`` hook for the
check; around the engine's sealing step for the seal), median of the runs.

    .venv/bin/python bench/arc_cpu.py [--messages 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dkim  # noqa: E402

from mailwarden.checks import registry  # noqa: E402
from mailwarden.config import loads  # noqa: E402
from mailwarden.dns import Resolver, ZoneBackend  # noqa: E402
from mailwarden.engine import Engine, run_offline  # noqa: E402
from mailwarden.genkey import make_key, zone_line  # noqa: E402

LISTS = ("lists.one.example", "fwd.two.example")


def message() -> bytes:
    body = ("This is line of a mailing list post, long enough to be typical. " * 60)[:3900]
    head = ("From: Author <author@origin.example>\r\nTo: list@lists.one.example\r\n"
            "Subject: bench\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            "Message-ID: <bench@origin.example>\r\n\r\n")
    return head.encode() + body.encode() + b"\r\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arc-bench-"))
    zone = []
    pems = {}
    for domain in LISTS + ("outbound.example",):
        private, public = make_key("rsa", 2048)
        path = work / f"{domain}.pem"
        path.write_bytes(private)
        os.chmod(path, 0o600)
        pems[domain] = path
        zone.append(zone_line(domain, "arc", public))
    data = message()
    for n, domain in enumerate(LISTS):
        ar = (f"Authentication-Results: {domain}; arc={'none' if n == 0 else 'pass'}; "
              f"dmarc=pass header.from=origin.example\r\n").encode()
        data = b"".join(dkim.arc_sign(ar + data, b"arc", domain.encode(),
                                      pems[domain].read_bytes(), domain.encode(),
                                      include_headers=[b"from", b"to", b"subject"])) + data
    text = ("[authserv]\nid = mx.bench.example\n[relay]\nlocal_domains = bench.example\n"
            f"[check.arc]\nkeys = outbound.example:arc:{pems['outbound.example']}\n")
    only = {"arc": registry()["arc"]}
    cfg = loads(text, registry=only)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend("\n".join(zone))),
                    registry=only, hostname="mx.bench.example")
    check_cpu, seal_cpu = [], []
    engine.timer = lambda name, stage, spent: check_cpu.append(spent)
    arc = engine.checks[0]
    original = arc.on_leave

    def timed_leave(*a):
        started = time.thread_time()
        try:
            return original(*a)
        finally:
            seal_cpu.append(time.thread_time() - started)
    arc.on_leave = timed_leave
    results = set()
    for _ in range(args.messages):
        verdict, _conn, msg = run_offline(engine, client_ip="127.0.0.1", message=data,
                                          mail_from="author@origin.example",
                                          rcpts=["friend@elsewhere.example"])
        results.add(next(r.result for r in verdict.results if r.check == "arc"))
        assert any(n == "ARC-Seal" for n, _v in verdict.headers_added)
        msg.close()
    engine.close()
    print(f"message {len(data)} bytes, 2 ARC sets; arc results: {sorted(results)}")
    print(f"arc check (verify, oldest-pass): {statistics.median(check_cpu) * 1000:.2f} ms CPU")
    print(f"sealing (AAR, AMS, AS):          {statistics.median(seal_cpu) * 1000:.2f} ms CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
