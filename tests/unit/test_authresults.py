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


# --------------------------------------------------------------------------
# whatever the sender writes, the header reads back as written

import re  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mailwarden.model import RESULTS  # noqa: E402
from tests import dkimkeys  # noqa: E402
from tests.hostile import FORGED_RESULTS, HOSTILE_TEXTS  # noqa: E402
from tests.unit.authcase import ar_header, message, run, strict_parse  # noqa: E402

# the properties each method writes, as the checks name them
PROPERTIES = {
    "iprev": ("policy.iprev",),
    "auth": ("smtp.auth",),
    "spf": ("smtp.mailfrom", "smtp.helo"),
    "dkim": ("header.d", "header.i", "header.s", "header.a", "header.b"),
    "dmarc": ("header.from", "policy.dmarc"),
    "x-local": ("policy.x",),
}


def _unq(text):
    """A quoted-string's content as authres hands it back, unescaped."""
    return None if text is None else re.sub(r"\\(.)", r"\1", text)


def _printable(text: str, most: int) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:most]


def _plain(value: str) -> bool:
    """A token, or an address (dot-atom or quoted local part): what may
    stand unquoted, and what authres hands back as written."""
    atom = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    quoted = r'"(?:[ !#-\[\]-~]|\\[ -~])+"'
    return bool(re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+", value)
                or re.fullmatch(rf"(?:{atom}(?:\.{atom})*|{quoted})?@{label}(?:\.{label})*",
                                value))


def _ordered(results):
    """In the header's order of methods (RFC 8601 leaves it open; ours is fixed)."""
    order = ("iprev", "auth", "spf", "dkim", "dmarc", "arc")
    return sorted(results, key=lambda r: (order.index(r.method), "") if r.method in order
                  else (len(order), r.method))


def _assert_reads_back_as_produced(results, value):
    parsed = strict_parse(value)
    assert parsed.authserv_id == "mx.example.org"
    reported = [r for r in results if r.method]
    assert [(r.method, r.result) for r in parsed.results] == \
        [(r.method, r.result) for r in reported]
    for got, r in zip(parsed.results, reported):
        want = {p[0]: _printable(p[1], 320) for p in r.properties}
        props = [(f"{p.type}.{p.name}", _unq(str(p.value)) if not _plain(str(p.value))
                  else str(p.value)) for p in got.properties]
        # nothing that was not ours, each value exactly as we wrote it
        for key, v in props:
            assert key in want and want[key] == v, (key, v, value)
        # a value that needs no quoting is never dropped
        assert [k for k, v in props if _plain(v)] == [k for k, v in want.items() if _plain(v)]
        # the reason is kept, exactly
        expect_reason = _printable(r.reason, 200) if r.reason else None
        got_reason = got.reason
        if got_reason is not None and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+",
                                                       got_reason):
            got_reason = _unq(got_reason)
        assert got_reason == expect_reason, (got.reason, value)


def test_a_hostile_spf_explanation_cannot_write_results_of_its_own():
    r = Result("spf", "fail", method="spf", reason=FORGED_RESULTS,
               properties=(("smtp.mailfrom", "x@evil.example"),))
    value = build("mx.example.org", [r])
    parsed = strict_parse(value)
    assert [(x.method, x.result) for x in parsed.results] == [("spf", "fail")]
    assert _unq(parsed.results[0].reason) == FORGED_RESULTS
    assert [(p.type, p.name, p.value) for p in parsed.results[0].properties] == [
        ("smtp", "mailfrom", "x@evil.example")]


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
@pytest.mark.parametrize("method", sorted(PROPERTIES))
def test_hostile_texts_read_back_as_written(method, text):
    props = tuple((key, text, text) for key in PROPERTIES[method])
    results = [Result(method, "fail", method=method, reason=text, properties=props),
               Result("dmarc", "none", method="dmarc", properties=(("header.from", "ok.example"),))]
    value = build("mx.example.org", results)
    _assert_reads_back_as_produced(_ordered(results), value)


HOSTILE_CHAR = st.one_of(st.sampled_from('"()\\@;=,.<>[]: \t\r\n\x00\x7f%'),
                         st.characters(blacklist_categories=("Cs",)),
                         st.characters(min_codepoint=0x21, max_codepoint=0x7e))
HOSTILE = st.one_of(st.text(alphabet=HOSTILE_CHAR, max_size=60),
                    st.sampled_from(HOSTILE_TEXTS),
                    st.builds(lambda a, b: f"{a}@{b}", st.text(alphabet=HOSTILE_CHAR, max_size=20),
                              st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,5}){1,2}", fullmatch=True)))


