"""Time to read the authors of hostile From fields (mailwarden.address.authors).

Each shape is as large as Postfix lets a header be (``header_size_limit``,
100 KB), or the size that made the email package recurse; the figure is
the best of REPEAT runs, in milliseconds.

    .venv/bin/python bench/from_authors.py [REPEAT]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailwarden.address import authors  # noqa: E402

SHAPES = {
    "plain": "Alice <alice@bank.example>",
    "colons-1000": "ceo@bank.example" + ":" * 1000,
    "colons-100k": "ceo@bank.example" + ":" * 100_000,
    "comments-100k": "ceo@bank.example" + "(" * 100_000,
    "quotes-100k": '"' * 100_000 + "ceo@bank.example",
    "same-domain-25000x": "@a.example" * 10_000,
    "distinct-domains-8000": "".join(f"@d{i}.example " for i in range(8000)),
    "distinct-idns-1800": "".join(f"@{'ä' * 40}{i}.example " for i in range(1800)),
}


def main(argv) -> int:
    repeat = int(argv[1]) if len(argv) > 1 else 5
    authors(["warm <up@bücher.example>"])
    for name, value in SHAPES.items():
        best = min(_once(value) for _ in range(repeat))
        print(f"{name:24s} {len(value):7d} chars  {best * 1000:7.1f} ms")
    return 0


def _once(value: str) -> float:
    started = time.perf_counter()
    authors([value])
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
