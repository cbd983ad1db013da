"""URL extraction: the corpus with its expected domains, the obfuscations,
the bounds, and hostile inputs that must stay linear and never raise."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from mailwarden.urls import Limits, extract, normalize_host, registered_domain

CORPUS = Path(__file__).resolve().parents[1] / "data" / "urls"
MESSAGES = sorted(CORPUS.glob("*.eml"))
HEAD = b"From: a@sender.example\r\nTo: b@example.org\r\nSubject: t\r\n"


def test_the_corpus_is_there():
    assert len(MESSAGES) >= 20
    for path in MESSAGES:
        assert path.with_suffix(".domains").is_file(), path.name


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_corpus_message_yields_exactly_its_domains(path):
    expected = sorted(path.with_suffix(".domains").read_text().split())
    found = extract(path.read_bytes())
    assert sorted(found.domains + found.ips) == expected
    assert list(found.domains) == sorted(found.domains)
    assert set(found.ordered) == set(expected)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_a_bytearray_is_read_as_the_same_bytes(path):
    """uribl hands the message over as one bytearray (Message.as_buffer)."""
    raw = path.read_bytes()
    assert extract(bytearray(raw)) == extract(raw)


def test_broken_parts_are_skipped_with_a_note():
    found = extract((CORPUS / "hostile-broken-parts.eml").read_bytes())
    notes = " | ".join(found.notes)
    assert "unknown charset 'x-no-such-charset'" in notes
    assert "'rot13'" in notes
    assert "without a usable boundary" in notes
    assert "without its closing delimiter" in notes


def test_nesting_beyond_the_bound_is_not_read_and_says_so():
    found = extract((CORPUS / "hostile-deep-nesting.eml").read_bytes())
    assert found.truncated
    assert any("nesting depth 10" in n for n in found.notes)
    assert "not-read.com" not in found.domains


@pytest.mark.parametrize("host, expected", [
    ("WWW.Example.COM", ("name", "www.example.com")),
    ("example.com.", ("name", "example.com")),
    ("example.com..", ("name", "example.com")),
    ("3325256715", ("ip", "198.51.100.11")),
    ("0306.063.0144.014", ("ip", "198.51.100.12")),
    ("0xc6.0x33.0x64.0xd", ("ip", "198.51.100.13")),
    ("198.51.25614", ("ip", "198.51.100.14")),
    ("198.51.100.15.", ("ip", "198.51.100.15")),
    ("0x", ("ip", "0.0.0.0")),
    ("256.1.1.1", ("", "")),
    ("1.2.3.4.5", ("", "")),
    ("09.1.1.1", ("", "")),                 # 09 is not octal: invalid, not a name
    ("bücher.de", ("name", "xn--bcher-kva.de")),
    ("%65vil.example", ("name", "evil.example")),
    ("[2001:db8::1]", ("ip", "2001:db8::1")),
    ("exa mple.com", ("", "")),
    ("-bad-.com", ("", "")),
    ("", ("", "")),
])
def test_hosts_are_normalised_as_a_browser_reads_them(host, expected):
    assert normalize_host(host) == expected


@pytest.mark.parametrize("host, domain", [
    ("a.b.example.co.uk", "example.co.uk"),
    ("www.example.com", "example.com"),
    ("customer.blogspot.com", "customer.blogspot.com"),   # PSL private section used
    ("foo.bar.test", "bar.test"),                         # RFC 6761 names as suffixes
    ("test", "test"),                                     # RFC 5782 TEST entry
    ("intranet", ""),
    ("host.local", ""),
])
def test_registered_domain(host, domain):
    assert registered_domain(host) == domain


def _message(body: bytes, ctype: bytes = b"text/plain") -> bytes:
    return HEAD + b"Content-Type: " + ctype + b"\r\n\r\n" + body


def test_bound_on_distinct_urls():
    body = b" ".join(b"http://h%d.one-domain.com/" % i for i in range(50))
    found = extract(_message(body), Limits(max_urls=10))
    assert len(found.urls) == 10
    assert found.truncated
    assert any("10 URLs" in n for n in found.notes)


def test_bound_on_distinct_domains():
    body = b" ".join(b"http://d%d.com/" % i for i in range(50))
    found = extract(_message(body), Limits(max_domains=7))
    assert len(found.domains) == 7
    assert found.domains == tuple(sorted(f"d{i}.com" for i in range(7)))
    assert found.truncated


def test_bound_on_parts():
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nhttp://p%d.com/\r\n" % i
                     for i in range(30))
    found = extract(_message(parts + b"--b--\r\n", b"multipart/mixed; boundary=b"),
                    Limits(max_parts=5))
    assert found.parts == 5
    assert found.domains == ("p0.com", "p1.com", "p2.com", "p3.com")   # the container is one
    assert found.truncated


def test_bound_on_characters_scanned():
    body = b"x" * 5000 + b" http://late.example.net/"
    found = extract(_message(body), Limits(max_bytes=4000))
    assert found.domains == ()
    assert found.scanned == 4000
    assert found.truncated
    assert extract(_message(body)).domains == ("example.net",)


def test_a_url_in_a_redirector_path_is_found():
    found = extract(_message(b"http://r.redirect.com/?to=http://target.evil.com/&x=www.third.org"))
    assert found.domains == ("evil.com", "redirect.com", "third.org")


# --------------------------------------------------------------------------
# hostile input: linear time, no exception

MB = 1024 * 1024
PATHOLOGICAL = {
    "no-space": lambda n: b"a" * n,
    "http-repeated": lambda n: b"http://" * (n // 7),
    "url-repeated": lambda n: b"http://a/" * (n // 9),
    "www-repeated": lambda n: b"www." * (n // 4),
    "dots-digits": lambda n: b"1.2." * (n // 4),
    "mailto-repeated": lambda n: b"mailto:" * (n // 7),
    "userinfo-repeated": lambda n: b"http://x@" * (n // 9),
    "lt-repeated": lambda n: b"<" * n,
    "open-tags": lambda n: b"<a " * (n // 3),
    "open-quotes": lambda n: b"<a href=\"" * (n // 9),
    "mixed-quotes": lambda n: b"<a x='\"" * (n // 7) + b">",
    "close-tags": lambda n: b"<style></" * (n // 9),
    "entities": lambda n: b"&#" * (n // 2),
    "css-url": lambda n: b"<style>" + b"url(" * (n // 4),
    "anchors": lambda n: b"<a>" * (n // 3),
    "percent": lambda n: b"<a href=\"http://" + b"%" * n + b"\">",
}


def _time(data: bytes) -> float:
    started = time.perf_counter()
    extract(data)
    return time.perf_counter() - started


@pytest.mark.parametrize("ctype", [b"text/plain", b"text/html"])
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_input_stays_linear(name, ctype):
    make = PATHOLOGICAL[name]
    small = _message(make(MB // 4), ctype)
    large = _message(make(MB), ctype)
    extract(small)                        # warm the suffix list up
    t_small = min(_time(small) for _ in range(3))
    t_large = min(_time(large) for _ in range(3))
    # four times the input: about four times the time, never sixteen (the
    # floor absorbs timer noise on a busy machine)
    assert t_large < 8 * t_small + 0.25, f"{name}: {t_small:.3f}s -> {t_large:.3f}s"


def test_ten_thousand_parts_and_deep_nesting_are_bounded():
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nhttp://p%d.example.org/\r\n" % i
                     for i in range(10000)) + b"--b--\r\n"
    started = time.perf_counter()
    found = extract(_message(parts, b"multipart/mixed; boundary=b"))
    assert time.perf_counter() - started < 2.0
    assert found.parts == 200 and found.truncated
    deep = b""
    for i in range(5000):
        deep += b"Content-Type: multipart/mixed; boundary=\"d%d\"\r\n\r\n--d%d\r\n" % (i, i)
    started = time.perf_counter()
    found = extract(HEAD + deep + b"\r\nhttp://bottom.example.com/\r\n")
    assert time.perf_counter() - started < 2.0
    assert found.truncated and found.domains == ()


def test_random_bytes_never_raise():
    rng = random.Random(5782)
    alphabet = b"<>\"'=&#;%:/\\@.-_ \r\nhtpwsmailoHTPW0123456789xX\x00\xff\xc3\xa9"
    templates = [b"text/plain", b"text/html", b"multipart/mixed; boundary=z",
                 b"message/rfc822", b"text/html; charset=utf-16"]
    for _ in range(300):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        if rng.random() < 0.3:
            body = b"--z\r\n" + body + b"\r\n--z--"
        found = extract(_message(body, rng.choice(templates)))
        assert isinstance(found.domains, tuple)


# --------------------------------------------------------------------------
# bounded work in content parsing: charsets and multipart delimiters

from tests.unit.codecsteps import OverBudget, codec_steps  # noqa: E402


def _python_codec_names() -> list:
    import encodings.aliases
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names |= {"punycode", "idna", "utf-7", "x-klingon", "unicode_escape", "raw_unicode_escape",
              "undefined", "mbcs", "oem", "palmos", "charmap"}
    return sorted(names)


def _warm(name: str) -> None:
    """Import the codec's module before counting: its import is not decoding."""
    try:
        b"".decode(name)
    except (LookupError, ValueError, TypeError, UnicodeError):
        pass


