"""Cost of DKIM signing per message: RSA-2048 and Ed25519.

Signs a message of a few KB (or ``--size``) ``--count`` times with each key
type, through the same code the dkim_sign check runs (``mailwarden.signing``:
dkimpy's canonicalization, OpenSSL's private-key operation), and for
comparison through dkimpy's own ``dkim.sign`` (pure-Python RSA).  Prints the
median and 95th percentile CPU time per signature, in milliseconds.

    .venv/bin/python bench/dkim_sign.py [--count 300] [--size 4096]

Bounded: at most ``--count`` signatures per row (default 300).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dkim  # noqa: E402

from mailwarden import signing  # noqa: E402
from mailwarden.genkey import make_key  # noqa: E402


def message(size: int) -> bytes:
    head = (b"From: Alice <alice@outbound.example>\r\nTo: bob@elsewhere.example\r\n"
            b"Subject: benchmark\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            b"Message-ID: <bench@outbound.example>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def timed(fn, count: int) -> list:
    out = []
    for _ in range(count):
        t = time.process_time()
        fn()
        out.append((time.process_time() - t) * 1000)
    return out


def row(name: str, samples: list) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return f"{name:<38} {statistics.median(samples):8.3f} {p95:8.3f}  ({len(samples)} signatures)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    count = max(1, min(args.count, 5000))
    msg = message(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        keys = {}
        for kind in ("rsa", "ed25519"):
            data, _txt = make_key(kind, 2048)
            path = os.path.join(tmp, kind)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            keys[kind] = (signing.load_key(path, "outbound.example", kind), data)
        include = signing.headers_to_sign(
            [line.split(b":", 1)[0].decode() for line in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n")],
            signing.DEFAULT_SIGN_HEADERS, ("From",))
        print(f"message {len(msg)} bytes, {count} signatures per row; CPU ms per signature")
        print(f"{'':<38} {'median':>8} {'p95':>8}")
        for kind, label in (("rsa", "RSA-2048 (mailwarden, OpenSSL)"),
                            ("ed25519", "Ed25519 (mailwarden, OpenSSL)")):
            key = keys[kind][0]
            print(row(label, timed(lambda: signing.sign(msg, key, include), count)))
        both = (keys["rsa"][0], keys["ed25519"][0])

        def sign_both():
            cache: dict = {}
            for key in both:
                signing.sign(msg, key, include, cache=cache)
        print(row("RSA-2048 + Ed25519 on one message", timed(sign_both, count)))
        rsa_pem = keys["rsa"][1]
        ed_seed = base64.b64encode(base64.b64decode(keys["ed25519"][1]))
        inc_b = [h.encode() for h in include]
        small = max(1, min(count, 50))      # pure-Python RSA is slow: fewer rounds
        print(row("RSA-2048 (dkimpy dkim.sign, for scale)",
                  timed(lambda: dkim.sign(msg, b"rsa", b"outbound.example", rsa_pem,
                                          canonicalize=(b"relaxed", b"relaxed"),
                                          include_headers=inc_b), small)))
        print(row("Ed25519 (dkimpy dkim.sign, for scale)",
                  timed(lambda: dkim.sign(msg, b"ed", b"outbound.example", ed_seed,
                                          canonicalize=(b"relaxed", b"relaxed"),
                                          include_headers=inc_b,
                                          signature_algorithm=b"ed25519-sha256"), count)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
