#!/usr/bin/env python3
"""A milter that changes every message the way a mailing list does: a
footer appended to the body.  The e2e tests run it beside mailwarden to
show what a milter listed after a sealer does to the seal.

    .venv/bin/python tests/harness/footer_milter.py unix:/path/footer.sock
"""

from __future__ import annotations

import os
import sys

import Milter

FOOTER = b"-- \r\nThe list footer.\r\n"


class FooterMilter(Milter.Base):
    def __init__(self):
        self.chunks = []

    def envfrom(self, mailfrom, *params):
        self.chunks = []
        return Milter.CONTINUE

    def body(self, chunk):
        self.chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self):
        self.replacebody(b"".join(self.chunks) + FOOTER)
        return Milter.ACCEPT


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: footer_milter.py SOCKET (unix:/path or inet:PORT@HOST)")
    os.umask(0)         # Postfix's smtpd (user postfix) must reach a UNIX socket
    Milter.factory = FooterMilter
    Milter.set_flags(Milter.CHGBODY)
    Milter.runmilter("footer", argv[0], timeout=600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
