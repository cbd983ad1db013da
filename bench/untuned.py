#!/usr/bin/env python3
"""``mailwarden`` without its TCP tuning: the "before" of the TCP target.

The same program and arguments as ``mailwarden``, except that
:func:`mailwarden.sockopt.tune_for_tcp` does nothing: the listener keeps
Nagle on, and over TCP the milter negotiates the same "no reply" steps as
on a UNIX socket.  ``bench/compare.py`` runs it as ``mailwarden-untuned-tcp``
next to ``mailwarden-tcp``, so that the gain of the tuning is measured side
by side in one run.

    .venv/bin/python bench/untuned.py run -c mailwarden.ini
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailwarden import sockopt          # noqa: E402
from mailwarden.cli import main         # noqa: E402


def untuned(socket_spec: str, milter_class) -> None:
    """Neither TCP_NODELAY on the listener nor the DATA step kept."""


if __name__ == "__main__":
    sockopt.tune_for_tcp = untuned
    raise SystemExit(main())
