"""Mail::DKIM's verifier corpus, run through the dkim check.

The messages and DNS data are Mail::DKIM's (tests/data/dkim/mail-dkim,
with its licence notice); the expected result of each case is the one its
t/verifier.t gives.  ``invalid`` there is a signature that could not be
evaluated: here neutral, permerror, temperror or policy.  The corpus signs
with 512- and 768-bit RSA keys and rsa-sha1, so the check runs with
``min_key_bits = 512`` and ``rsa_sha1 = pass``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

DATA = Path(__file__).resolve().parents[1] / "data" / "dkim" / "mail-dkim"
CONFIG = """\
[authserv]
id = mx.test.example
[check.dkim]
min_key_bits = 512
rsa_sha1 = pass
[check.spf]
enabled = no
[check.dmarc]
enabled = no
"""
INVALID = {"neutral", "permerror", "temperror", "policy"}

# case -> Mail::DKIM's expected result (t/verifier.t)
CASES = {
    "good_1878523": "pass", "good_83176": "pass",
    "good_qp_1": "pass", "good_qp_2": "pass", "good_qp_3": "pass",
    "good_rfc4871_3": "pass", "good_rfc4871_4": "pass",
    "goodkey_1": "pass", "goodkey_2": "pass", "goodkey_3": "pass", "goodkey_4": "pass",
    "goodkey_ed25519": "pass",
    "multiple_2": "pass",
    "bad_1878954": "fail", "badkey2_ed25519": "fail", "badkey3_ed25519": "fail",
    "ignore_1": "invalid", "ignore_5": "invalid", "ignore_6": "invalid",
    "ignore_7": "invalid", "ignore_8": "invalid",
    "badkey_10": "invalid", "badkey_11": "invalid", "badkey1_ed25519": "invalid",
    "badkey_14": "invalid", "badkey_15": "invalid",
}

DRAFT = "a pre-RFC draft signature (v= missing or 0.5); RFC 6376 §3.5 requires v=1"
SKIPPED = {
    **{f"good_ietf00_{i}": "a pre-standard (ietf-00) signature; Mail::DKIM skips it too"
       for i in range(1, 6)},
    **{name: "DomainKeys (RFC 4870), not DKIM" for name in (
        "good_dk_gmail", "good_dk_yahoo", "good_dk_1", "good_dk_2", "good_dk_3", "good_dk_4",
        "good_dk_5", "good_dk_6", "good_dk_7", "dk_headers_1", "dk_headers_2", "bad_dk_1",
        "bad_dk_2", "bad_dk_3", "bad_dk_4", "bad_dk_5", "dk_multiple_1")},
    **{name: DRAFT for name in (
        "mine_ietf01_1", "mine_ietf01_2", "mine_ietf01_3", "mine_ietf01_4", "mine_ietf05_1",
        "good_ietf01_1", "good_ietf01_2", "bad_ietf01_1", "bad_ietf01_2", "bad_ietf01_3",
        "bad_1", "multiple_1", "no_body_1", "no_body_2", "no_body_3", "ignore_2", "ignore_3",
        "ignore_4", "badkey_1", "badkey_2", "badkey_3", "badkey_4", "badkey_5", "badkey_6",
        "badkey_7")},
    **{name: "tests the key's g= tag, which RFC 6376 removed (its Appendix E, changes "
             "since RFC 4871): a verifier ignores it"
       for name in ("badkey_8", "badkey_9", "badkey_12", "badkey_13")},
}


def zone() -> str:
    """t/FAKE_DNS.dat as zone lines: NAME VALUE, NXDOMAIN, or a DNS error."""
    lines = []
    for raw in (DATA / "FAKE_DNS.dat").read_text().splitlines():
        if not raw.strip() or raw.lstrip()[:1] in ("#", ";"):
            continue
        name, value = raw.split(None, 1)
        value = value.strip()
        if value == "NXDOMAIN":
            continue
        if value == "~~Query timed out~~":
            lines.append(f"{name}. TIMEOUT")
        elif value == "~~SERVFAIL~~":
            lines.append(f"{name}. SERVFAIL")
        elif value == '""':
            lines.append(f'{name}. TXT ""')
        else:
            lines.append(f'{name}. TXT "{value}"')
    return "\n".join(lines)


@pytest.fixture(scope="module")
def engine():
    cfg = loads(CONFIG)
    made = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(zone())),
                  hostname="mx.test.example")
    yield made
    made.close()


def dkim_results(engine, name: str) -> list:
    data = (DATA / "corpus" / f"{name}.txt").read_bytes()
    verdict, _conn, _msg = run_offline(engine, client_ip="198.51.100.7",
                                       helo="relay.test.example", mail_from="a@x.example",
                                       rcpts=["b@y.example"], message=data)
    return [r for r in verdict.results if r.check == "dkim"]


def matches(result: str, expected: str) -> bool:
    return result in INVALID if expected == "invalid" else result == expected


ALL = [pytest.param(name, expected, id=name) for name, expected in CASES.items()] + [
    pytest.param(name, None, id=name, marks=pytest.mark.skip(reason=why))
    for name, why in SKIPPED.items()]


@pytest.mark.parametrize("name,expected", ALL)
def test_mail_dkim_corpus(engine, name, expected):
    results = dkim_results(engine, name)
    assert results, name
    if name == "multiple_2":
        # four signatures: c=foobar, good, a damaged b=, a syntax error
        assert [r.result for r in results][:3] == ["neutral", "pass", "fail"], results
        assert results[3].result in INVALID, results
        return
    (r,) = results
    assert matches(r.result, expected), (r.result, r.symbol, r.reason)


def test_every_case_of_the_corpus_is_run_or_skipped_with_a_reason():
    kept = {p.stem for p in (DATA / "corpus").glob("*.txt")}
    assert kept == set(CASES)
    assert not set(CASES) & set(SKIPPED)
    assert len(CASES) + len(SKIPPED) == 26 + 51