QUOTED_LOCAL = st.from_regex(r'"(?:[ !#-\[\]-~]|\\[ -~]){0,12}"', fullmatch=True)


@given(QUOTED_LOCAL, st.sampled_from(["smtp.mailfrom", "header.i", "smtp.auth"]), st.booleans())
def test_quoted_local_parts_read_back_as_written(local, key, more):
    props = ((key, local + "@ex.example"),) + ((("header.s", "a b"),) if more else ())
    r = Result("dkim", "fail", method="dkim", reason="x", properties=props)
    _assert_reads_back_as_produced([r], build("mx.example.org", [r]))


@st.composite
def _results(draw):
    out = []
    for method in draw(st.lists(st.sampled_from(sorted(PROPERTIES)), min_size=1, max_size=4)):
        keys = draw(st.lists(st.sampled_from(PROPERTIES[method]), unique=True, max_size=5))
        props = tuple((k, draw(HOSTILE)) + ((draw(HOSTILE),) if draw(st.booleans()) else ())
                      for k in keys)
        reason = draw(st.one_of(st.just(""), HOSTILE))
        out.append(Result(method, draw(st.sampled_from(sorted(RESULTS))), method=method,
                          reason=reason, properties=props))
    return out


@given(_results())
def test_any_text_reads_back_exactly_as_produced(results):
    value = build("mx.example.org", results)
    assert "\r" not in value and not re.search(r"\n(?!\t)", value)
    _assert_reads_back_as_produced(_ordered(results), value)


# --------------------------------------------------------------------------
# the authres behaviour the builder is shaped for (setup.cfg pins authres):
# should an upgrade change any of it, this says so

def test_authres_behaviour_the_builder_relies_on():
    ctx = authres.core_features()

    def parse(text):
        header = authres.core.AuthenticationResultsHeader(ctx, strict=True)
        header._parse_text = text
        header._parse()
        return header

    # a quoted pvalue followed by another property does not parse: one quoted
    # value per resinfo, written last
    with pytest.raises(authres.AuthResError):
        parse('mx.example.org; dkim=fail header.d="a b" header.s=x')
    got = parse('mx.example.org; dkim=fail header.s=x header.d="a b" (c)')
    assert [(p.name, p.value) for p in got.results[0].properties] == [("s", "x"), ("d", "a b")]
    # quoted-strings come back with their quoted-pairs still escaped
    got = parse(r'mx.example.org; spf=fail reason="a\"b\\c" smtp.mailfrom="q\"x"@ex.example')
    assert got.results[0].reason == r'a\"b\\c'
    assert got.results[0].properties[0].value == r'"q\"x"@ex.example'
    # an unquoted reason is an RFC 2045 token only: an "@" ends it
    with pytest.raises(authres.AuthResError):
        parse("mx.example.org; spf=fail reason=a@b")
    # a token and a dot-atom address stand unquoted, comments are skipped
    got = parse("mx.example.org; spf=pass (c) smtp.mailfrom=a.b+c@ex.example (d);"
                " iprev=pass policy.iprev=192.0.2.1 (mail.example)")
    assert [(r.method, r.result, [p.value for p in r.properties]) for r in got.results] == [
        ("spf", "pass", ["a.b+c@ex.example"]), ("iprev", "pass", ["192.0.2.1"])]
    # a ptype outside smtp/header/body/policy is refused when strict
    with pytest.raises(authres.AuthResError):
        parse("mx.example.org; spf=pass other.x=y")
    # the strict flag is honoured at all
    assert authres.core.AuthenticationResultsHeader(ctx, strict=True).strict is True


def test_incoming_status_headers_are_removed_whatever_they_say():
    headers = [
        ("X-Mailwarden-Status", b" No, score=-100.00 required=5.00"),
        ("Authentication-Results", b" mx.example.org; dkim=pass"),
        ("x-mailwarden-status", b" anything at all"),
        ("X-Mailwarden-Statusx", b" not ours"),
        ("Authentication-Results", b" other.example; spf=pass"),
    ]
    found = forged("mx.example.org", headers, "X-Mailwarden-Status")
    assert [(n, i) for n, _, i in found] == [("X-Mailwarden-Status", 1),
                                             ("Authentication-Results", 1),
                                             ("x-mailwarden-status", 2)]
    # another configured name: that one goes, the default name stays
    found = forged("mx.example.org", headers, "X-Spam-Verdict")
    assert [n for n, _, _ in found] == ["Authentication-Results"]


