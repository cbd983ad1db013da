"""The public ARC conformance suite (ValiMail/arc_test_suite), run on
mailwarden.

``tests/data/arc/`` holds the suite's two YAML files as published (MIT
licence, ``LICENSE.txt`` beside them; source and commit in
``tests/data/arc/README.rst``).  The path can be changed with
``MAILWARDEN_ARC_SUITE`` (a directory with the same two files); nothing is
fetched at test time.

Validation: each scenario's ``txt-records`` become zone lines, and each
message goes through ``mailwarden scan --zone`` (the command's own entry
point, in this process); the ``arc=`` result of its JSON must be the
suite's ``cv``.  The suite predates RFC 8617 in one point: a chain whose
seal says ``cv=fail`` has the expected result "" (the draft's "chain
terminated, no result"); RFC 8617 §5.2 makes such a chain ``fail``, and so
does mailwarden: "" is read as fail (3 tests).

Signing: the suite gives a message that carries the sealer's own
Authentication-Results, a key, the h= list and the time; mailwarden's
sealing steps run on it: the chain is verified (the key records of the
scenario), :func:`~mailwarden.checks.arc.seal_plan` decides the instance
and cv= (or that no set may be added), the AAR is the sealer's A-R fields
consolidated, and :func:`~mailwarden.signing.arc_set` makes the set in
the suite's standard form.  The three fields are compared as the suite's
own harness does (sets of tags, white space ignored).  In the milter the
AAR is mailwarden's own A-R (not one found in the message) and the h=
list its own: the seal made there differs from the suite's on purpose.
"""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from mailwarden import cli, signing
from mailwarden.checks import arc as arcmod
from mailwarden.dns import ZoneBackend
from mailwarden.mime import split_message
from mailwarden.model import Message

ROOT = Path(__file__).resolve().parents[2]
SUITE = Path(os.environ.get("MAILWARDEN_ARC_SUITE", ROOT / "tests/data/arc"))
VALIDATION = SUITE / "arc-draft-validation-tests.yml"
SIGNING = SUITE / "arc-draft-sign-tests.yml"

if not (VALIDATION.exists() and SIGNING.exists()):
    pytest.skip(f"the ARC test suite is not at {SUITE}", allow_module_level=True)

# dry run: a message the suite leaves without From (which DMARC refuses)
# still gets its Authentication-Results
CONFIG = """[authserv]
id = mx.test.example
[policy]
dry_run = yes
[check.dnsbl]
enabled = no
[check.uribl]
enabled = no
"""


def scenarios(path):
    with open(path, "rb") as fh:
        return [s for s in yaml.safe_load_all(fh) if s]


def cases(path):
    out = []
    for number, scenario in enumerate(scenarios(path)):
        for name, test in scenario["tests"].items():
            out.append(pytest.param(scenario, test, id=f"{number}-{name}"))
    return out


def zone_lines(records) -> str:
    lines = []
    for name, value in (records or {}).items():
        text = "".join(str(value).split("\n"))
        lines.append(f'{name}. TXT "{text}"')
    return "\n".join(lines) + "\n"


def crlf(text: str) -> bytes:
    return re.sub(r"\r?\n", "\r\n", text).encode("utf-8")


EXPECTED = {"pass": "pass", "fail": "fail", "none": "none",
            # the draft's "terminated" chain, fail under RFC 8617 §5.2
            "": "fail"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("arcsuite") / "mailwarden.ini"
    path.write_text(CONFIG)
    return path


def arc_result(out: dict) -> str:
    (found,) = [r for r in out["results"] if r["check"] == "arc"]
    ar = dict(out["headers_added"])["Authentication-Results"]
    words = re.findall(r"\barc=([a-z]+)", ar)
    assert words == [found["result"]], ar
    return found["result"]


@pytest.mark.parametrize("scenario, test", cases(VALIDATION))
def test_validation(scenario, test, config_file, tmp_path, capsys):
    zone = tmp_path / "suite.zone"
    zone.write_text(zone_lines(scenario.get("txt-records")))
    ZoneBackend(zone.read_text())               # the zone lines read back
    message = tmp_path / "message.eml"
    message.write_bytes(crlf(test["message"]))
    status = cli.main(["scan", "-c", str(config_file), "--client-ip", "198.51.100.9",
                       "--mail-from", "", "--rcpt", "someone@test.example",
                       "--zone", str(zone), str(message)])
    assert status == 0
    out = json.loads(capsys.readouterr().out)
    assert arc_result(out) == EXPECTED[str(test["cv"]).strip().lower()], test["description"]


def test_validation_counts():
    total = sum(len(s["tests"]) for s in scenarios(VALIDATION))
    assert total == 171          # the suite as committed: every one runs above


def tags(value: str) -> set:
    return set("".join(value.split()).split(";")) if value.strip() else set()


@pytest.fixture(scope="module")
def sign_keys(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("arcsuite-keys")
    for number, scenario in enumerate(scenarios(SIGNING)):
        path = folder / f"key{number}.pem"
        path.write_text(scenario["privatekey"])
        os.chmod(path, 0o600)
        out[number] = signing.load_key(str(path), scenario["domain"], scenario["sel"])
    return out


def seal_as_mailwarden(message: bytes, test, key, records) -> dict:
    """What mailwarden's sealing steps add to ``message``: name -> value."""
    backend = ZoneBackend(zone_lines(records))

    def dnsfunc(name, timeout=5):
        answer = backend.lookup(name.decode().rstrip(".").lower(), "TXT", 1.0)
        return answer.records[0].encode() if answer.ok and answer.records else None

    headers, body, _problem = split_message(message)
    msg = Message(headers=list(headers))
    wire = msg.wire_headers()
    chain = arcmod.read_chain(wire)
    found = arcmod.verify(wire, body, chain, dnsfunc)
    instance, cv, prior = arcmod.seal_plan(chain, found.result, found.terminated)
    if instance is None:
        return {}
    texts = [(n, v.decode("utf-8")) for n, v in headers]
    aar = arcmod.consolidated_aar(test["srv-id"], texts)
    made = signing.arc_set(message, key, instance, cv, aar.encode("utf-8"), prior,
                           test["sig-headers"].lower().split(":"), now=test["t"],
                           standardize=True)
    return {n.decode().lower(): v.decode() for n, v in made}


@pytest.mark.parametrize("scenario, test", cases(SIGNING))
def test_signing(scenario, test, sign_keys):
    number = scenarios(SIGNING).index(scenario)
    got = seal_as_mailwarden(crlf(test["message"]), test, sign_keys[number],
                             scenario.get("txt-records"))
    assert tags(got.get("arc-seal", "")) == tags(test["AS"] or "")
    assert tags(got.get("arc-message-signature", "")) == tags(test["AMS"] or "")
    assert tags(got.get("arc-authentication-results", "")) == tags(test["AAR"] or "")


def test_signing_counts():
    assert sum(len(s["tests"]) for s in scenarios(SIGNING)) == 17
