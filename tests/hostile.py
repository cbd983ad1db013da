"""A generated corpus of malformed messages (deterministic, nothing on disk).

``corpus()`` returns :class:`Hostile` items: broken and missing MIME
boundaries, multiparts nested 100 deep, 10,000 parts, a 1 MB header, NUL
bytes, invalid UTF-8, invalid base64 and quoted-printable, header lines
without a colon, CR-only and LF-only line ends, a 30 MB message, 1,000
recipients, charsets whose codecs are slow or no text encodings (punycode),
2.6 MB of multipart delimiter lines, messages that multiply DNS lookups
(signatures of many domains, thousands of URL domains), From fields shaped
to hide their author (``from-dodge-*``), and seeded mutations of well-formed
messages.  ``big=False``
leaves out the few multi-megabyte ones (for a quick run).

``python -m tests.hostile DIR`` writes the corpus as ``DIR/NAME.eml`` files
(recipient counts in ``DIR/rcpts.txt``) for ``mailwarden scan`` by hand.
"""

from __future__ import annotations

import base64
import random
import sys
from dataclasses import dataclass
from pathlib import Path

SEED = 20240101


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    rcpts: int = 1
    big: bool = False


HEAD = (b"From: Alice <alice@sender.example>\r\nTo: bob@rcpt.example\r\n"
        b"Subject: hostile\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        b"Message-ID: <hostile@sender.example>\r\n")


def _mp(boundary: bytes, parts, close: bool = True, ctype: bytes = b"multipart/mixed") -> bytes:
    out = [HEAD, b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"; boundary=\"" +
           boundary + b"\"\r\n\r\npreamble\r\n"]
    for part in parts:
        out.append(b"--" + boundary + b"\r\n" + part + b"\r\n")
    if close:
        out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


TEXT_PART = b"Content-Type: text/plain\r\n\r\nsee http://www.example.com/x\r\n"
HTML_PART = (b"Content-Type: text/html\r\n\r\n"
             b"<a href=\"http://phish.example.net/login\">bank</a>\r\n")


def _nested(depth: int) -> bytes:
    inner = TEXT_PART
    for level in range(depth):
        b = b"n%d" % level
        inner = (b"Content-Type: multipart/mixed; boundary=\"" + b + b"\"\r\n\r\n--" + b +
                 b"\r\n" + inner + b"\r\n--" + b + b"--\r\n")
    return HEAD + b"MIME-Version: 1.0\r\n" + inner


def _boundaries() -> list:
    out = [
        ("boundary-never-used", HEAD + b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
                                       b"no parts at all http://a.example.org/\r\n"),
        ("boundary-missing-param", HEAD + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n"
                                          + TEXT_PART + b"--x--\r\n"),
        ("boundary-empty", HEAD + b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n"
                                  + TEXT_PART + b"----\r\n"),
        ("boundary-no-close", _mp(b"open", [TEXT_PART, HTML_PART], close=False)),
        ("boundary-mismatch", HEAD + b"Content-Type: multipart/mixed; boundary=aaa\r\n\r\n"
                                     b"--bbb\r\n" + TEXT_PART + b"--bbb--\r\n"),
        ("boundary-very-long", _mp(b"b" * 5000, [TEXT_PART])),
        ("boundary-prefix-of-other", _mp(b"ab", [TEXT_PART, b"--abc\r\n" + HTML_PART])),
        ("boundary-unterminated-quote", HEAD + b"Content-Type: multipart/mixed; boundary=\"q\r\n"
                                               b"\r\n--q\r\n" + TEXT_PART),
        ("boundary-in-header-only", HEAD + b"Content-Type: multipart/alternative; "
                                           b"boundary=x\r\n\r\n"),
        ("multipart-no-body", HEAD + b"Content-Type: multipart/mixed; boundary=x\r\n"),
        ("part-without-headers", _mp(b"p", [b"\r\njust text http://c.example.com/"])),
        ("part-headers-only", _mp(b"p", [b"Content-Type: text/plain"])),
        ("message-rfc822-broken", _mp(b"m", [b"Content-Type: message/rfc822\r\n\r\n"
                                             b"From: x\r\nContent-Type: multipart/mixed; "
                                             b"boundary=inner\r\n\r\n--inner\r\n"])),
    ]
    for i, bad in enumerate((b"\x00", b"\xff\xfe", b" ", b"--", b"\r", b"=?utf-8?q?x?=")):
        out.append((f"boundary-odd-{i}", _mp(b"a" + bad + b"z", [TEXT_PART, HTML_PART])))
    return out


def _encodings() -> list:
    good = base64.b64encode(b"<a href='http://b64.example.org/'>x</a>" * 20)
    out = []
    variants = {
        "b64-bad-chars": good[:40] + b"!!**%%$$" + good[40:],
        "b64-no-padding": good.rstrip(b"=")[:-1],
        "b64-truncated": good[:-7],
        "b64-only-padding": b"====",
        "b64-whitespace": b" ".join(good[i:i + 3] for i in range(0, len(good), 3)),
        "b64-binary": bytes(range(256)),
        "b64-huge-line": good * 400,
    }
    for name, payload in variants.items():
        out.append((name, _mp(b"e", [b"Content-Type: text/html\r\n"
                                     b"Content-Transfer-Encoding: base64\r\n\r\n" + payload])))
    qp = {
        "qp-bad-escapes": b"=ZZ=G1=\r\nhttp://qp.exam=\r\nple.org/ =",
        "qp-soft-break-end": b"abc=",
        "qp-8bit": b"caf\xe9 =E9=\xff",
    }
    for name, payload in qp.items():
        out.append((name, _mp(b"q", [b"Content-Type: text/plain\r\n"
                                     b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                                     + payload])))
    out.append(("cte-unknown", _mp(b"u", [b"Content-Transfer-Encoding: x-rot13\r\n\r\nuggc://"])))
    out.append(("charset-unknown", _mp(b"c", [b"Content-Type: text/plain; charset=x-klingon\r\n"
                                              b"\r\nhttp://k.example.org/"])))
    return out


def _text_faults() -> list:
    out = [
        ("nul-in-body", HEAD + b"\r\nhello\x00world http://nul.exa\x00mple.org/\r\n"),
        ("nul-in-header", HEAD.replace(b"Subject: hostile", b"Subject: a\x00b") + b"\r\nx\r\n"),
        ("nul-header-name", b"X-N\x00ul: 1\r\n" + HEAD + b"\r\nx\r\n"),
        ("nul-only", b"\x00" * 4096),
        ("utf8-invalid-body", HEAD + b"\r\n\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\xbc "
                                     b"http://\xff\xfe.example.org/\r\n"),
        ("utf8-invalid-subject", HEAD.replace(b"hostile", b"\xfe\xff\xc0\xaf") + b"\r\nx\r\n"),
        ("utf8-invalid-from", b"From: \xff\xfe <a@\xc0\xaf.example>\r\nSubject: x\r\n\r\nx\r\n"),
        ("encoded-word-bad", HEAD.replace(b"hostile", b"=?utf-8?b?!!!?= =?x?q?=ZZ?= =?utf-8?")
         + b"\r\nx\r\n"),
        ("overlong-utf8", HEAD + b"\r\n\xc0\xae\xc0\xae/\xe0\x80\xaf\r\n"),
        ("surrogates-utf8", HEAD + b"\r\n\xed\xa0\x80\xed\xbf\xbf\r\n"),
        ("no-colon-first", b"this is not a header\r\n" + HEAD + b"\r\nbody\r\n"),
        ("no-colon-middle", HEAD + b"not a header line\r\nX-After: 1\r\n\r\nbody\r\n"),
        ("no-colon-only", b"just some words\r\nand more\r\n"),
        ("colon-first", b": no name\r\n" + HEAD + b"\r\nx\r\n"),
        ("space-before-colon", b"From : a@b.example\r\nSubject\t: x\r\n\r\nx\r\n"),
        ("continuation-first", b"\tcontinued\r\n" + HEAD + b"\r\nx\r\n"),
        ("cr-only", (HEAD + b"\r\nline one\r\nhttp://cr.example.org/\r\n").replace(b"\r\n", b"\r")),
        ("lf-only", (HEAD + b"\r\nline one\r\nhttp://lf.example.org/\r\n").replace(b"\r\n", b"\n")),
        ("mixed-line-ends", b"From: a@b.example\rTo: c@d.example\nSubject: x\r\n\n\rbody\r\r\n"),
        ("no-body-separator", HEAD),
        ("empty", b""),
        ("only-blank-line", b"\r\n"),
        ("dots", HEAD + b"\r\n.\r\n..\r\n.x\r\n"),
        ("long-line-no-break", HEAD + b"\r\n" + b"x" * 2_000_000),
        ("header-no-value", b"From:\r\nTo:\r\nSubject:\r\nContent-Type:\r\n\r\nx\r\n"),
        ("content-type-garbage", HEAD + b"Content-Type: ;;;==\"\"\"; boundary\r\n\r\nx\r\n"),
        ("many-content-types", HEAD + b"Content-Type: multipart/mixed; boundary=a\r\n" * 50
         + b"\r\n--a\r\n" + TEXT_PART + b"--a--\r\n"),
        ("dkim-garbage", b"DKIM-Signature: v=1; a=rsa-sha256; d=\x00; s=; b=!!; bh=\r\n"
                         b"DKIM-Signature: " + b"x" * 70000 + b"\r\n" + HEAD + b"\r\nx\r\n"),
        # DKIM tags that once made work or errors: names that cannot exist
        # in the DNS, h= naming thousands of fields, encoded and listed tags
        ("dkim-impossible-names", b"".join(
            b"DKIM-Signature: v=1; a=rsa-sha256; d=" + d + b"; s=" + s
            + b"; h=from; bh=AAAA; b=AAAA\r\n"
            for s, d in [(b"a" * 70, b"sender.example"), (b"a..b", b"sender.example"),
                         (b"sel", b"sender.example."), (b"x\\y", b"sender.example"),
                         (b".".join([b"a" * 63] * 4), b"sender.example"),
                         (b"sel", "b\u00fccher.example".encode()), (b"sel", b"\xff.example")])
         + HEAD + b"\r\nx\r\n"),
        ("dkim-h-thousands", b"".join(
            b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=sel; h="
            + b":".join(b"x-%d" % i for i in range(4000)) + b":from; bh=AAAA; b=AAAA\r\n"
            for _ in range(10)) + b"".join(b"X-%d: v\r\n" % i for i in range(4000))
         + HEAD + b"\r\nx\r\n"),
        ("dkim-tag-encodings", b"DKIM-Signature: v=1; a=ed25519-sha256; d=sender.example;"
                               b" s=sel; q=dns/txt:x:" + b":" * 5000 + b"; i=a=4=ZZ=40=; "
                               b"l=99999999999999999999; h=from; bh=AAAA; b=AAAA\r\n"
                               b"DKIM-Signature: i=sender.example; d=sender.example; v=1;"
                               b" a=rsa-sha1; s=s; h=from; bh=AAAA; b=AAAA\r\n"
                               + HEAD + b"\r\nx\r\n"),
        ("ar-garbage", b"Authentication-Results: ((((((((\r\n"
                       b"Authentication-Results: \"unterminated\r\n" + HEAD + b"\r\nx\r\n"),
        ("from-many", b"From: " + b", ".join(b"u%d@d%d.example" % (i, i) for i in range(2000))
         + b"\r\nSubject: x\r\n\r\nx\r\n"),
        ("from-nested-comments", b"From: " + b"(" * 5000 + b"a@b.example\r\n\r\nx\r\n"),
        ("from-unbalanced-angles", b"From: <<<<a@b.example>\r\n\r\nx\r\n"),
        ("url-pathological", HEAD + b"\r\n" + b"http://" + b"a." * 60000 + b"example\r\n"
         + b"hxxp[:]//" * 5000 + b"\r\n" + b"<a href=" * 10000 + b"\r\n"),
        ("url-idn-garbage", HEAD + b"\r\nhttp://xn--zz.xn--.xn--99999999/ http://[::1/ "
                                   b"http://%ff%fe.example.org/ http://a@@@b/\r\n"),
        ("html-unclosed", HEAD + b"Content-Type: text/html\r\n\r\n" + b"<a href='" * 1000
         + b"<!--" * 1000 + b"<script>" * 1000),
    ]
    return out


def _from_dodges() -> list:
    """From fields shaped so that a parser misses or chokes on the author
    alice@sender.example (sender.example publishes p=reject): several
    fields, lists, groups, nesting that makes the email package recurse
    (comments, groups, a thousand ":"), encoded words, garbage."""
    rest = b"To: bob@rcpt.example\r\nSubject: invoice\r\n\r\npay now\r\n"
    shapes = {
        "two-fields-same": [b"alice@sender.example", b"alice@sender.example"],
        "two-fields-evil-first": [b"x@evil.example", b"alice@sender.example"],
        "list-victim-first": [b"<alice@sender.example>, x@evil.example"],
        "list-evil-first": [b"x@evil.example, Alice <alice@sender.example>"],
        "group": [b"Billing: alice@sender.example, x@evil.example;"],
        "nested-groups": [b"a: " * 40 + b"alice@sender.example" + b";" * 40],
        "colons-1000": [b"alice@sender.example" + b":" * 1000],
        "comments-65": [b"alice@sender.example " + b"(" * 65 + b")" * 65],
        "comments-unclosed": [b"alice@sender.example " + b"(" * 3000],
        "angles-deep": [b"<" * 500 + b"alice@sender.example" + b">" * 500],
        "quotes-deep": [b'"' * 301 + b"alice@sender.example"],
        "brackets-deep": [b"alice@sender.example " + b"[" * 500],
        "quoted-at-local": [b'"x@evil.example"@sender.example'],
        "encoded-word-only": [b"=?utf-8?q?alice=40sender.example?="],
        "encoded-word-base64": [b"=?utf-8?b?" + base64.b64encode(b"alice@sender.example")
                                + b"?="],
        "encoded-word-latin1-split": [b"=?iso-8859-1?q?alice?= =?iso-8859-1?q?=40sender.ex?="
                                      b"=?iso-8859-1?q?ample?="],
        "nul-after-domain": [b"alice@sender.example\x00, x@evil.example"],
        "route": [b"<@evil.example:alice@sender.example>"],
        "utf8-garbage": [b"\xff\xfe <alice@sender.example> \xc0\xaf:::"],
    }
    return [(f"from-dodge-{name}", b"".join(b"From: " + v + b"\r\n" for v in values) + rest)
            for name, values in shapes.items()]


def _sizes(big: bool) -> list:
    out = [
        ("nested-100", _nested(100), 1, False),
        ("nested-1000", _nested(1000), 1, False),
        ("parts-10000", _mp(b"p", [b"Content-Type: text/plain\r\n\r\nhttp://p%d.example.org/"
                                   % (i % 50) for i in range(10000)]), 1, False),
        ("header-1mb-one-field", HEAD + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\nx\r\n", 1, False),
        ("header-1mb-folded", HEAD + b"X-Big: " + b"word\r\n\t" * (1 << 18) + b"end\r\n\r\nx\r\n",
         1, False),
        ("header-1mb-many-fields", HEAD + b"".join(b"X-H%d: value\r\n" % i for i in range(60000))
         + b"\r\nx\r\n", 1, False),
        ("recipients-1000", HEAD + b"\r\nto many\r\n", 1000, False),
        # a pure-Python codec that is quadratic in its input (320 KB: 7 s)
        ("charset-punycode-320k", HEAD + b"Content-Type: text/plain; charset=punycode\r\n\r\n-"
         + b"9" * (320 << 10) + b" http://test.surbl.org/\r\n", 1, False),
        ("charset-python-codecs", _mp(b"cs", [b"Content-Type: text/plain; charset=" + name
                                              + b"\r\n\r\n" + b"9" * 20000 + b" http://test.surbl.org/"
                                              for name in (b"idna", b"punycode", b"uu", b"rot13",
                                                           b"zlib", b"base64", b"hex", b"utf-7",
                                                           b"x-klingon")]), 1, False),
        # 2.6 MB of delimiter lines: 520,000 parts if all of them were listed
        ("delimiters-2.6mb", HEAD + b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n"
         + TEXT_PART.replace(b"www.example.com", b"test.surbl.org") + b"--a\r\n" * 520_000,
         1, False),
    ]
    if big:
        line = b"filler text http://big.example.org/path and more words to fill\r\n"
        body = line * ((30 << 20) // len(line) + 1)
        out.append(("message-30mb", HEAD + b"\r\n" + body, 1, True))
        b64 = base64.encodebytes(random.Random(SEED).randbytes(8 << 20)).replace(b"\n", b"\r\n")
        out.append(("attachment-11mb-base64", _mp(b"att", [TEXT_PART, b"Content-Type: "
                    b"application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64]),
                    1, True))
    return out


def _mutations(count: int) -> list:
    """Seeded random damage to well-formed messages: flips, cuts, splices."""
    rng = random.Random(SEED)
    seeds = [
        _mp(b"s1", [TEXT_PART, HTML_PART]),
        _mp(b"s2", [b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                    + base64.encodebytes(b"<a href=http://m.example.org/>x</a>" * 30)]),
        _nested(5),
        HEAD + b"\r\nplain http://plain.example.com/ text\r\n",
    ]
    tokens = [b"\r\n", b"\n", b"\r", b"\x00", b"--s1", b"--s1--", b":", b"=", b"\xff", b"\t",
              b"Content-Type: multipart/mixed; boundary=s1\r\n", b"=?utf-8?b?", b"http://",
              b"<a href=", b"\r\n\r\n", b"=\r\n", b"(", b")", b"\"", b"<", b">"]
    out = []
    for i in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 12)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = rng.choice(tokens) * rng.randint(1, 50)
            elif op == 2:
                del data[pos:pos + rng.randint(1, 200)]
            else:
                start = rng.randrange(len(data) + 1)
                data[pos:pos] = data[start:start + rng.randint(1, 300)]
        out.append((f"mutated-{i:03d}", bytes(data)))
    return out


# Text a sender controls that reaches our Authentication-Results, a reply,
# a log line or a terminal: SPF exp= explanations, DKIM tag values, PTR and
# HELO names, DNS TXT.  Each tries to end a value or a comment early, to
# write results of its own, to break the header or the line, or to reach
# the terminal.
FORGED_RESULTS = ('a" (@); dkim=pass header.d=paypal.com; '
                  'dmarc=pass header.from=paypal.com')
HOSTILE_TEXTS = (
    FORGED_RESULTS,
    "x@y; dkim=pass header.d=paypal.com",
    "pass) (; spf=pass smtp.mailfrom=ceo@bank.example",
    '\\"; dmarc=pass',
    "a\r\nAuthentication-Results: mx.example.org; dkim=pass",
    "(((((((((( )",
    "reason=pass header.from=bank.example",
    "d=bank.example; s=sel; b=abc/def+=",
    "caf\u00e9 \u043f\u0440\u0438\u0432\u0435\u0442 \udcff",
    "\x1b[2J\x1b]0;owned\x07\x1b[31mred",
    "100% of %s %n",
    "",
    " ",
    "=",
    "@",
    '"',
)


def _lookup_floods() -> list:
    """Messages that multiply lookups: many signatures of many domains and
    selectors (each a key lookup), many URL domains; the lookup budget and
    deadline bound them, and what decides DMARC keeps its reserve."""
    sigs = b"".join(
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=d%d.flood.example; s=%s;"
        b" h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n"
        % (i, b"s" * (1 + i % 63)) for i in range(50))
    aligned = b"".join(
        b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.example; s=sel%d; h=from;"
        b" bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=AAAA\r\n" % i for i in range(20))
    urls = b" ".join(b"http://www.u%d.flood%d.example.com/" % (i, i % 7) for i in range(3000))
    return [
        ("lookup-flood-signatures", sigs + HEAD + b"\r\nhi\r\n"),
        ("lookup-flood-aligned-signatures", aligned + HEAD + b"\r\nhi\r\n"),
        ("lookup-flood-urls", HEAD + b"\r\n" + urls + b"\r\n"),
    ]


def corpus(big: bool = True) -> list:
    items = [Hostile(n, d) for n, d in _boundaries() + _encodings() + _text_faults()
             + _from_dodges()]
    items += [Hostile(n, d) for n, d in _lookup_floods()]
    items += [Hostile(n, d, r, b) for n, d, r, b in _sizes(big)]
    items += [Hostile(n, d) for n, d in _mutations(max(0, 210 - len(items)))]
    return items


def rcpts_for(item: Hostile) -> list:
    return [f"user{i}@rcpt.example" for i in range(item.rcpts)]


def main(argv) -> int:
    target = Path(argv[1])
    target.mkdir(parents=True, exist_ok=True)
    counts = []
    for item in corpus():
        (target / f"{item.name}.eml").write_bytes(item.data)
        counts.append(f"{item.name} {item.rcpts}")
    (target / "rcpts.txt").write_text("\n".join(counts) + "\n", encoding="ascii")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))


# every classic relay-test trick, with a non-local final destination
RELAY_TRICKS = [
    "user%other.example@outbound.example",
    "user@other.example@outbound.example",
    '"user@other.example"@outbound.example',
    "@outbound.example:user@other.example",
    "other.example!user@outbound.example",
    "user@other.example.",
    "USER@OTHER.Example",
    "user@[203.0.113.5]",
    "user@[IPv6:2001:db8::5]",
    '"user%other.example"@outbound.example',
    "@outbound.example,@other.example:user@outbound.example",
    "user%other.example%outbound.example@outbound.example",
    "a!other.example!user@outbound.example",
    "user\\@other.example@outbound.example",
]
