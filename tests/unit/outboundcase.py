"""What the tests of relay, submission, dkim_sign and genkey share: the
engine on the fake resolver, the outbound test message, the login map and the
signing keys.

DKIM signatures are verified by dkimpy against the public keys of
``tests/data/zones/outbound.zone``, served by ZoneBackend.
"""

import os
import shutil
from pathlib import Path

import dkim
import pytest

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

ROOT = Path(__file__).resolve().parents[2]
ZONE = (ROOT / "tests/data/zones/outbound.zone").read_text()
KEYS = ROOT / "tests/data/keys"

OUTSIDE = "198.51.100.70"       # neither trusted nor authenticated
BASE = """[authserv]
id = mx.test.example
[relay]
trusted_networks = 127.0.0.0/8
local_domains = outbound.example
"""


def make_message(sender="Alice <alice@outbound.example>", extra=b""):
    return (f"From: {sender}\r\nTo: bob@elsewhere.example\r\nSubject: outbound test\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <t1@outbound.example>\r\n"
            .encode() + extra + b"\r\nHello from us.\r\n")


def engine_for(text):
    cfg = loads(text)
    resolver = Resolver(cfg.dns, backend=ZoneBackend(ZONE))
    return Engine(cfg, resolver=resolver, hostname="mx.test.example"), resolver


def run(text, *, client_ip=OUTSIDE, message=None, **kw):
    engine, _ = engine_for(text)
    kw.setdefault("mail_from", "alice@outbound.example")
    kw.setdefault("rcpts", ["bob@elsewhere.example"])
    try:
        verdict, _, msg = run_offline(engine, client_ip=client_ip,
                                      message=message or make_message(), **kw)
        if msg is not None:
            msg.close()
        return verdict
    finally:
        engine.close()


def of(verdict, check):
    return [r for r in verdict.results if r.check == check]


# -- submission's login map ---------------------------------------------------

@pytest.fixture
def login_map(tmp_path):
    path = tmp_path / "logins"
    path.write_text("# login: addresses\n"
                    "alice: alice@outbound.example, alice.smith@outbound.example\n"
                    "bob: @bob.outbound.example\n"
                    "robot: *\n")
    return path


def sub_text(path, tls="no"):
    return BASE + f"[check.submission]\nsender_login_map = {path}\nrequire_tls_for_auth = {tls}\n"


# -- signing keys and verification ----------------------------------------------

@pytest.fixture
def keydir(tmp_path):
    out = tmp_path / "keys"
    out.mkdir()
    for name in ("outbound-rsa2026.private", "outbound-ed2026.private"):
        shutil.copy(KEYS / name, out / name)
        os.chmod(out / name, 0o600)
    return out


def sign_text(keydir, extra=""):
    return BASE + ("[check.dkim_sign]\nkeys = "
                   f"outbound.example:rsa2026:{keydir}/outbound-rsa2026.private, "
                   f"outbound.example:ed2026:{keydir}/outbound-ed2026.private\n" + extra)


# unauthenticated clients are signed only when the INI says so
LOOPBACK_SIGNING = "sign_trusted_networks = 127.0.0.1/32\nsign_trusted_domains = outbound.example\n"


def sigs_of(verdict):
    return [v for n, v in verdict.headers_added if n == "DKIM-Signature"]


def signed_message(verdict, message):
    sigs = [(n, v) for n, v in verdict.headers_added if n == "DKIM-Signature"]
    head = b"".join(f"{n}: {v}".replace("\n", "\r\n").encode() + b"\r\n" for n, v in sigs)
    return sigs, head + message


def dnsfunc():
    resolver = Resolver(loads("[authserv]\nid = x.example\n").dns, backend=ZoneBackend(ZONE))

    def lookup(name, timeout=5):
        answer = resolver.query(name.decode().rstrip("."), "TXT")
        return answer.records[0].encode() if answer.ok else None
    return lookup


def verify_all(message, count):
    lookup = dnsfunc()
    d = dkim.DKIM(message)
    results = []
    for i in range(count):
        try:
            results.append(d.verify(idx=i, dnsfunc=lookup))
        except dkim.ValidationError:         # dkimpy's word for a broken signature
            results.append(False)
    return results
