"""URLs in a message: every MIME part walked, hosts and registered domains out.

No DNS here and no engine import: the same code serves the ``uribl`` check,
the tests and anyone who wants to know what a message links to.

What is read:

* every MIME entity, nested multiparts and attached ``message/rfc822``
  included, with its Content-Transfer-Encoding (quoted-printable, base64)
  undone and its charset decoded; a part that cannot be decoded is skipped
  with a note, never an exception.  Only the charsets of :data:`CHARSETS`
  (the usual mail charsets, all decoded by C codecs in linear time) are
  decoded as named; a part in any other (``punycode``, whose Python codec
  is quadratic, ``rot13``, an unknown name) is read as UTF-8 with
  replacement characters, and a note says so;
* ``text/plain`` (and other ``text/*``): URLs with a scheme (http, https,
  ftp; ``mailto:`` gives the host after ``@``), ``www.`` hosts without a
  scheme, bare dotted IPv4 hosts;
* ``text/html``: ``href``, ``src``, ``action`` and the other URL-bearing
  attributes, ``url(...)`` in ``style``, the text of ``<a>`` when it looks
  like a host name, and every URL in the text (entities decoded first).

Hosts are normalised the way a browser (the WHATWG URL standard) reads them,
because that is where the click goes: userinfo before ``@`` dropped,
``%``-escapes decoded, case folded, trailing dots removed, numeric / octal /
hex IPv4 forms turned into dotted quads, Unicode names turned into punycode
(UTS 46).

The registered domain of a host comes from :mod:`mailwarden.orgdomain`
(the Public Suffix List bundled with tldextract, offline, private section
included: URL lists list customer names under hosting suffixes such as
``x.blogspot.com`` and ``y.github.io``; a host under an unknown top-level
domain has none; ``test``, ``example`` and ``invalid`` count as suffixes).

Everything is bounded (:class:`Limits`): MIME entities, nesting depth,
characters scanned, distinct URLs, distinct domains.  A multipart body is
split as it is walked, one delimiter at a time, so the delimiters after
``max_parts`` are never even looked for.  The scanners use
``str.find`` and regular expressions without nested quantifiers, and every
position of the input is examined a bounded number of times, so the time is
linear in the input whatever it holds.

:func:`extract` reads a message as one buffer; :func:`extract_message`
reads the milter's header fields and body bytes as they are, with the same
answer.  A :class:`HostCache` shared between extractions spares the host
normalisation of hosts seen before.
"""

from __future__ import annotations

import binascii
import functools
import html
import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

from .address import AddressProblem, idna_to_ascii

from .orgdomain import is_domain, registered_domain   # the one Public Suffix List reader

__all__ = ["Limits", "Extraction", "HostCache", "extract", "extract_message", "host_of",
           "registered_domain", "normalize_host"]


@dataclass(frozen=True)
class Limits:
    max_parts: int = 200            # MIME entities visited
    max_depth: int = 10             # multipart / message nesting
    max_bytes: int = 2 * 1024 * 1024   # decoded text scanned, over all parts
    max_urls: int = 1000            # distinct URLs kept
    max_domains: int = 100          # distinct registered domains (and IPs) kept


@dataclass(frozen=True)
class Extraction:
    urls: tuple = ()          # distinct URLs as found (scheme, host, a bounded path)
    hosts: tuple = ()         # distinct normalised host names, in order of first sight
    domains: tuple = ()       # registered domains, sorted
    ips: tuple = ()           # IP hosts (dotted quads, IPv6 text), sorted
    ordered: tuple = ()       # domains and IPs in order of first sight
    notes: tuple = ()         # skipped or broken parts, bounds hit
    truncated: bool = False   # a bound was hit: there may be more
    parts: int = 0
    scanned: int = 0          # characters of text scanned


# --------------------------------------------------------------------------
# host normalisation (WHATWG URL host parsing, the parts that matter here)

_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_DEC = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_OCT = re.compile(r"[0-7]+")


def _ipv4_number(part: str) -> Optional[int]:
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if not _HEX.fullmatch(digits):
            return None
        return int(digits, 16) if digits else 0
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8) if _OCT.fullmatch(part[1:]) else None
    return int(part) if _DEC.fullmatch(part) else None


