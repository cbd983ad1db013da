"""Worst cases of DKIM verification: CPU seconds per message.

Two hostile messages, run through the same engine as ``mailwarden scan``
(the dkim check only; keys published on an in-memory zone):

* ``headers``: a message of about 270 KB with 4,000 header fields and 10
  DKIM-Signatures, each naming those 4,000 fields in ``h=`` (header
  selection that searches each name from the bottom is quadratic);
* ``body``: a body of ``--body-mb`` MB (default 25) with 10 signatures,
  each with a valid ``bh=`` (so the body is hashed) and ``b=`` that does
  not verify; ``same``: all ``c=relaxed/relaxed``, ``a=rsa-sha256``;
  ``varied``: ``c=`` and ``l=`` differ from one signature to the next.

Prints the CPU seconds of the whole message (``time.process_time``), those
of the dkim check alone (the engine's per-check timer, this thread's CPU)
and the results.  Run it before and after a change, on an otherwise idle
machine:

    .venv/bin/python bench/dkim_worst.py [--case headers|body-same|body-varied|all]
        [--body-mb 25] [--rounds 1] [--max-signed-headers N]

Bounded: one message per case and round (``--rounds``, at most 5).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from dkim.canonicalization import CanonicalizationPolicy  # noqa: E402

from mailwarden.config import loads  # noqa: E402
from mailwarden.dns import Resolver, ZoneBackend  # noqa: E402
from mailwarden.engine import Engine, run_offline  # noqa: E402

DOMAIN = "bench-dkim.example"
CONFIG = """\
[authserv]
id = mx.bench.example
[check.size]
max_size = 1G
[check.dmarc]
enabled = no
[check.spf]
enabled = no
[check.dkim]
max_signatures = 10
"""


def zone() -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return f'sel._domainkey.{DOMAIN}. TXT "v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"'


def body_hash(body: bytes, c: bytes, limit: int | None = None) -> bytes:
    canon = CanonicalizationPolicy.from_c_value(c).canonicalize_body(body)
    if limit is not None:
        canon = canon[:limit]
    return base64.b64encode(hashlib.sha256(canon).digest())


def signature(h: bytes, bh: bytes, c: bytes = b"relaxed/relaxed", limit: int | None = None):
    b = base64.b64encode(os.urandom(256))
    length = b" l=%d;" % limit if limit is not None else b""
    return (b"DKIM-Signature: v=1; a=rsa-sha256; c=" + c + b"; d=" + DOMAIN.encode()
            + b"; s=sel;" + length + b"\r\n h=" + h + b";\r\n bh=" + bh
            + b";\r\n b=" + b + b"\r\n")


HEAD = (f"From: Alice <a@{DOMAIN}>\r\nTo: bob@rcpt.example\r\nSubject: bench\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@{DOMAIN}>\r\n").encode()


def headers_case() -> bytes:
    body = b"Hello.\r\n"
    bh = body_hash(body, b"relaxed/relaxed")
    # every named field is present once, listed top first: a selection
    # that searches from the bottom for each name walks the whole header
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(3999))
    names = b":".join(b"x-%d" % i for i in range(3999)) + b":from"
    sigs = b"".join(signature(names, bh) for _ in range(10))
    return sigs + HEAD + fields + b"\r\n" + body


def body_case(mb: int, varied: bool) -> bytes:
    line = b"The quick brown fox  jumps over the lazy dog,\tagain and again. \r\n"
    body = line * (mb * 1024 * 1024 // len(line))
    sigs = b""
    for i in range(10):
        c = (b"relaxed/relaxed", b"simple/simple")[i % 2] if varied else b"relaxed/relaxed"
        limit = len(body) - 1000 * i if varied else None
        sigs += signature(b"from:to:subject", body_hash(body, c, limit), c, limit)
    return sigs + HEAD + b"\r\n" + body


def run(message: bytes, key_zone: str, extra: str = "") -> tuple:
    cfg = loads(CONFIG + extra)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(key_zone)),
                    hostname="mx.bench.example")
    dkim_cpu = []
    engine.timer = lambda name, _stage, spent: dkim_cpu.append(spent) if name == "dkim" else None
    try:
        started = time.process_time()
        verdict, _conn, _msg = run_offline(
            engine, client_ip="198.51.100.7", helo="relay.bench.example",
            mail_from=f"a@{DOMAIN}", rcpts=["bob@rcpt.example"], message=message)
        spent = time.process_time() - started
    finally:
        engine.close()
    results = [f"{r.result}/{r.symbol}" for r in verdict.results if r.check == "dkim"]
    return spent, sum(dkim_cpu), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="all",
                        choices=("headers", "body-same", "body-varied", "all"))
    parser.add_argument("--body-mb", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-signed-headers", type=int, default=None,
                        help="[check.dkim] max_signed_headers (10000: selection alone)")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds, 5))
    key_zone = zone()
    cases = ("headers", "body-same", "body-varied") if args.case == "all" else (args.case,)
    for case in cases:
        if case == "headers":
            message = headers_case()
        else:
            message = body_case(args.body_mb, case == "body-varied")
        for _ in range(rounds):
            extra = ""
            if args.max_signed_headers is not None:
                extra = f"max_signed_headers = {args.max_signed_headers}\n"
            spent, dkim_spent, results = run(message, key_zone, extra)
            summary = {r: results.count(r) for r in dict.fromkeys(results)}
            print(f"{case:12s} {len(message) / 1024:9.0f} KB  {spent:7.2f} s CPU "
                  f"(dkim check {dkim_spent:6.2f} s)  {summary}", flush=True)


if __name__ == "__main__":
    main()
