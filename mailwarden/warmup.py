"""Run every enabled check once, offline, before the milter drops privileges.

Python and the libraries mailwarden uses import some modules on first use
(the Public Suffix List file, dnspython's record types, the email
package's codecs, the crypto backends).  Once running as ``[milter] user``
the interpreter's own files may no longer be readable (a Python installed
under root's home is the common case), and a module that cannot be loaded
then would crash the checks of the first real message.  So the checks see a
made-up message, from an outside client and from an authenticated one,
while everything is still readable.  Nothing leaves the process: DNS comes
from the zone below, limits count in a throw-away memory store, and no
DMARC record exists, so no DMARC history is written.
"""

from __future__ import annotations

import logging

from .config import Config
from .dns import Resolver, ZoneBackend
from . import orgdomain
from .engine import Engine, run_offline
from .state.memory import MemoryStore

log = logging.getLogger("mailwarden")

# every record type the checks ask for, so dnspython loads each one's code
_ZONE = """
7.2.0.192.in-addr.arpa. PTR mail.warmup.invalid.
mail.warmup.invalid. A 192.0.2.7
mail.warmup.invalid. AAAA 2001:db8::7
warmup.invalid. MX 10 mail.warmup.invalid.
warmup.invalid. TXT "v=spf1 ip4:192.0.2.0/24 -all"
sel._domainkey.warmup.invalid. TXT "v=DKIM1; k=rsa; p="
www.warmup.invalid. CNAME mail.warmup.invalid.
"""

_MESSAGE = (
    b"From: Warm Up <a@warmup.invalid>\r\n"
    b"To: b@warmup.invalid\r\n"
    b"Subject: =?utf-8?q?warm_=C3=BCp?=\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <warmup@warmup.invalid>\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=warmup.invalid; s=sel; c=relaxed/relaxed;\r\n"
    b"\th=from:to:subject; bh=AAAA; b=AAAA\r\n"
    b"Authentication-Results: warmup.invalid; none\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b1\r\n"
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"See http://www.warmup.invalid/a?b=c and https://xn--mnchen-3ya.invalid/ =C3=BC\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"PGEgaHJlZj0iaHR0cDovL3dhcm11cC5pbnZhbGlkL3giPng8L2E+\r\n"
    b"--b1--\r\n"
)


def warm_up(config: Config) -> None:
    """Run the checks of ``config`` on one made-up message, twice."""
    logger = logging.getLogger("mailwarden")
    level = logger.level
    # the made-up message's verdict is nobody's business; a crash still logs
    logger.setLevel(max(level, logging.ERROR))
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(_ZONE)),
                    hostname="mx.warmup.invalid", state=MemoryStore(prefix="warmup:"))
    try:
        for auth_user in ("", "warmup"):
            _verdict, conn, msg = run_offline(
                engine, client_ip="192.0.2.7", client_name="mail.warmup.invalid",
                helo="mail.warmup.invalid", mail_from="a@warmup.invalid",
                rcpts=["b@warmup.invalid"], message=_MESSAGE, auth_user=auth_user,
                tls_version="TLSv1.3", queue_id="WARMUP")
            if msg is not None:
                msg.close()
            engine.close_connection(conn)
    finally:
        engine.close()
        logger.setLevel(level)
    # the Public Suffix List is read on first use; with no URL list enabled
    # that use may come only later (an aggregate report), so read it now
    orgdomain.registered_domain("warmup.invalid")
