"""Golden pairs (tests/golden/README.rst): every pair through ``mailwarden
scan`` and through the milter adapter, both compared with ``expected.json``
and with each other; the whole ``scan`` JSON is compared with ``scan.json``.
``MAILWARDEN_GOLDEN_UPDATE=1`` rewrites the expected files from the scan
path (a deliberate change; read the diff)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import Milter
import pytest

from mailwarden import cli
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine
from mailwarden.mime import split_message
from tests.milter.miltertest import Session

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "mailwarden.ini"
UPDATE = os.environ.get("MAILWARDEN_GOLDEN_UPDATE") == "1"
PAIRS = sorted(p.name for p in HERE.iterdir() if (p / "message.eml").is_file())
INPUTS = ("message.eml", "client.json", "zone.zone")
EXPECTED_KEYS = {"action", "smtp_reply", "score", "symbols", "headers_added", "headers_removed"}
SCAN_KEYS = {"action", "score", "smtp_reply", "results", "headers_added", "headers_removed"}

# What may differ between two runs of ``mailwarden scan`` on the same pair,
# and so is rewritten before ``scan.json`` is compared: (pattern, stand-in),
# applied to every string of the output.  Nothing else is: every other
# field, character for character, is part of the verdict.  ``scan`` prints
# no timings, no queue id (none is given) and no date of its own; the
# pairs' signatures have no x= (expiry), so today's date does not matter.
# Keep this list short and explicit: a rule here hides changes.
NORMALIZE: tuple = (
    # the time a signature or seal of ours would carry (none today: scan
    # verifies inbound mail and signs nothing); t= of the pairs' own
    # signatures is in message.eml and would not change between runs
)

# the session of a pair whose client used TLS, as Postfix passes it
TLS = {"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384", "{cipher_bits}": "256"}

# what the MTA is told, per milter return code; add_header is an accept to it
_CODES = {Milter.REJECT: "reject", Milter.TEMPFAIL: "tempfail", Milter.DISCARD: "discard"}


def _client(pair: str) -> dict:
    return json.loads((HERE / pair / "client.json").read_text(encoding="utf-8"))


def scan_json(pair: str, capsys) -> dict:
    """What ``mailwarden scan`` prints for the pair (its argument parser and all)."""
    c = _client(pair)
    args = ["scan", "-c", str(CONFIG), "--zone", str(HERE / pair / "zone.zone"),
            "--client-ip", c["client_ip"], "--client-name", c["client_name"],
            "--helo", c["helo"], "--mail-from", c["mail_from"]]
    for rcpt in c["rcpts"]:
        args += ["--rcpt", rcpt]
    if c["auth_user"]:
        args += ["--auth", c["auth_user"]]
    if c["tls"]:
        args += ["--tls-version", TLS["{tls_version}"], "--cipher", TLS["{cipher}"],
                 "--cipher-bits", TLS["{cipher_bits}"]]
    capsys.readouterr()
    assert cli.main(args + [str(HERE / pair / "message.eml")]) == 0
    return json.loads(capsys.readouterr().out)


def normalize(value):
    """``value`` with the rules of ``NORMALIZE`` applied to every string."""
    if isinstance(value, str):
        for pattern, stand_in in NORMALIZE:
            value = re.sub(pattern, stand_in, value)
        return value
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def run_scan(pair: str, capsys) -> dict:
    """The verdict ``mailwarden scan`` gives the pair, as ``expected.json`` has it."""
    out = scan_json(pair, capsys)
    return {"action": out["action"], "smtp_reply": out["smtp_reply"], "score": out["score"],
            "symbols": [f"{r['check']}:{r['symbol']}" for r in out["results"]],
            "headers_added": out["headers_added"], "headers_removed": out["headers_removed"]}


def _removed(message: bytes, changed: list) -> list:
    """chgheader(name, index, "") calls as [name, value] in message order
    (index counts the fields of that name, from 1)."""
    headers, _body, _ = split_message(message)
    wanted = {(name.lower(), index) for name, index, value in changed if value == ""}
    seen: dict = {}
    out = []
    for name, raw in headers:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        if (key, seen[key]) in wanted:
            wanted.discard((key, seen[key]))
            value = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
            out.append([name, value.strip()])
    assert not wanted, f"chgheader of a field the message does not have: {wanted}"
    return out


def run_adapter(pair: str) -> dict:
    """The pair through MailwardenMilter, as libmilter would call it."""
    c = _client(pair)
    message = (HERE / pair / "message.eml").read_bytes()
    config = loads(CONFIG.read_text(encoding="utf-8"), path=str(CONFIG))
    zone = (HERE / pair / "zone.zone").read_text(encoding="utf-8")
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(zone)),
                    hostname="mx.test.example")
    macros = {"i": "4GOLDEN", "j": "mx.test.example"}
    if c["auth_user"]:
        macros.update({"{auth_authen}": c["auth_user"], "{auth_type}": "PLAIN"})
    if c["tls"]:
        macros.update(TLS)
    session = Session(engine, macros)
    try:
        steps = [lambda: session.connect(c["client_ip"], c["client_name"] or "unknown"),
                 lambda: session.helo(c["helo"]),
                 lambda: session.mail(c["mail_from"])]
        steps += [lambda rcpt=rcpt: session.rcpt(rcpt) for rcpt in c["rcpts"]]
        steps.append(lambda: session.data(message))
        for step in steps:
            rc = step()
            if rc not in (Milter.CONTINUE, Milter.NOREPLY):
                break
        session.close()
    finally:
        engine.close()
    ctx = session.ctx
    reply = session.reply
    if rc in _CODES:
        action = _CODES[rc]
    else:
        assert rc == Milter.ACCEPT, f"{pair}: milter returned {rc}"
        action = "quarantine" if ctx.quarantined else "accept"
    # every field is inserted at index 0: the last one inserted stands first
    added = [[name, value[1:] if value.startswith(" ") else value]
             for name, value, index in reversed(ctx.added)]
    assert all(index == 0 for _n, _v, index in ctx.added), ctx.added
    return {"action": action,
            "smtp_reply": " ".join(str(part) for part in reply if part) if reply else None,
            "headers_added": added, "headers_removed": _removed(message, ctx.changed)}


def _as_the_mta_sees_it(verdict: dict) -> dict:
    """What the adapter can show: no score or symbols; add_header is an accept."""
    action = "accept" if verdict["action"] == "add_header" else verdict["action"]
    return {"action": action, "smtp_reply": verdict["smtp_reply"],
            "headers_added": verdict["headers_added"],
            "headers_removed": verdict["headers_removed"]}


def _expected(pair: str) -> dict:
    return json.loads((HERE / pair / "expected.json").read_text(encoding="utf-8"))


def _scan_expected(pair: str) -> dict:
    return json.loads((HERE / pair / "scan.json").read_text(encoding="utf-8"))


def test_there_are_pairs_and_each_is_complete():
    assert len(PAIRS) >= 24, PAIRS
    for pair in PAIRS:
        for name in INPUTS:
            assert (HERE / pair / name).is_file(), f"{pair}/{name} is missing"
        if not UPDATE:
            assert set(_expected(pair)) == EXPECTED_KEYS, pair
            assert set(_scan_expected(pair)) == SCAN_KEYS, pair
        assert set(_client(pair)) == {"client_ip", "client_name", "helo", "mail_from",
                                      "rcpts", "auth_user", "tls"}, pair


@pytest.mark.parametrize("pair", PAIRS)
def test_scan_gives_the_expected_verdict(pair, capsys):
    got = run_scan(pair, capsys)
    if UPDATE:
        (HERE / pair / "expected.json").write_text(json.dumps(got, indent=2) + "\n",
                                                   encoding="utf-8")
    assert got == _expected(pair)


@pytest.mark.parametrize("pair", PAIRS)
def test_scan_prints_the_expected_json(pair, capsys):
    # every field of every result, the A-R text, the reply: any change of
    # output fails here, not only a change of verdict
    got = normalize(scan_json(pair, capsys))
    if UPDATE:
        (HERE / pair / "scan.json").write_text(
            json.dumps(got, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert got == _scan_expected(pair)


@pytest.mark.parametrize("pair", PAIRS)
def test_two_runs_print_the_same_json(pair, capsys):
    # what NORMALIZE leaves is the same from run to run (else scan.json
    # would fail on an unchanged engine); what it rewrites is only what
    # does vary, so a rule that matches a pair's output must be needed
    first, second = scan_json(pair, capsys), scan_json(pair, capsys)
    assert normalize(first) == normalize(second)
    if first == second:
        assert normalize(first) == first, f"{pair}: a NORMALIZE rule hides a stable field"


@pytest.mark.parametrize("pair", PAIRS)
def test_the_adapter_gives_the_expected_verdict(pair):
    assert run_adapter(pair) == _as_the_mta_sees_it(_expected(pair))


@pytest.mark.parametrize("pair", PAIRS)
def test_scan_and_the_adapter_agree(pair, capsys):
    # independent of expected.json: holds while the files are being rewritten
    assert run_adapter(pair) == _as_the_mta_sees_it(run_scan(pair, capsys))