@pytest.mark.parametrize("name", _python_codec_names())
def test_no_charset_name_makes_python_code_decode_the_part(name):
    """Every codec Python has, named as a part's charset: the part costs at
    most a few Python steps in the codec machinery, whatever its size (the
    allowed charsets decode in C; the rest are read as UTF-8)."""
    _warm(name)
    ctype = b"text/plain; charset=\"" + name.encode() + b"\""
    extract(_message(b"x", ctype))         # codec lookups, once per name, are not decoding
    body = b"-" + b"9" * 4000 + b" http://cs.example.org/ \xe9\x00+AGEA-"
    message = _message(body, ctype)
    found = []
    steps = codec_steps(lambda: found.append(extract(message)))
    assert steps <= 10, f"{name}: {steps} Python steps in the codec"
    assert found[0].parts == 1


def test_punycode_part_of_320k_is_never_given_to_the_punycode_codec(monkeypatch):
    """The 7-second case: the punycode codec is never called (it would raise here)."""
    import encodings.punycode
    called = []

    def refuse(text, errors):
        called.append(len(text))
        raise OverBudget("the punycode codec was called")

    monkeypatch.setattr(encodings.punycode, "punycode_decode", refuse)
    found = extract(_message(b"-" + b"9" * (320 << 10) + b" http://after.example.org/",
                             b"text/plain; charset=punycode"))
    assert called == []
    assert "unknown charset 'punycode', read as UTF-8" in found.notes[0]
    assert found.domains == ("example.org",)