def _parse_ipv4(host: str):
    """A dotted quad for the numeric forms browsers accept, '' when the host
    is not numeric, None when it looks numeric but is invalid."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if not last or _ipv4_number(last) is None:
        return ""                    # does not end in a number: a domain name
    if len(parts) > 4:
        return None
    numbers = []
    for part in parts:
        if not part or len(part) > 40:
            return None
        value = _ipv4_number(part)
        if value is None:
            return None
        numbers.append(value)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        return None
    value = numbers[-1]
    for i, n in enumerate(numbers[:-1]):
        value += n << (8 * (3 - i))
    return str(ipaddress.IPv4Address(value))


def _pct_decode(text: str) -> str:
    if "%" not in text:
        return text
    raw = _PCT.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:                             # escapes are UTF-8 bytes
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def normalize_host(host: str) -> tuple:
    """(kind, value): ('ip', '192.0.2.1'), ('name', 'xn--bcher-kva.de') or
    ('', '') for a host that is not usable."""
    host = _pct_decode(host).strip()
    if not host or len(host) > 1000:
        return "", ""
    if host[0] == "[":
        if host[-1] != "]":
            return "", ""
        try:
            return "ip", str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return "", ""
    if not host.isascii():
        try:
            host = idna_to_ascii(host)
        except AddressProblem:
            # UTS #46 is the rule (address.idna_to_ascii); a host it refuses
            # that IDNA 2003 maps (a symbol, an emoji) is still looked up:
            # some clients resolve such names, and a link is never trusted
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                return "", ""
    host = host.lower().rstrip(".")
    if not host:
        return "", ""
    ip = _parse_ipv4(host)
    if ip is None:
        return "", ""
    if ip:
        return "ip", ip
    if not is_domain(host, underscore=True):
        return "", ""
    return "name", host


def _host_info(host: str) -> tuple:
    """(kind, normalised host, domain or IP queried) of a host as found."""
    kind, value = normalize_host(host)
    if not kind:
        return "", value, ""
    return kind, value, value if kind == "ip" else registered_domain(value)


class HostCache:
    """What :func:`_host_info` says of a host, for the hosts seen lately.

    Hosts repeat across messages (a sender's own links, trackers); what a
    host normalises to depends on nothing but its text and the bundled
    Public Suffix List, so an entry never goes stale.  Bounded (least
    recently used out past ``size``; hosts longer than a DNS name are not
    kept) and thread-safe: ``functools.lru_cache``, one per instance.
    """

    MAX_HOST = 255

    def __init__(self, size: int = 2048):
        self.size = size
        self._cached = functools.lru_cache(maxsize=size)(_host_info)

    def __len__(self) -> int:
        return self._cached.cache_info().currsize

    def info(self, host: str) -> tuple:
        if len(host) > self.MAX_HOST:
            return _host_info(host)
        return self._cached(host)


def host_of(authority: str) -> str:
    """The host part of an authority: userinfo and port removed."""
    at = authority.rfind("@")
    if at >= 0:
        authority = authority[at + 1:]
    if authority.startswith("["):
        end = authority.find("]")
        return authority[:end + 1] if end > 0 else ""
    colon = authority.find(":")
    return authority[:colon] if colon >= 0 else authority


# --------------------------------------------------------------------------
# finding URLs in text

# No nested quantifiers anywhere: each pattern starts with a literal (so the
# regex engine skips ahead at C speed) or is a bounded run of one character
# class, so a failed match costs at most its bound.
_AUTH = r"[^\s/?#\\<>\"'`(){}|^,;\x00-\x1f\x7f]{1,512}"
_HTTP = re.compile(r"https?:[/\\]{1,3}(" + _AUTH + ")")
_FTP = re.compile(r"ftps?:[/\\]{1,3}(" + _AUTH + ")")
_MAILTO = re.compile(r"mailto:(" + _AUTH + ")")
_WWW = re.compile(r"www[0-9]{0,3}\.[^\s/?#\\<>\"'`(){}|^,;:@\[\]\x00-\x1f\x7f]{0,300}")
_DOT_DIGIT = re.compile(r"\.(?=[0-9])")
_DIGITS_BACK = re.compile(r"[0-9]{1,3}$")
_DIGIT_RUN = re.compile(r"[0-9.]*")
_QUAD = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.?")
# what may stand in an authority: everything but delimiters browsers stop at
_AUTHORITY = re.compile(_AUTH)
_PATH = re.compile(r"[^\s<>\"'`\x00-\x1f\x7f]{0,120}")
_TRAILING = ".,;:!?)]}>'\""
_SCHEMES = ("https", "http", "ftps", "ftp")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+.-")
_IN_URL = frozenset("/\\@:")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class _Collector:
    """The bounded sets one extraction fills."""

    def __init__(self, limits: Limits, cache: Optional[HostCache] = None):
        self.limits = limits
        self.info = cache.info if cache is not None else _host_info
        self.urls: dict = {}
        self.hosts: dict = {}
        self.targets: dict = {}     # domain or IP -> kind
        self.notes: list = []
        self.truncated = False
        self.full = False

    def note(self, text: str) -> None:
        if len(self.notes) < 50:
            self.notes.append(text)

    def bound(self, what: str) -> None:
        if not self.truncated:
            self.note(f"stopped at the limit of {what}")
        self.truncated = True

    def add(self, url: str, host: str) -> None:
        if self.full:
            return
        if url not in self.urls:
            if len(self.urls) >= self.limits.max_urls:
                self.bound(f"{self.limits.max_urls} URLs")
                self.full = True
                return
            self.urls[url] = None
        if host in self.hosts:
            return
        kind, value, target = self.info(host)
        self.hosts[host] = value
        if not target or target in self.targets:
            return
        if len(self.targets) >= self.limits.max_domains:
            self.bound(f"{self.limits.max_domains} domains")
            self.full = True
            return
        self.targets[target] = kind


def _trim(host: str) -> str:
    """Sentence punctuation after a host is not part of it."""
    if host.startswith("["):
        return host
    return host.rstrip(_TRAILING)


def _lower(text: str) -> str:
    """Lower case with every offset kept (``str.lower`` may change lengths)."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _starts_word(low: str, i: int) -> bool:
    return i == 0 or low[i - 1] not in _WORD


def scan_text(text: str, out: _Collector) -> None:
    """URLs in plain text: schemes, ``mailto:``, ``www.`` hosts, dotted quads.

    Each kind has its own pass, found by a literal the regex engine looks
    for at C speed; URLs with a scheme go first, so that their domains lead
    the order of first sight.
    """
    low = _lower(text)
    n = len(text)
    seen: set = set()
    # scheme://authority.  Matches do not overlap, and the next search starts
    # right after the authority: a URL inside a path (a redirector's target)
    # is found too.  The scheme is matched on the lower-cased copy, whose
    # offsets are those of the text.
    for pattern in (_HTTP, _FTP):
        for m in pattern.finditer(low):
            if out.full:
                return
            authority = text[m.start(1):m.end(1)]
            if authority in seen or not _starts_word(low, m.start()):
                continue
            seen.add(authority)
            host = _trim(host_of(authority))
            if host:
                scheme = low[m.start():low.index(":", m.start())]
                path = _PATH.match(text, m.end()).group()
                out.add(f"{scheme}://{authority}{path}".rstrip(_TRAILING), host)
    for m in _MAILTO.finditer(low):
        if out.full:
            return
        address = _trim(text[m.start(1):m.end(1)])
        if "@" in address and address not in seen and _starts_word(low, m.start()):
            seen.add(address)
            out.add("mailto:" + address, _trim(address[address.rfind("@") + 1:]))
    # www. hosts without a scheme; each match runs over the whole host, so
    # "www" inside a host is not looked at again
    for m in _WWW.finditer(low):
        if out.full:
            return
        host = _trim(text[m.start():m.end()])
        at = m.start()
        if at and low[at - 1] in _IN_URL:
            continue                 # in a URL's userinfo or path: the scheme pass read it
        if host not in seen and _starts_word(low, at):
            seen.add(host)
            out.add(host.lower(), host)
    pos = 0
    # dotted quads standing alone (a version number 1.2.3.4.5 is not one)
    pos = 0
    while pos < n and not out.full:
        m = _DOT_DIGIT.search(text, pos)
        if m is None:
            break
        back = _DIGITS_BACK.search(text, max(0, m.start() - 3), m.start())
        start = back.start() if back else m.start()
        run_end = _DIGIT_RUN.match(text, start).end()
        pos = max(run_end, m.end())
        if back is None or not _starts_word(low, start) or (start and text[start - 1] == "."):
            continue
        q = _QUAD.fullmatch(text, start, run_end)
        if q is None or (run_end < n and low[run_end] in _WORD and low[run_end] != "."):
            continue
        quad = q.group().rstrip(".")
        if quad not in seen:
            seen.add(quad)
            out.add(quad, quad)


def scan_url(value: str, out: _Collector) -> None:
    """One attribute value meant as a URL (``href``, ``src``, ...)."""
    value = "".join(value.split())   # browsers drop tabs and newlines in URLs
    if value[:2] in ("//", "\\\\", "/\\", "\\/"):
        a = _AUTHORITY.match(value, 2)
        if a is not None:
            host = host_of(a.group())
            if host:
                out.add("//" + a.group(), host)
        return
    low = value[:12].lower()
    if low.startswith(("http:", "https:", "ftp:", "ftps:", "mailto:")) or low.startswith("www"):
        scan_text(value, out)
        return
    # javascript:, relative links and the like: URLs may still hide inside
    scan_text(value, out)


# --------------------------------------------------------------------------
# HTML

_URL_ATTRS = frozenset({"href", "src", "action", "formaction", "background", "poster",
                        "data", "cite", "longdesc", "lowsrc", "dynsrc", "codebase",
                        "manifest", "icon", "ping", "xlink:href"})
_TEXT_ATTRS = frozenset({"content", "srcset", "style", "onclick", "onload", "onmouseover"})
_TAG_NAME = re.compile(r"/?([A-Za-z][A-Za-z0-9:-]{0,30})")
_ATTR = re.compile(r"""([^\s"'<>/=]{1,100})(?:\s{0,100}=\s{0,100}(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""")
_CSS_URL = re.compile(r"(?i)url\(\s{0,100}[\"']?([^\"')\s]{1,2048})")
_RAW_TEXT = frozenset({"style", "script", "textarea", "title", "xmp"})


def scan_html(text: str, out: _Collector) -> None:
    """Tags and text of an HTML part, scanned once, left to right."""
    texts: list = []
    pos = 0
    n = len(text)
    next_gt = -2                     # cached position of the next '>'
    anchor: Optional[list] = None    # text pieces inside <a>
    while pos < n and not out.full:
        lt = text.find("<", pos)
        if lt < 0:
            texts.append(text[pos:])
            if anchor is not None:
                anchor.append(text[pos:])
            break
        if lt > pos:
            texts.append(text[pos:lt])
            if anchor is not None:
                anchor.append(text[pos:lt])
        if text.startswith("<!--", lt):
            end = text.find("-->", lt + 4)
            pos = n if end < 0 else end + 3     # comments are not rendered
            continue
        if next_gt <= lt:
            next_gt = text.find(">", lt + 1)
            if next_gt < 0:
                next_gt = n + 1
        if next_gt > n:                # never closed: the rest is text
            texts.append(text[lt:])
            break
        m = _TAG_NAME.match(text, lt + 1, next_gt)
        if m is None:                  # "a < b": a literal '<'
            texts.append("<")
            pos = lt + 1
            continue
        name = m.group(1).lower()
        closing = text[lt + 1] == "/"
        body = text[m.end():next_gt]
        pos = next_gt + 1
        if closing:
            if name == "a" and anchor is not None:
                _anchor_text(anchor, out)
                anchor = None
            continue
        if name == "a":
            if anchor is not None:
                _anchor_text(anchor, out)
            anchor = []
        # an attribute without "=" has no value and is passed over: a tag
        # without one ("<p>", "<br/>", "<td nowrap>") needs no attribute scan
        for am in _ATTR.finditer(body) if "=" in body else ():
            attr = am.group(1).lower()
            value = am.group(2) if am.group(2) is not None else (
                am.group(3) if am.group(3) is not None else am.group(4))
            if value is None:
                continue
            if attr in _URL_ATTRS:
                scan_url(html.unescape(value), out)
            elif attr in _TEXT_ATTRS:
                _scan_css_and_text(html.unescape(value), out)
        if name in _RAW_TEXT:
            end = _find_close(text, name, pos)
            inner = text[pos:end]
            if name == "style" or name == "script":
                _scan_css_and_text(inner, out)
            else:
                texts.append(inner)
            close = text.find(">", end)
            pos = n if close < 0 else close + 1
    if anchor is not None:
        _anchor_text(anchor, out)
    if not out.full:
        scan_text(html.unescape(" ".join(texts)), out)


def _find_close(text: str, name: str, pos: int) -> int:
    """Where ``</name`` starts (case-insensitive), or the end of the text."""
    needle = "</" + name
    while True:
        i = text.find("</", pos)
        if i < 0:
            return len(text)
        if text[i:i + len(needle)].lower() == needle:
            return i
        pos = i + 2


def _scan_css_and_text(value: str, out: _Collector) -> None:
    for m in _CSS_URL.finditer(value):
        scan_url(m.group(1), out)
    scan_text(value, out)


_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def _anchor_text(pieces: list, out: _Collector) -> None:
    """The visible text of a link, when it reads as a host name: phishing
    shows one name and links to another, and both are wanted."""
    shown = html.unescape("".join(pieces)).strip()
    if not shown or len(shown) > 2048 or any(ch.isspace() for ch in shown):
        return
    if shown[:12].lower().startswith(("http:", "https:", "ftp:", "ftps:", "mailto:", "www")):
        return                       # the text scan finds these
    host = re.split(r"[/?#:@]", shown, maxsplit=1)[0].rstrip(".")
    labels = host.lower().split(".")
    if len(labels) < 2 or not set(host.lower()) <= _HOSTNAME_CHARS:
        return
    tld = labels[-1]
    if not (2 <= len(tld) <= 63 and tld.isalpha()):
        return
    out.add(shown, host)


# --------------------------------------------------------------------------
# MIME: walked over offsets into the one message buffer, so that nesting
# never copies the message; only text parts are sliced, within the budget

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r\n?")
_MAX_HEADER = 64 * 1024


def _split(data: bytes, start: int, end: int) -> tuple:
    """(header fields as {lower name: unfolded text}, body start)."""
    if data.startswith(b"\n", start, end):
        return {}, start + 1
    if data.startswith(b"\r\n", start, end):
        return {}, start + 2
    m = _HEADER_END.search(data, start, end)
    head_end, body = (end, end) if m is None else (m.start(), m.end())
    head = data[start:min(head_end, start + _MAX_HEADER)]
    fields: dict = {}
    name = None
    for raw in _LINE_END.sub(b"\n", head).split(b"\n"):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and name is not None:
            fields[name] += " " + line.strip()
            continue
        colon = line.find(":")
        if colon <= 0:
            name = None
            continue
        name = line[:colon].strip().lower()
        if name in fields:           # the first one counts, as most clients do
            name = None
            continue
        fields[name] = line[colon + 1:].strip()
    return fields, body


def _params(value: str) -> tuple:
    """'text/html; charset="utf-8"' -> ('text/html', {'charset': 'utf-8'})."""
    if '"' not in value:             # nothing quoted: every ';' separates
        return _param_pieces(value[:4096].split(";"))
    pieces = []
    buf = []
    quoted = False
    escaped = False
    for ch in value[:4096]:
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            pieces.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    pieces.append("".join(buf))
    return _param_pieces(pieces)


def _param_pieces(pieces: list) -> tuple:
    ctype = pieces[0].strip().lower()
    params: dict = {}
    for piece in pieces[1:]:
        key, eq, val = piece.partition("=")
        if not eq:
            continue
        key, val = key.strip().lower(), val.strip()
        if key.endswith("*"):            # RFC 2231: charset'language'%-encoded value
            key = key.rstrip("*").rsplit("*", 1)[0]
            if val.count("'") >= 2:
                val = val.split("'", 2)[2]
            val = _pct_decode(val)
        params.setdefault(key, val)
    return ctype, params


def _decode_cte(data: bytes, start: int, end: int, cte: str, budget: int) -> tuple:
    """(decoded bytes, note); at most about ``budget`` bytes decoded."""
    cte = cte.strip().lower()
    if cte == "base64":
        # only the base64 alphabet counts; stray bytes are ignored, as clients do
        chunk = data[start:min(end, start + budget * 4 // 3 + budget // 8 + 64)]
        clean = re.sub(rb"[^A-Za-z0-9+/]", b"", chunk)
        clean = clean[:len(clean) - len(clean) % 4]
        try:
            return binascii.a2b_base64(clean), ""
        except binascii.Error as exc:
            return b"", f"undecodable base64 ({exc})"
    if cte == "quoted-printable":
        return binascii.a2b_qp(data[start:min(end, start + budget * 3 + 64)]), ""
    raw = data[start:min(end, start + budget + 1)]
    if cte and cte not in ("7bit", "8bit", "binary"):
        return raw, f"unknown Content-Transfer-Encoding {cte[:40]!r}, read as is"
    return raw, ""


# The charsets read: those mail is written in (the IANA names and the
# aliases clients put in Content-Type), each mapped to the Python codec that
# decodes it.  Every one of these codecs is written in C and linear in its
# input.  Any other name (``punycode``, ``idna``, ``rot13``, ``base64``,
# ``x-klingon``) is not handed to Python's codec machinery at all: some
# codecs are pure Python and far from linear (``punycode``: quadratic), some
# are not text encodings.  Such a part is read as UTF-8 with replacement
# characters, which keeps every ASCII URL of an ASCII-compatible text.
_CHARSET_CODECS = {
    "ascii": ("usascii", "ascii", "us", "ansix341968", "iso646us", "cp367", "ibm367"),
    "utf-8": ("utf8",),
    "utf-16": ("utf16",), "utf-16-le": ("utf16le",), "utf-16-be": ("utf16be",),
    "utf-32": ("utf32",), "utf-32-le": ("utf32le",), "utf-32-be": ("utf32be",),
    "utf-7": ("utf7",),
    "latin-1": ("iso88591", "latin1", "l1", "cp819", "ibm819"),
    "iso8859-2": ("iso88592", "latin2", "l2"),
    "iso8859-3": ("iso88593", "latin3", "l3"),
    "iso8859-4": ("iso88594", "latin4", "l4"),
    "iso8859-5": ("iso88595", "cyrillic"),
    "iso8859-6": ("iso88596", "arabic"),
    "iso8859-7": ("iso88597", "greek"),
    "iso8859-8": ("iso88598", "iso88598i", "hebrew"),
    "iso8859-9": ("iso88599", "latin5", "l5"),
    "iso8859-10": ("iso885910", "latin6", "l6"),
    "iso8859-11": ("iso885911",),
    "iso8859-13": ("iso885913", "latin7", "l7"),
    "iso8859-14": ("iso885914", "latin8", "l8"),
    "iso8859-15": ("iso885915", "latin9", "l9"),
    "iso8859-16": ("iso885916", "latin10", "l10"),
    "cp1250": ("windows1250", "cp1250", "xcp1250"),
    "cp1251": ("windows1251", "cp1251", "xcp1251"),
    "cp1252": ("windows1252", "cp1252", "xcp1252"),
    "cp1253": ("windows1253", "cp1253"),
    "cp1254": ("windows1254", "cp1254"),
    "cp1255": ("windows1255", "cp1255"),
    "cp1256": ("windows1256", "cp1256"),
    "cp1257": ("windows1257", "cp1257"),
    "cp1258": ("windows1258", "cp1258"),
    "cp874": ("windows874", "cp874"),
    "tis-620": ("tis620",),
    "koi8-r": ("koi8r",), "koi8-u": ("koi8u",),
    "mac-roman": ("macintosh", "macroman", "xmacroman"),
    "cp437": ("cp437", "ibm437"), "cp850": ("cp850", "ibm850"), "cp866": ("cp866", "ibm866"),
    "gbk": ("gb2312", "gbk", "cp936", "xgbk", "euccn", "xeuccn"),
    "gb18030": ("gb18030",),
    "big5": ("big5", "csbig5", "xxbig5"), "big5hkscs": ("big5hkscs",), "cp950": ("cp950",),
    "shift_jis": ("shiftjis", "sjis", "xsjis", "csshiftjis", "mskanji"),
    "cp932": ("cp932", "windows31j", "cswindows31j"),
    "euc_jp": ("eucjp", "xeucjp", "cseucpkdfmtjapanese"),
    "iso2022_jp": ("iso2022jp", "csiso2022jp"),
    "iso2022_jp_2": ("iso2022jp2",),
    "euc_kr": ("euckr", "cseuckr"),
    "cp949": ("ksc56011987", "ksc5601", "cp949", "windows949", "uhc"),
    "iso2022_kr": ("iso2022kr", "csiso2022kr"),
}
CHARSETS = {alias: codec for codec, aliases in _CHARSET_CODECS.items() for alias in aliases}
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def charset_codec(name: str) -> Optional[str]:
    """The Python codec for a MIME charset name, None when it is not one of
    :data:`CHARSETS` (compared without case and punctuation: ``ISO_8859-1``,
    ``iso8859-1`` and ``latin1`` are one)."""
    return CHARSETS.get(_NOT_ALNUM.sub("", name.lower()[:40]))


def _decode_charset(data: bytes, charset: str) -> tuple:
    charset = (charset or "").strip().strip('"').lower()[:40] or "us-ascii"
    codec = charset_codec(charset)
    if codec is None:
        return data.decode("utf-8", "replace"), f"unknown charset {charset!r}, read as UTF-8"
    return data.decode(codec, "replace"), ""


def _multipart_parts(data: bytes, start: int, end: int, boundary: bytes, seen: dict):
    """The (start, end) of each entity between ``--boundary`` delimiter lines
    (RFC 2046 §5.1.1), one at a time: the caller stops at its bound and the
    delimiters after it are never looked for.  ``seen["closed"]`` tells
    whether the close delimiter was met, ``seen["done"]`` whether the body
    was read to its end."""
    delim = b"--" + boundary
    size = len(delim)

    def following(pos: int) -> int:
        i = data.find(b"\n" + delim, pos, end)
        return i + 1 if i >= 0 else -1

    s = start if data.startswith(delim, start, end) else following(start)
    while s >= 0:
        after = s + size
        if data.startswith(b"--", after, end):
            seen["closed"] = True
            break
        line_end = data.find(b"\n", after, end)
        if line_end < 0:
            break
        nxt = following(after)
        e = nxt - 1 if nxt >= 0 else end                      # the LF before it
        if nxt >= 0 and e > line_end and data[e - 1:e] == b"\r":
            e -= 1                       # the CRLF before a delimiter belongs to it
        yield line_end + 1, max(e, line_end + 1)
        s = nxt
    seen["done"] = True


def extract(message: bytes, limits: Limits = Limits(),
            cache: Optional[HostCache] = None) -> Extraction:
    """Every URL host of ``message`` (raw bytes or a bytearray, headers and
    body; read, never copied whole)."""
    if not isinstance(message, (bytes, bytearray)):
        message = bytes(message)
    out = _Collector(limits, cache)
    state = {"parts": 0, "budget": limits.max_bytes}
    _walk(message, 0, len(message), 0, "text/plain", out, state, "1")
    return _result(out, state)


# a line break in a header value that is not a fold (CRLF or LF, then white
# space): the wire header it makes reads differently from its fields
_ODD_BREAK = re.compile(rb"\r(?!\n[ \t])|(?<!\r)\n(?![ \t])")
_CRLF = re.compile(rb"\r?\n")
# a name the wire header would not read as one: with a colon or a line
# break, empty, or starting with white space (a continuation line)
_BAD_NAME = re.compile(r"[:\r\n]|(?:^|\x00)(?:[ \t\x00]|$)")


def extract_message(headers, body: bytes, limits: Limits = Limits(),
                    cache: Optional[HostCache] = None) -> Extraction:
    """:func:`extract` of a message held as header fields (name, raw value
    as after the colon: the milter's) and body bytes, without joining them
    into one buffer: the top entity's Content-Type and
    Content-Transfer-Encoding are read from the fields themselves.  Header
    fields the wire form would read otherwise (a value with a bare line
    break, a name with a colon, a header past the bound read) are joined as
    on the wire and read by :func:`extract`, so the answer is the same."""
    if not isinstance(body, (bytes, bytearray)):
        body = bytes(body)
    picked = _top_fields(headers)
    if picked is None:
        wire = b"".join(name.encode("ascii", "surrogateescape") + b":"
                        + (_CRLF.sub(b"\r\n", value) if b"\n" in value else value) + b"\r\n"
                        for name, value in headers)
        return extract(wire + b"\r\n" + bytes(body), limits, cache)
    fields = _split(picked, 0, len(picked))[0] if picked else {}
    out = _Collector(limits, cache)
    state = {"parts": 0, "budget": limits.max_bytes}
    _walk(body, 0, len(body), 0, "text/plain", out, state, "1", fields)
    return _result(out, state)


def _top_fields(headers) -> Optional[bytes]:
    """The wire form of the header fields :func:`_split` would read for the
    top entity (those named Content-something), or None when only the whole
    wire header says.  The checks run over all names and all values at once."""
    names = "\x00".join([name for name, _ in headers])
    values = b"\x00".join([value for _, value in headers])
    if (len(names) + 2 * len(values) + 3 * len(headers) > _MAX_HEADER
            or not names.isascii() or _BAD_NAME.search(names)
            or ((b"\n" in values or b"\r" in values) and _ODD_BREAK.search(values))):
        return None
    if "content" not in names.lower():
        return b""
    picked = [name.encode("ascii") + b":"
              + (_CRLF.sub(b"\r\n", value) if b"\n" in value else value) + b"\r\n"
              for name, value in headers if "content" in name.lower()]
    picked.append(b"\r\n")
    return b"".join(picked)


def _result(out: _Collector, state: dict) -> Extraction:
    ordered = tuple(out.targets)
    domains = tuple(sorted(t for t, k in out.targets.items() if k == "name"))
    ips = tuple(sorted(t for t, k in out.targets.items() if k == "ip"))
    return Extraction(urls=tuple(out.urls),
                      hosts=tuple(dict.fromkeys(v for v in out.hosts.values() if v)),
                      domains=domains, ips=ips, ordered=ordered, notes=tuple(out.notes),
                      truncated=out.truncated, parts=state["parts"],
                      scanned=out.limits.max_bytes - state["budget"])


def _walk(data: bytes, start: int, end: int, depth: int, default_type: str,
          out: _Collector, state: dict, where: str, top: Optional[dict] = None) -> None:
    if out.full:
        return
    if state["parts"] >= out.limits.max_parts:
        out.bound(f"{out.limits.max_parts} MIME parts")
        return
    state["parts"] += 1
    if top is None:
        fields, body = _split(data, start, end)
    else:                            # the top entity's header, read already
        fields, body = top, start
    if "content-type" in fields:
        ctype, params = _params(fields["content-type"])
    else:
        ctype, params = default_type, {}
    if "/" not in ctype:
        ctype = "text/plain"         # RFC 2045 §5.2: a bad Content-Type means text/plain
    major = ctype.split("/", 1)[0]
    if major in ("multipart", "message") and depth >= out.limits.max_depth:
        out.bound(f"nesting depth {out.limits.max_depth}")
        return
    if major == "multipart":
        boundary = params.get("boundary", "")
        if not boundary or len(boundary) > 200:
            out.note(f"part {where}: {ctype} without a usable boundary, read as text")
            _leaf(data, body, end, "text/plain", fields, params, out, state, where)
            return
        seen = {"closed": False, "done": False}
        parts = _multipart_parts(data, body, end, boundary.encode("utf-8", "surrogateescape"),
                                 seen)
        child_default = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        for i, (s, e) in enumerate(parts, 1):
            if state["parts"] >= out.limits.max_parts:
                out.bound(f"{out.limits.max_parts} MIME parts")
                break
            _walk(data, s, e, depth + 1, child_default, out, state, f"{where}.{i}")
            if out.full:
                break
        if seen["done"] and not seen["closed"]:
            out.note(f"part {where}: multipart without its closing delimiter")
        return
    if ctype in ("message/rfc822", "message/global"):
        cte = fields.get("content-transfer-encoding", "").strip().lower()
        if cte in ("base64", "quoted-printable"):          # RFC 6532 allows it
            inner, _ = _decode_cte(data, body, end, cte, end - body)
            _walk(inner, 0, len(inner), depth + 1, "text/plain", out, state, f"{where}.msg")
        else:
            _walk(data, body, end, depth + 1, "text/plain", out, state, f"{where}.msg")
        return
    if major == "text":
        _leaf(data, body, end, ctype, fields, params, out, state, where)


def _leaf(data: bytes, start: int, end: int, ctype: str, fields: dict, params: dict,
          out: _Collector, state: dict, where: str) -> None:
    budget = state["budget"]
    if budget <= 0:
        out.bound(f"{out.limits.max_bytes} characters scanned")
        return
    raw, note = _decode_cte(data, start, end, fields.get("content-transfer-encoding", ""), budget)
    if note:
        out.note(f"part {where}: {note}")
        if not raw:
            return
    if len(raw) > budget:
        raw = raw[:budget]
        out.bound(f"{out.limits.max_bytes} characters scanned")
    text, note = _decode_charset(raw, params.get("charset", ""))
    if note:
        out.note(f"part {where}: {note}")
    state["budget"] = budget - len(raw)
    if ctype in ("text/html", "application/xhtml+xml"):
        scan_html(text, out)
    else:
        scan_text(text, out)
