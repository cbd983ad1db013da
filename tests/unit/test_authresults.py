import authres
import pytest

from mailwarden.authresults import authserv_id_of, build, forged
from mailwarden.model import Result


def test_build_orders_methods_and_folds():
    results = [
        Result("dmarc", "pass", method="dmarc", properties=(("header.from", "example.org"),)),
        Result("iprev", "pass", method="iprev",
               properties=(("policy.iprev", "192.0.2.1", "mail.example.org"),)),
        Result("size", "fail", symbol="SIZE_EXCEEDED"),            # no method: not reported
        Result("spf", "fail", method="spf", reason="not allowed",
               properties=(("smtp.mailfrom", "a@example.org"),)),
    ]
    value = build("mx.example.org", results)
    assert value == ("mx.example.org;\n\t"
                     "iprev=pass policy.iprev=192.0.2.1 (mail.example.org);\n\t"
                     'spf=fail reason="not allowed" smtp.mailfrom=a@example.org;\n\t'
                     "dmarc=pass header.from=example.org")
    parsed = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + value.replace("\n\t", " "))
    assert parsed.authserv_id == "mx.example.org"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("iprev", "pass"), ("spf", "fail"), ("dmarc", "pass")]
    assert parsed.results[1].properties[0].value == "a@example.org"


def test_build_with_nothing_to_report():
    assert build("mx.example.org", []) == "mx.example.org; none"


def test_network_text_cannot_break_the_header():
    r = Result("spf", "fail", method="spf", reason="bad\r\nX-Injected: yes",
               properties=(("smtp.mailfrom", "a\r\nX-Evil: 1@example.org", "c)o(mment"),))
    value = build("mx.example.org", [r])
    assert "\r" not in value and "\nX-" not in value
    assert value.count("\n") == 1                     # only our own fold


@pytest.mark.parametrize("value,claims", [
    ("mx.example.org; spf=pass", "mx.example.org"),
    ("MX.Example.ORG; spf=pass", "mx.example.org"),
    ("  (comment) mx.example.org; spf=pass", "mx.example.org"),
    ("(nested (comment)) mx.example.org (more);", "mx.example.org"),
    ("\r\n\tmx.example.org\r\n\t; none", "mx.example.org"),
    ('"mx.example.org"; none', "mx.example.org"),
    ("mx.example.org.; none", "mx.example.org"),
    ("mx.example.org;spf=pass", "mx.example.org"),
    ("other.example.org; spf=pass", "other.example.org"),
    ("", None),
])
def test_authserv_id_of(value, claims):
    assert authserv_id_of(value) == claims


def test_forged_headers_found_with_their_occurrence_index():
    headers = [
        ("Received", b" from x"),
        ("Authentication-Results", b" other.example; spf=pass"),
        ("authentication-results", b" (c) MX.EXAMPLE.ORG;\r\n\tdkim=pass"),
        ("Authentication-Results", b" mx.example.org.evil; none"),
        ("Authentication-Results", b" mx.example.org; none"),
    ]
    found = forged("mx.example.org", headers)
    assert [(n, i) for n, _, i in found] == [("authentication-results", 2),
                                             ("Authentication-Results", 4)]
