"""iprev on the fake resolver: reverse DNS with forward confirmation."""

import pytest

from .foundationcase import BASE, iprev, run


@pytest.mark.parametrize("ip,result,symbol", [
    ("198.51.100.7", "pass", "IPREV_PASS"),
    ("198.51.100.8", "fail", "IPREV_FAIL"),
    ("198.51.100.9", "pass", "IPREV_PASS"),
    ("198.51.100.10", "temperror", "IPREV_TEMPERROR"),
    ("198.51.100.11", "temperror", "IPREV_TEMPERROR"),
    ("198.51.100.12", "permerror", "IPREV_PERMERROR"),
    ("2001:db8::25", "pass", "IPREV_PASS"),
    ("IPv6:2001:db8::25", "pass", "IPREV_PASS"),
])
def test_iprev_results(ip, result, symbol):
    verdict = run(ip)
    (r,) = iprev(verdict)
    assert (r.result, r.symbol) == (result, symbol)
    ar = dict(verdict.headers_added).get("Authentication-Results", "")
    if verdict.action != "tempfail":
        address = ip.replace("IPv6:", "")
        if ":" in address:                 # not an RFC 2045 token: quoted (RFC 8601 pvalue)
            address = f'"{address}"'
        assert f"iprev={result}" in ar and f"policy.iprev={address}" in ar


def test_iprev_temperror_tempfails_and_can_be_told_not_to():
    assert run("198.51.100.10").action == "tempfail"
    assert run("198.51.100.10", BASE + "[check.iprev]\ntempfail_on_error = no\n").action == "accept"