# --------------------------------------------------------------------------
# the hostile texts through scan's engine: as an SPF explanation and a HELO

def _zone_text(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= ord(ch) < 0x7f:
            out.append(ch)
        else:
            out.extend(f"\\{b:03d}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


@pytest.mark.parametrize("text", [t for t in HOSTILE_TEXTS if t.strip()])
def test_hostile_texts_through_the_engine_read_back_as_produced(text):
    from mailwarden.config import loads
    from mailwarden.dns import Resolver, ZoneBackend
    from mailwarden.engine import Engine, run_offline
    zone = ("forged.example. TXT \"v=spf1 -all exp=exp.forged.example\"\n"
            f"exp.forged.example. TXT \"{_zone_text(text)}\"\n")
    cfg = loads("[authserv]\nid = mx.example.org\n[check.spf]\nhelo = yes\n")
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(zone)),
                    hostname="mx.example.org")
    try:
        verdict, conn, msg = run_offline(
            engine, client_ip="198.51.100.7", helo=text, mail_from="x@forged.example",
            rcpts=["b@rcpt.example"],
            message=b"From: a@forged.example\r\nSubject: x\r\n\r\nbody\r\n")
        if msg is not None:
            msg.close()
        engine.close_connection(conn)
    finally:
        engine.close()
    (value,) = [v for n, v in verdict.headers_added if n == "Authentication-Results"]
    _assert_reads_back_as_produced(_ordered(verdict.results), value)
    spf = [r for r in verdict.results if r.check == "spf" and r.properties
           and r.properties[0][0] == "smtp.mailfrom"]
    assert [r.result for r in spf] == ["fail"]


# -- Authentication-Results --------------------------------------------------

def test_authentication_results_round_trip(keys):
    signed = dkimkeys.sign(message("a@mw-reject.example"), keys["ed"], "ed", "mw-reject.example")
    signed = dkimkeys.sign(signed, keys["rsa"], "rsa", "mw-dkim.example")
    v = run(zone_extra=keys["zone"], mail_from="x@mw-reject.example", msg=signed,
            auth_user="carol", tls_version="TLSv1.3")
    value = ar_header(v)
    parsed = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + re.sub(r"\n\t", " ", value))
    assert parsed.authserv_id == "mx.test.example"
    methods = [(r.method, r.result) for r in parsed.results]
    assert ("auth", "pass") in methods
    assert [m for m in methods if m[0] == "dkim"] == [("dkim", "pass"), ("dkim", "pass")]
    dkim_props = [{(p.type, p.name): p.value for p in r.properties}
                  for r in parsed.results if r.method == "dkim"]
    assert dkim_props[0][("header", "d")] == "mw-dkim.example"
    assert dkim_props[0][("header", "a")] == "rsa-sha256"
    assert len(dkim_props[0][("header", "b")]) == 8
    order = [r.method for r in parsed.results]
    assert order == sorted(order, key=["iprev", "auth", "spf", "dkim", "dmarc"].index)


def test_full_header_round_trip_without_auth():
    v = run(mail_from="x@mw-reject.example", msg=message("a@mw-reject.example"))
    value = ar_header(v)
    parsed = authres.AuthenticationResultsHeader.parse(
        "Authentication-Results: " + re.sub(r"\n\t", " ", value))
    got = {(r.method, r.result) for r in parsed.results}
    assert {("spf", "pass"), ("dkim", "none"), ("dmarc", "pass")} <= got
    dmarc = next(r for r in parsed.results if r.method == "dmarc")
    assert {(p.type, p.name): p.value for p in dmarc.properties} == {
        ("header", "from"): "mw-reject.example", ("policy", "dmarc"): "reject"}
    spf = [r for r in parsed.results if r.method == "spf"]
    assert [(p.type, p.name) for r in spf for p in r.properties] == [
        ("smtp", "mailfrom"), ("smtp", "helo")]


def test_forged_authentication_results_removed_others_kept():
    extra = (b"Authentication-Results: mx.test.example; dkim=pass header.d=mw-reject.example\r\n"
             b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@y.example\r\n")
    v = run(mail_from="x@mw-reject.example", msg=message("a@mw-reject.example", extra=extra))
    assert [(n, val) for n, val, _ in v.headers_removed] == [
        ("Authentication-Results", "mx.test.example; dkim=pass header.d=mw-reject.example")]