@pytest.mark.parametrize("label, codec", [
    ("UTF-8", "utf-8"), ("utf8", "utf-8"), ("ISO-8859-1", "latin-1"), ("iso_8859-15", "iso8859-15"),
    ("Windows-1252", "cp1252"), ("KOI8-R", "koi8-r"), ("GB2312", "gbk"), ("Shift_JIS", "shift_jis"),
    ("ISO-2022-JP", "iso2022_jp"), ("ks_c_5601-1987", "cp949"), ("us-ascii", "ascii"),
    ("punycode", None), ("idna", None), ("rot13", None), ("x-unknown", None), ("", None)])
def test_the_charset_allow_list(label, codec):
    from mailwarden.urls import charset_codec
    assert charset_codec(label) == codec


def test_allowed_charsets_decode_what_they_name():
    from mailwarden.urls import CHARSETS
    text = "http://xn--bcher-kva.example/ caf\u00e9"
    for codec in set(CHARSETS.values()):
        try:
            data = text.encode(codec)
        except UnicodeEncodeError:
            data = "http://plain.example.org/".encode(codec)
        found = extract(_message(data, b"text/plain; charset=" + codec.encode()))
        assert found.notes == (), (codec, found.notes)
        assert found.domains in (("xn--bcher-kva.example",), ("example.org",)), codec


class _CountingBytes(bytes):
    """The message, counting the searches the MIME walk makes in it."""

    finds = 0

    def find(self, *args):
        type(self).finds += 1
        return super().find(*args)


def test_delimiters_past_max_parts_are_never_looked_for():
    """2.6 MB of ``--a`` lines: 520,000 delimiters, 100 MB when all were
    listed before max_parts applied.  Now the walk stops at the bound."""
    import tracemalloc
    body = b"--a\r\n" * 520_000
    message = _CountingBytes(_message(body, b"multipart/mixed; boundary=a"))
    _CountingBytes.finds = 0
    tracemalloc.start()
    try:
        found = extract(message, Limits(max_parts=200))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.parts == 200 and found.truncated
    assert "stopped at the limit of 200 MIME parts" in found.notes
    assert _CountingBytes.finds < 5 * 200 + 20, _CountingBytes.finds
    assert peak < 1 << 20, f"peak {peak} bytes"


