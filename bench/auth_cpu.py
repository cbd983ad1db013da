"""CPU time that SPF + DKIM + DMARC add per message, DNS answers cached.

Runs the engine offline (as ``mailwarden scan`` does) on a message signed
with RSA-2048 and Ed25519, from a client SPF authorizes, whose From domain
publishes p=reject: once with spf, dkim and dmarc enabled and once with
them disabled.  DNS comes from tests/data/zones/auth.zone through the
cache; the first message of each run warms it and is not counted.

    .venv/bin/python bench/auth_cpu.py [MESSAGES]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailwarden.config import loads  # noqa: E402
from mailwarden.dns import Resolver, ZoneBackend  # noqa: E402
from mailwarden.engine import Engine, run_offline  # noqa: E402
from tests import dkimkeys  # noqa: E402

ZONE = (ROOT / "tests" / "data" / "zones" / "auth.zone").read_text()
OFF = "[check.spf]\nenabled = no\n[check.dkim]\nenabled = no\n[check.dmarc]\nenabled = no\n"


def run(config: str, zone: str, message: bytes, count: int) -> float:
    cfg = loads("[authserv]\nid = mx.test.example\n" + config)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(zone)),
                    hostname="mx.test.example")
    args = dict(client_ip="198.51.100.141", client_name="relay.mw-auth.example",
                helo="relay.mw-auth.example", mail_from="a@mw-reject.example",
                rcpts=["bob@rcpt.example"], message=message)
    verdict, _, _ = run_offline(engine, **args)           # warms the cache
    assert verdict.action == "accept", verdict
    start = time.process_time()
    for _ in range(count):
        run_offline(engine, **args)
    used = time.process_time() - start
    engine.close()
    return used / count * 1000


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rsa, ed = dkimkeys.rsa_key(2048), dkimkeys.ed25519_key()
    zone = ZONE + "\n" + rsa.zone_line("rsa", "mw-reject.example") + "\n" + \
        ed.zone_line("ed", "mw-reject.example")
    body = "".join(f"Line {i} of a message of some ordinary length.\n" for i in range(60))
    text = ("From: Alice <a@mw-reject.example>\r\nTo: bob@rcpt.example\r\nSubject: bench\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <b@mw-reject.example>\r\n"
            "\r\n" + body.replace("\n", "\r\n")).encode()
    signed = dkimkeys.sign(dkimkeys.sign(text, rsa, "rsa", "mw-reject.example"),
                           ed, "ed", "mw-reject.example")
    base = min(run(OFF, zone, signed, count) for _ in range(3))
    full = min(run("", zone, signed, count) for _ in range(3))
    print(f"messages per run: {count} ({len(signed)} bytes, RSA-2048 + Ed25519 signatures)")
    print(f"engine without spf/dkim/dmarc: {base:.3f} ms CPU per message")
    print(f"engine with spf/dkim/dmarc:    {full:.3f} ms CPU per message")
    print(f"added by SPF + DKIM + DMARC:   {full - base:.3f} ms CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
