"""Property-based tests (hypothesis) and a bounded fuzz run of the MIME/URL path.

Properties: URL extraction never raises, stays within its limits, and finds
a URL planted in any text, part or encoding; address analysis never raises
anything but AddressProblem and every hop it names is a normalised domain;
Authentication-Results and header splitting never let a line break through
except as folding; the config loader refuses any value with ConfigError and
nothing else.  The fuzz run feeds generated and damaged messages to the
whole engine, as ``scan`` does.

The ``ci`` profile is fixed (derandomized, bounded examples, no deadline) so
a run is repeatable and its time bounded; ``MAILWARDEN_HYPOTHESIS=dev`` runs
many more examples, at random, for a longer hunt by hand.
"""

from __future__ import annotations

import base64
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden import authresults
from mailwarden.address import AddressProblem, analyze, header_addresses, normalize_domain
from mailwarden.config import ConfigError, loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from mailwarden.mime import split_message
from mailwarden.model import Result
from mailwarden.urls import Limits, extract, registered_domain


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DOMAIN = st.builds(lambda labels, tld: ".".join(labels + [tld]),
                   st.lists(LABEL, min_size=1, max_size=3), st.sampled_from(["com", "org", "net"]))
NOISE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


# --------------------------------------------------------------------------
# URL extraction

@given(st.binary(max_size=4000))
def test_extract_never_raises_on_bytes(data):
    found = extract(data, Limits(max_parts=50, max_depth=5, max_bytes=100_000))
    assert len(found.urls) <= 1000 and found.parts <= 50
    assert found.scanned <= 100_000 + 10


@given(NOISE, NOISE, DOMAIN, st.sampled_from(["plain", "html", "base64", "qp", "nested"]))
def test_planted_url_is_found_wherever_it_hides(before, after, domain, how):
    url = f"http://www.{domain}/path"
    # keep the noise from gluing itself onto the URL
    text = f"{before} {url} {after}"
    if how == "plain":
        msg = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()
    elif how == "html":
        msg = (b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>" +
               f'<a href="{url}">x</a>'.encode() + b"</p>")
    elif how == "base64":
        msg = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64"
               b"\r\n\r\n" + base64.encodebytes(text.encode()).replace(b"\n", b"\r\n"))
    elif how == "qp":
        import quopri
        msg = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
               b"quoted-printable\r\n\r\n" + quopri.encodestring(text.encode()))
    else:
        msg = (b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: "
               b"multipart/alternative; boundary=i\r\n\r\n--i\r\nContent-Type: text/plain"
               b"\r\n\r\n" + text.encode() + b"\r\n--i--\r\n--o--\r\n")
    found = extract(msg)
    assert registered_domain(f"www.{domain}") in found.domains, (found, msg[:300])


# --------------------------------------------------------------------------
# addresses

ADDRESS_TEXT = st.lists(st.sampled_from(list("ab.@%!:,\"\\[]<> \x00\r\n-_+") +
                                        ["ä", "\u200b", "xn--", "127.0.0.1", "IPv6:"]),
                        max_size=40).map("".join)


@given(ADDRESS_TEXT)
def test_analyze_never_raises_but_address_problem(text):
    try:
        route = analyze(text)
    except AddressProblem:
        return
    for hop in route.hops:
        assert hop == hop.lower() and not hop.endswith(".") or hop.startswith("[")


@given(DOMAIN)
def test_normalize_domain_is_idempotent(domain):
    once = normalize_domain(domain.upper() + ".")
    assert once == domain and normalize_domain(once) == once


@given(st.lists(st.tuples(st.text(max_size=20), DOMAIN), min_size=1, max_size=5))
def test_header_addresses_reads_back_what_was_written(pairs):
    local = [re.sub(r"[^a-z0-9]", "", name.lower()) or "x" for name, _ in pairs]
    value = ", ".join(f"{l}@{d}" for l, (_, d) in zip(local, pairs))
    got = header_addresses([value])
    assert [a for _, a in got] == [f"{l}@{d}" for l, (_, d) in zip(local, pairs)]


@given(st.text(alphabet="()\\\"a@b. ", max_size=400))
def test_header_addresses_never_recurses_away(value):
    header_addresses([value])


