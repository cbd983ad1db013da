"""What the spf, dkim, dmarc and auth tests share: the fake resolver fed
with tests/data/zones/auth.zone, an engine on it, a message, fresh DKIM keys
(the ``keys`` fixture is in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import authres

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

DATA = Path(__file__).resolve().parents[1] / "data"
ZONE = (DATA / "zones" / "auth.zone").read_text()
BASE = "[authserv]\nid = mx.test.example\n"
RELAY = "198.51.100.141"
STRANGER = "198.51.100.142"


def message(sender="a@mw-dkim.example", subject="test", body="Hello.\r\n", extra=b""):
    return (f"From: Alice <{sender}>\r\nTo: bob@rcpt.example\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x.example>\r\n"
            ).encode() + extra + b"\r\n" + body.encode()


def engine_for(text="", zone_extra="", **kw):
    cfg = loads(BASE + text)
    backend = ZoneBackend(ZONE + "\n" + zone_extra)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=backend),
                  hostname="mx.test.example", **kw)


def run(text="", zone_extra="", *, ip=RELAY, helo="relay.mw-auth.example",
        mail_from="a@mw-dkim.example", msg=None, engine=None, **kw):
    own = engine is None
    engine = engine or engine_for(text, zone_extra)
    try:
        verdict, _conn, _msg = run_offline(
            engine, client_ip=ip, helo=helo, mail_from=mail_from,
            rcpts=kw.pop("rcpts", ["bob@rcpt.example"]),
            message=msg if msg is not None else message(), **kw)
    finally:
        if own:
            engine.close()
    return verdict


def of(verdict, check):
    return [r for r in verdict.results if r.check == check]


def dmarc_of(verdict):
    """The one dmarc result of a verdict."""
    (r,) = of(verdict, "dmarc")
    return r


def resinfo(verdict, method):
    """The one resinfo of ``method`` in our A-R, parsed strictly."""
    header = strict_parse(dict(verdict.headers_added)["Authentication-Results"])
    (res,) = [r for r in header.results if r.method == method]
    return res


def props(result):
    return {p[0]: p[1] for p in result.properties}


def ar_header(verdict):
    return dict(verdict.headers_added)["Authentication-Results"]


def strict_parse(value: str):
    """authres's strict parser on the unfolded value."""
    header = authres.core.AuthenticationResultsHeader(authres.core_features(), strict=True)
    header._parse_text = value.replace("\n", "")
    header._parse()
    return header
