"""URL extraction throughput, and the uribl check's time per message.

    .venv/bin/python bench/uribl.py [--seconds 3] [--delay 0.05] [--domains 20]

1. Extraction: the messages of ``tests/data/urls`` (plain, HTML, multipart,
   base64, quoted-printable, attached messages) plus a realistic 200 KB
   HTML newsletter are extracted again and again for ``--seconds``;
   MB/s of message bytes.
2. Check: one message linking to ``--domains`` distinct domains, through the
   whole engine (``run_offline``) with the three shipped lists on, on a
   resolver whose every answer takes ``--delay`` seconds (a fake backend
   that sleeps, so no network is needed).  The cache is emptied between
   runs, so each run waits for real lookups.  Median of 5.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from mailwarden.urls import extract

ROOT = Path(__file__).resolve().parents[1]


def newsletter(size: int = 200_000) -> bytes:
    rows = []
    i = 0
    while sum(map(len, rows)) < size:
        rows.append(f'<tr><td><a href="https://click.news{i % 40}.example.com/t?id={i}&u=abc">'
                    f'<img src="https://img.cdn{i % 7}.example.net/p/{i}.png" alt="item {i}"></a>'
                    f'<p style="color:#333">Offer {i}: see www.shop{i % 25}.example.org/deal '
                    f'or write to mailto:sales@shop{i % 25}.example.org &amp; more text here.'
                    f'</p></td></tr>\n')
        i += 1
    html = "<html><body><table>" + "".join(rows) + "</table></body></html>\n"
    return ("From: news@news.example.com\r\nSubject: offers\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()


def bench_extraction(seconds: float) -> float:
    corpus = [p.read_bytes() for p in sorted((ROOT / "tests" / "data" / "urls").glob("*.eml"))]
    corpus.append(newsletter())
    total = sum(map(len, corpus))
    extract(corpus[0])                   # the suffix list is built once, not timed
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for message in corpus:
            extract(message)
        runs += 1
    elapsed = time.perf_counter() - started
    return total * runs / elapsed / 1e6


class DelayedZones(ZoneBackend):
    def __init__(self, text: str, delay: float):
        super().__init__(text)
        self.delay = delay

    def lookup(self, name, rdtype, timeout):
        time.sleep(self.delay)
        return super().lookup(name, rdtype, timeout)


def bench_check(delay: float, domains: int) -> tuple:
    config = loads("[authserv]\nid = mx.example.org\n[check.uribl]\nenabled = yes\n"
                   "[check.iprev]\nenabled = no\n")
    body = "\r\n".join(f'<a href="http://www.site{i}.example{i}.com/x">{i}</a>'
                       for i in range(domains))
    message = ("From: a@sender.example\r\nSubject: t\r\nContent-Type: text/html\r\n\r\n"
               + body + "\r\n").encode()
    zone = (ROOT / "tests" / "data" / "zones" / "uribl.zone").read_text()
    times = []
    queries = 0
    for _ in range(5):
        backend = DelayedZones(zone, delay)
        engine = Engine(config, resolver=Resolver(config.dns, backend=backend))
        started = time.perf_counter()
        try:
            run_offline(engine, client_ip="198.51.100.7", mail_from="a@sender.example",
                        rcpts=["b@example.org"], message=message)
        finally:
            engine.close()
        times.append(time.perf_counter() - started)
        queries = sum(1 for q, _ in backend.queries
                      if q.endswith(("multi.surbl.org", "multi.uribl.com", "dbl.spamhaus.org")))
    return statistics.median(times), queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--domains", type=int, default=20)
    args = parser.parse_args()
    print(f"extraction: {bench_extraction(args.seconds):.1f} MB/s of message text")
    median, queries = bench_check(args.delay, args.domains)
    print(f"check: {median * 1000:.0f} ms per message with {args.domains} distinct domains, "
          f"{queries} list lookups, DNS answering in {args.delay * 1000:.0f} ms (median of 5)")


if __name__ == "__main__":
    main()