# --------------------------------------------------------------------------
# header folding

ANY_TEXT = st.text(max_size=200)


@given(ANY_TEXT, ANY_TEXT, ANY_TEXT)
def test_authentication_results_only_fold(reason, value, comment):
    r = Result(check="spf", method="spf", result="fail", reason=reason,
               properties=(("smtp.mailfrom", value, comment),))
    out = authresults.build("mx.example.org", [r])
    assert "\r" not in out
    assert not re.search(r"\n(?!\t)", out)
    assert all(0x20 <= ord(c) < 0x7f or c in "\n\t" for c in out)


HEADER_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True)
HEADER_VALUE = st.lists(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                                min_size=1, max_size=30), min_size=1, max_size=4)


@given(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), min_size=1, max_size=8),
       st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=200))
def test_split_message_gives_back_folded_fields(fields, eol, body):
    raw = b""
    for name, words in fields:
        raw += name.encode() + b": " + (eol + b"\t").join(w.encode() for w in words) + eol
    headers, got_body, problem = split_message(raw + eol + body)
    assert problem == ""
    assert [n for n, _ in headers] == [n for n, _ in fields]
    for (_, value), (_, words) in zip(headers, fields):
        assert value == b" " + b"\r\n\t".join(w.encode() for w in words)
    assert got_body == body


# --------------------------------------------------------------------------
# the config parser

KEYS = [("milter", "timeout"), ("milter", "socket"), ("milter", "socket_mode"),
        ("milter", "allow_root"), ("dns", "port"), ("dns", "timeout"),
        ("dns", "nameservers"), ("policy", "reject_score"), ("relay", "trusted_networks"),
        ("relay", "local_domains"), ("check.size", "max_size"), ("check.limits", "window"),
        ("state", "url"), ("scores", "SPF_FAIL"), ("check.dnsbl.x", "zone")]
INI_VALUE = st.text(alphabet=st.characters(blacklist_characters="\r\n[", min_codepoint=0x20,
                                           max_codepoint=0x2ff), max_size=40)


@given(st.lists(st.tuples(st.sampled_from(KEYS), INI_VALUE), max_size=4),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_config_refuses_with_config_error_only(pairs, junk):
    sections: dict = {}
    for (section, key), value in pairs:
        sections.setdefault(section, {})[key] = value
    text = "[authserv]\nid = mx.example.org\n"
    for section, values in sections.items():
        text += f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    for body in (text, text + junk):
        try:
            loads(body)
        except ConfigError as exc:
            assert re.match(r"^<string>:\d+:", str(exc)), str(exc)


# --------------------------------------------------------------------------
# fuzz: whole messages through the engine, as scan runs them

@pytest.fixture(scope="module")
def engine():
    cfg = loads("[authserv]\nid = mx.test.example\n")
    e = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend("")),
               hostname="mx.test.example")
    yield e
    e.close()


PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"\r\n", b"\n", b"\r", b"--b\r\n",
    b"--b--\r\n", b"Content-Transfer-Encoding: base64\r\n", b"Content-Type: text/html\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"From: a@b.example\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=b.example; s=s; bh=x; b=y\r\n",
    b"http://www.example.com/", b"<a href='http://x.example.org/'>", b"=?utf-8?b?w6Q=?=",
    b"\x00", b"\xff\xfe", b"(", b"=\r\n", b"aGVsbG8gaHR0cDovL2IuZXhhbXBsZS5uZXQv\r\n",
])


@settings(max_examples=int(os.environ.get("MAILWARDEN_FUZZ_EXAMPLES", "200")))
@given(st.lists(st.one_of(PIECES, st.binary(max_size=40)), max_size=60))
def test_fuzz_messages_through_the_engine(engine, pieces):
    message = b"".join(pieces)
    verdict, conn, msg = run_offline(engine, client_ip="198.51.100.7", helo="h.example",
                                     mail_from="a@b.example", rcpts=["c@d.example"],
                                     message=message)
    if msg is not None:
        msg.close()
    engine.close_connection(conn)
    assert verdict.action in {"accept", "add_header", "quarantine", "tempfail", "reject",
                              "discard"}
    assert not [r for r in verdict.results if "internal error" in (r.reason or "")]