def _reference_parts(data: bytes, start: int, end: int, boundary: bytes) -> tuple:
    """Every entity between delimiters, listed whole (the shape of the
    splitter before it streamed): the behaviour the streaming one keeps."""
    delim = b"--" + boundary
    starts = []
    pos = start
    if data.startswith(delim, start, end):
        starts.append(start)
        pos = start + len(delim)
    while True:
        i = data.find(b"\n" + delim, pos, end)
        if i < 0:
            break
        starts.append(i + 1)
        pos = i + 1 + len(delim)
    parts, closed = [], False
    for k, s in enumerate(starts):
        after = s + len(delim)
        if data.startswith(b"--", after, end):
            closed = True
            break
        line_end = data.find(b"\n", after, end)
        if line_end < 0:
            break
        e = starts[k + 1] - 1 if k + 1 < len(starts) else end
        if k + 1 < len(starts) and e > line_end and data[e - 1:e] == b"\r":
            e -= 1
        parts.append((line_end + 1, max(e, line_end + 1)))
    return parts, closed


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"--b", b"--b--", b"--bb", b"\r\n", b"\n", b"\r", b"x",
                                 b"Content-Type: text/plain", b"--", b"b"]), max_size=40),
       st.integers(0, 5))
def test_streaming_split_finds_the_same_parts(pieces, skip):
    from mailwarden.urls import _multipart_parts
    data = b"".join(pieces)
    start = min(skip, len(data))
    seen = {"closed": False, "done": False}
    got = list(_multipart_parts(data, start, len(data), b"b", seen))
    want, closed = _reference_parts(data, start, len(data), b"b")
    assert got == want
    assert seen["done"] and seen["closed"] == closed


# --------------------------------------------------------------------------
# extract_message: the milter's header fields and body, never joined, read
# as extract reads the message joined (Message.as_buffer, the wire form)

from mailwarden.mime import split_message  # noqa: E402
from mailwarden.model import Body, Message  # noqa: E402
from mailwarden.urls import HostCache, extract_message  # noqa: E402


def _joined(headers, body: bytes) -> bytearray:
    msg = Message()
    for name, value in headers:
        msg.add_header(name, value)
    msg.body = Body()
    msg.body.write(body)
    try:
        return msg.as_buffer()
    finally:
        msg.close()


@pytest.mark.parametrize("path", MESSAGES, ids=lambda p: p.stem)
def test_fields_and_body_read_as_the_joined_message(path):
    headers, body, _ = split_message(path.read_bytes())
    want = extract(_joined(headers, body))
    assert extract_message(headers, body) == want
    cache = HostCache(size=4)            # smaller than most messages' hosts: entries go
    assert extract_message(headers, body, cache=cache) == want
    assert extract_message(headers, body, cache=cache) == want
    assert len(cache) <= 4


_NAMES = ["Content-Type", "content-transfer-encoding", "CONTENT-TYPE", "Content-Type ",
          " Content-Type", "\tX", "\x0bContent-Type", "X:Content-Type", "", "Subject",
          "Content-Disposition", "X-Content-Type", "Content\r\nType", "Content-T\udce9pe"]
_VALUES = [b" text/html", b" multipart/mixed; boundary=b", b" base64", b" quoted-printable",
           b"; charset=utf-8", b" text/plain", b"\r\n ", b"\r\n\t", b"\n ", b"\n", b"\r",
           b"\r\n", b"\r\n\r\n", b" ", b"x", b" message/rfc822", b"\xe9"]
_BODY = [b"--b\r\n", b"--b--\r\n", b"\r\n", b"\n", b"Content-Type: text/html\r\n",
         b"Content-Transfer-Encoding: base64\r\n", b"http://a.example/ ",
         b"<a href='http://b.example/'>c.example</a>", b"aHR0cDovL2QuZXhhbXBsZS8g",
         b"http=3A//e.example/=\r\n", b"www.f.example ", b"10.0.0.1 ", b"x"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NAMES),
                          st.lists(st.sampled_from(_VALUES), max_size=5).map(b"".join)),
                max_size=6),
       st.lists(st.sampled_from(_BODY), max_size=25).map(b"".join))
def test_generated_fields_and_bodies_read_as_the_joined_message(headers, body):
    assert extract_message(headers, body) == extract(_joined(headers, body))
    assert extract_message(headers, body, cache=HostCache(size=2)) == extract(
        _joined(headers, body))
