#!/usr/bin/env python3
"""CPU per message of the engine alone, per check, on bench/compare.py's message.

The engine runs in this process with bench/compare.py's settings (every
inbound check on) and DNS answered from memory (``ZoneBackend`` fed with
bench/compare.zone and the run's DKIM key), so what is measured is
mailwarden's own work: no sockets, no MTA, no DNS server.  Each check's
stage methods are timed with the CPU clock of the thread that runs them
(the engine's ``timer`` hook); printed: milliseconds per message for each
check and stage, and the whole engine's CPU per message.

``--cold`` measures again with the CPU caches evicted before each message
(a 32 MB buffer is walked between messages, outside the timed part), as a
milter meets them in production: between two SMTP stages of a session the
MTA's processes run on the same cores.  The ratio of the two figures is
what running among the MTA costs the same Python work.

``--vary`` gives every message a sender of its own: its own envelope and
From domain (with SPF, DMARC and DKIM key records in the zone), DKIM
``d=``, client address (with PTR and A) and HELO name, so that nothing a
check keeps from one message to the next (parsed records, results within
their TTL) serves the next one: the uncached cost.

``--vary-client`` gives each message its own client address (127.1.x.y),
PTR name and HELO name (``mta-N.bench-sender.example``, confirmed in DNS,
in the sender's SPF range): what the connection checks cost when nothing
of an earlier connection can be reused.  ``--no-result-cache`` turns the
engine's result cache off (``Engine.results_cache``).

    .venv/bin/python bench/engine_cpu.py [--messages 500] [--cold]
        [--vary | --vary-client] [--no-result-cache]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import parse_set  # noqa: E402
from compare import (  # noqa: E402
    BENCH, DOMAIN, HELO, MAILWARDEN_SETTINGS, RCPT, SELECTOR, SENDER, make_signed_message,
)
from mailwarden.config import loads                      # noqa: E402
from mailwarden.dns import Resolver, ZoneBackend          # noqa: E402
from mailwarden.engine import Engine, run_offline         # noqa: E402
from mailwarden.genkey import make_key, zone_line         # noqa: E402

import dkim as dkimpy                                     # noqa: E402


def config_text(extra: dict) -> str:
    settings = {k: dict(v) for k, v in MAILWARDEN_SETTINGS.items()}
    settings["authserv"] = {"id": "mx.test.example"}
    settings["milter"] = {"log": "stderr", "log_level": "warning"}
    for section, values in extra.items():
        settings.setdefault(section, {}).update(values)
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


class Evictor:
    """Walks a buffer larger than the CPU caches: what ran before is cold after."""

    def __init__(self, size: int = 32 * 1024 * 1024):
        self.buffer = bytearray(size)

    def __call__(self) -> None:
        view = memoryview(self.buffer)
        view[::64] = bytes(view[1::64])          # touch every cache line, in C


def varied(count: int, message: bytes, private: bytes, txt: str) -> tuple:
    """``count`` senders of their own: (client_ip, helo, mail_from, message)
    each, the message re-signed for its domain, and the zone lines they need."""
    unsigned = message[message.index(b"\r\nFrom: ") + 2:]
    senders, lines = [], []
    for n in range(count):
        domain = f"v{n}.vary-sender.example"
        ip = f"127.1.{n >> 8 & 255}.{n & 255}"
        helo = f"mta.{domain}"
        body = unsigned.replace(DOMAIN.encode(), domain.encode())
        signature = dkimpy.sign(body, SELECTOR.encode(), domain.encode(), private,
                                canonicalize=(b"relaxed", b"relaxed"),
                                include_headers=[b"from", b"to", b"subject", b"date",
                                                 b"message-id", b"mime-version",
                                                 b"content-type"])
        senders.append((ip, helo, SENDER.replace(DOMAIN, domain), signature + body))
        reverse = ".".join(reversed(ip.split(".")))
        lines += [f"{reverse}.in-addr.arpa. PTR {helo}.", f"{helo}. A {ip}",
                  f'{domain}. TXT "v=spf1 ip4:{ip} -all"',
                  f'_dmarc.{domain}. TXT "v=DMARC1; p=reject; adkim=r; aspf=r"',
                  zone_line(domain, SELECTOR, txt)]
    return senders, "\n".join(lines)


def client_of(i: int) -> tuple:
    """(address, HELO name) of message ``i`` with --vary-client."""
    return f"127.1.{i // 250 % 250}.{1 + i % 250}", f"mta-{i}.bench-sender.example"


def client_zone(messages: int) -> str:
    lines = []
    for i in range(messages + 1):
        ip, helo = client_of(i)
        lines.append(f"{'.'.join(reversed(ip.split('.')))}.in-addr.arpa. PTR {helo}.")
        lines.append(f"{helo}. A {ip}")
    return "\n".join(lines) + "\n"


def measure(messages: int, extra: dict, message: bytes, zone: str, evict=None,
            senders=None, vary: bool = False, result_cache: bool = True) -> tuple:
    config = loads(config_text(extra))
    if vary:
        zone = zone.replace("ip4:127.0.0.1", "ip4:127.0.0.0/8") + client_zone(messages)
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(zone)),
                    hostname="mx.test.example")
    if not result_cache:
        engine.results_cache.size = 0
    spent: dict = collections.defaultdict(float)

    def timer(check, stage, seconds):
        spent[check, stage.name.lower()] += seconds
    verdicts = collections.Counter()
    try:
        # one warm-up message: imports and caches built on first use
        run_offline(engine, client_ip="127.0.0.1", helo=HELO, mail_from=SENDER,
                    rcpts=[RCPT], message=message)
        engine.timer = timer
        total = 0.0
        for i in range(messages):
            if evict is not None:
                evict()
            if senders:
                client, helo, sender, data = senders[i]
            else:
                client, helo = client_of(i + 1) if vary else ("127.0.0.1", HELO)
                sender, data = SENDER, message
            started = time.process_time()
            verdict, conn, _msg = run_offline(engine, client_ip=client, helo=helo,
                                              mail_from=sender, rcpts=[RCPT], message=data)
            engine.close_connection(conn)
            total += time.process_time() - started
            verdicts[verdict.action] += 1
    finally:
        engine.close()
    return spent, total, verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--cold", action="store_true",
                        help="also measure with the CPU caches evicted before each message")
    parser.add_argument("--vary", action="store_true",
                        help="every message from a sender, domain, client and HELO of its own")
    parser.add_argument("--vary-client", action="store_true",
                        help="a new client address, PTR and HELO name for each message")
    parser.add_argument("--no-result-cache", action="store_true",
                        help="turn the engine's result cache off")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 100_000:
        parser.error("--messages 1..100000")
    if args.vary and args.vary_client:
        parser.error("--vary already gives each message a client of its own")
    extra = parse_set(args.set)
    private, txt = make_key("rsa", 2048)
    message = make_signed_message(args.length, private)
    zone = (BENCH / "compare.zone").read_text() + "\n" + zone_line(DOMAIN, SELECTOR, txt)
    senders = None
    if args.vary:
        senders, lines = varied(args.messages, message, private, txt)
        zone += "\n" + lines
    how = {"senders": senders, "vary": args.vary_client,
           "result_cache": not args.no_result_cache}
    spent, total, verdicts = measure(args.messages, extra, message, zone, **how)
    n = args.messages
    print(f"{n} messages of {len(message)} bytes"
          f"{', each from a sender of its own' if senders else ''}, verdicts {dict(verdicts)}")
    print(f"{'check':12s} {'stage':8s} {'ms/msg':>8s}")
    by_check: dict = collections.defaultdict(float)
    for (check, stage), seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        by_check[check] += seconds
        print(f"{check:12s} {stage:8s} {1000 * seconds / n:8.3f}")
    print(f"\n{'check':12s} {'ms/msg':>8s}")
    for check, seconds in sorted(by_check.items(), key=lambda kv: -kv[1]):
        print(f"{check:12s} {1000 * seconds / n:8.3f}")
    checks = sum(by_check.values())
    print(f"\nall checks {1000 * checks / n:.3f} ms/msg; whole engine (process CPU) "
          f"{1000 * total / n:.3f} ms/msg")
    if args.cold:
        cold_spent, cold_total, _ = measure(n, extra, message, zone, evict=Evictor(), **how)
        cold_checks = sum(cold_spent.values())
        print(f"caches evicted before each message: all checks {1000 * cold_checks / n:.3f} "
              f"ms/msg; whole engine {1000 * cold_total / n:.3f} ms/msg "
              f"({cold_total / total:.2f}x the warm figure)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
