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
    Milter.runmilter("nullmilter", argv[0], timeout=600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
