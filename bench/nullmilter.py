#!/usr/bin/env python3
"""A do-nothing pymilter milter: the floor any Python milter stands on.

It takes every callback mailwarden takes (connect, HELO, MAIL, RCPT, each
header, end of headers, body, end of message), looks at nothing and accepts
the message; headers get no reply, as mailwarden negotiates.  bench/compare.py
runs it as the "trivial pymilter milter" of its table.

    .venv/bin/python bench/nullmilter.py unix:/path/null.sock
"""

from __future__ import annotations

import os
import sys

import Milter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


class NullMilter(Milter.Base):
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, heloname):
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        return Milter.ACCEPT


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: nullmilter.py SOCKET (unix:/path or inet:PORT@HOST)")
    os.umask(0)         # Postfix's smtpd (user postfix) must reach a UNIX socket
    Milter.factory = NullMilter
    Milter.set_flags(0)
    if os.environ.get("NULLMILTER_NODELAY") == "1":
        # as mailwarden does (mailwarden/sockopt.py), to compare with and without
        from mailwarden.sockopt import nodelay_on_listeners
        real_opensocket = Milter.milter.opensocket

        def opensocket(rmsock):
            real_opensocket(rmsock)
            nodelay_on_listeners()
        Milter.milter.opensocket = opensocket
    Milter.runmilter("nullmilter", argv[0], timeout=600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
