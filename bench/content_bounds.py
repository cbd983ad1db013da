"""Worst cases of content parsing: a slow charset and a flood of delimiters.

    .venv/bin/python bench/content_bounds.py

1. A 320 KB text part labelled ``charset=punycode`` whose body is ``-``
   followed by digits (Python's punycode codec is pure Python and
   quadratic on it): CPU seconds of ``mailwarden.urls.extract``.
2. 2.6 MB of ``--a`` delimiter lines in one multipart (520,000 parts if all
   were listed): CPU seconds and peak traced memory (tracemalloc) of
   ``extract``, and of the whole engine with uribl on (``run_offline``).

Run it on two checkouts to compare; the figures are printed, not judged.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailwarden.config import loads                      # noqa: E402
from mailwarden.dns import Resolver, ZoneBackend          # noqa: E402
from mailwarden.engine import Engine, run_offline         # noqa: E402
from mailwarden.urls import extract                       # noqa: E402

HEAD = b"From: a@sender.example\r\nTo: b@example.org\r\nSubject: t\r\n"


def cpu(fn) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def traced(fn) -> tuple:
    tracemalloc.start()
    try:
        seconds = cpu(fn)
        return seconds, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> int:
    puny = (HEAD + b"Content-Type: text/plain; charset=punycode\r\n\r\n-" + b"9" * (320 << 10)
            + b" http://after.example.org/\r\n")
    print(f"punycode part, {len(puny) >> 10} KB: extract {cpu(lambda: extract(puny)):.3f} s CPU")

    flood = (HEAD + b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n" * 520_000)
    plain = cpu(lambda: extract(flood))
    seconds, peak = traced(lambda: extract(flood))
    print(f"delimiters, {len(flood) / 1e6:.1f} MB: extract {plain:.3f} s CPU "
          f"({seconds:.3f} s traced), peak {peak / 1e6:.2f} MB")

    config = loads("[authserv]\nid = mx.example.org\n[check.uribl]\nenabled = yes\n")
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend("")))
    try:
        def run():
            _verdict, _conn, msg = run_offline(engine, client_ip="198.51.100.7",
                                               helo="mail.sender.example",
                                               mail_from="a@sender.example",
                                               rcpts=["b@example.org"], message=flood)
            if msg is not None:
                msg.close()
        run()                              # imports and caches out of the way
        seconds, peak = traced(run)
    finally:
        engine.close()
    print(f"delimiters, {len(flood) / 1e6:.1f} MB, engine with uribl on: {seconds:.3f} s CPU "
          f"(traced), peak {peak / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
