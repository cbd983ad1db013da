"""Parsers for the DNS records a mail domain publishes: SPF, DKIM keys,
DMARC, MTA-STS and TLS-RPT.

Pure functions, no DNS: each takes the TXT value (strings already joined)
and returns the parsed record or raises :class:`RecordError` with a short
reason that names the offending term or tag.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "RecordError", "SpfTerm", "parse_spf", "is_spf", "parse_tags",
    "parse_dkim_key", "DkimKey", "parse_dmarc", "DmarcRecord", "DmarcUri",
    "is_sts", "parse_sts", "is_tlsrpt", "parse_tlsrpt",
]


class RecordError(ValueError):
    """A record that does not follow its grammar."""


# --------------------------------------------------------------------------
# SPF (RFC 7208 §4.5, §5, §6, §7, §12 ABNF)

SPF_LOOKUP_MECHANISMS = frozenset({"include", "a", "mx", "ptr", "exists"})
_SPF_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_SPF_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*")
# macro-letter; c, r and t only make sense in an explanation string
_MACRO_LETTERS = frozenset("slodiphv")
_MACRO_LETTERS_EXP = _MACRO_LETTERS | frozenset("crt")
_MACRO_EXPAND = re.compile(r"%\{([A-Za-z])(\d*)(r?)([.\-+,/_=]*)\}", re.I)
_CIDR4 = r"(?:0|[1-9][0-9]?)"
_CIDR6 = r"(?:0|[1-9][0-9]{0,2})"
_DUAL_CIDR = re.compile(rf"(?:/({_CIDR4}))?(?://({_CIDR6}))?$")
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])$")


def is_spf(text: str) -> bool:
    """The record selection rule of RFC 7208 §4.5: ``v=spf1`` then a space
    or the end, case-insensitively."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


@dataclass(frozen=True)
class SpfTerm:
    text: str                # the term as written
    name: str                # mechanism or modifier name, lower case
    modifier: bool
    qualifier: str = "+"     # mechanisms only
    target: str = ""         # domain-spec, address or modifier value
    macros: bool = False     # the target holds macros (%{...})
    cidr4: int | None = None
    cidr6: int | None = None


def _check_macro_string(text: str, letters=_MACRO_LETTERS) -> bool:
    """Validate a macro-string; return whether it holds macro expansions."""
    i, has_macro = 0, False
    while i < len(text):
        ch = text[i]
        if ch == "%":
            nxt = text[i + 1:i + 2]
            if nxt in ("%", "_", "-"):
                i += 2
                continue
            m = _MACRO_EXPAND.match(text, i)
            if not m:
                raise RecordError(f"bad macro at {text[i:i + 12]!r}")
            if m.group(1).lower() not in letters:
                raise RecordError(f"unknown macro letter %{{{m.group(1)}}}")
            if m.group(2) and int(m.group(2)) == 0:
                raise RecordError("macro transformer of 0 labels")
            has_macro = True
            i = m.end()
            continue
        if not 0x21 <= ord(ch) <= 0x7E:
            raise RecordError(f"character {ch!r} not allowed")
        i += 1
    return has_macro


def _check_domain_spec(spec: str, term: str) -> bool:
    if not spec:
        raise RecordError(f"{term}: empty domain")
    try:
        has_macro = _check_macro_string(spec)
    except RecordError as exc:
        raise RecordError(f"{term}: {exc}") from None
    # domain-end: a macro, or "." toplabel ["."]
    if re.search(r"%\{[^}]*\}$", spec):
        return has_macro
    bare = spec[:-1] if spec.endswith(".") else spec
    if "." not in bare:
        raise RecordError(f"{term}: {spec!r} is not a fully qualified domain name")
    top = bare.rsplit(".", 1)[1]
    if not _TOPLABEL.match(top):
        raise RecordError(f"{term}: {spec!r} does not end in a valid top label")
    if not has_macro:
        labels = bare.split(".")
        if any(not label or len(label) > 63 for label in labels) or len(bare) > 253:
            raise RecordError(f"{term}: {spec!r} is not a valid domain name")
    return has_macro


def _parse_spf_term(term: str) -> SpfTerm:
    qualifier = ""
    body = term
    if body[:1] in "+-~?":
        qualifier, body = body[0], body[1:]
    m = _SPF_NAME.match(body)
    if not m:
        raise RecordError(f"{term}: not a mechanism or modifier")
    name, rest = m.group(0), body[m.end():]
    low = name.lower()
    if rest.startswith("=") and not qualifier:
        value = rest[1:]
        if low in ("redirect", "exp"):
            macros = _check_domain_spec(value, term)
        else:
            try:
                macros = _check_macro_string(value, _MACRO_LETTERS_EXP)
            except RecordError as exc:
                raise RecordError(f"{term}: {exc}") from None
        return SpfTerm(term, low, True, target=value, macros=macros)
    if low not in _SPF_MECHANISMS:
        raise RecordError(f"{term}: unknown mechanism {name!r}")
    qualifier = qualifier or "+"
    if low == "all":
        if rest:
            raise RecordError(f"{term}: 'all' takes no argument")
        return SpfTerm(term, low, False, qualifier)
    if low in ("include", "exists"):
        if not rest.startswith(":"):
            raise RecordError(f"{term}: '{low}' needs ':domain'")
        spec = rest[1:]
        return SpfTerm(term, low, False, qualifier, spec, _check_domain_spec(spec, term))
    if low == "ptr":
        spec = ""
        if rest:
            if not rest.startswith(":"):
                raise RecordError(f"{term}: expected ':domain' after 'ptr'")
            spec = rest[1:]
        macros = _check_domain_spec(spec, term) if spec else False
        return SpfTerm(term, low, False, qualifier, spec, macros)
    if low in ("a", "mx"):
        spec, cidr = rest, ""
        m = re.search(r"(?:/[0-9]*)?(?://[0-9]*)?$", rest)
        if m and m.group(0):
            spec, cidr = rest[:m.start()], m.group(0)
        c = _DUAL_CIDR.fullmatch(cidr)
        if not c:
            raise RecordError(f"{term}: bad CIDR length {cidr!r}")
        cidr4 = int(c.group(1)) if c.group(1) else None
        cidr6 = int(c.group(2)) if c.group(2) else None
        if cidr4 is not None and cidr4 > 32:
            raise RecordError(f"{term}: IPv4 prefix length over 32")
        if cidr6 is not None and cidr6 > 128:
            raise RecordError(f"{term}: IPv6 prefix length over 128")
        macros = False
        if spec:
            if not spec.startswith(":"):
                raise RecordError(f"{term}: expected ':domain' after '{low}'")
            spec = spec[1:]
            macros = _check_domain_spec(spec, term)
        return SpfTerm(term, low, False, qualifier, spec, macros, cidr4, cidr6)
    # ip4 / ip6
    if not rest.startswith(":"):
        raise RecordError(f"{term}: '{low}' needs ':address'")
    addr, slash, length = rest[1:].partition("/")
    version = 4 if low == "ip4" else 6
    try:
        ip = ipaddress.ip_address(addr) if "%" not in addr else None
    except ValueError:
        ip = None
    if ip is None or ip.version != version:
        raise RecordError(f"{term}: {addr!r} is not an IPv{version} address")
    prefix = None
    if slash:
        limit = 32 if version == 4 else 128
        if not re.fullmatch(_CIDR4 if version == 4 else _CIDR6, length) or int(length) > limit:
            raise RecordError(f"{term}: bad prefix length {length!r}")
        prefix = int(length)
    return SpfTerm(term, low, False, qualifier, addr,
                   cidr4=prefix if version == 4 else None,
                   cidr6=prefix if version == 6 else None)


def parse_spf(text: str) -> list:
    """The terms of an SPF record (``v=spf1`` excluded), validated."""
    if not is_spf(text):
        raise RecordError("does not start with 'v=spf1'")
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        raise RecordError("non-ASCII characters") from None
    if re.search(r"[\t\r\n]", text):
        raise RecordError("terms must be separated by spaces only")
    terms = [_parse_spf_term(t) for t in text[6:].split(" ") if t]
    for name in ("redirect", "exp"):
        if sum(1 for t in terms if t.modifier and t.name == name) > 1:
            raise RecordError(f"'{name}=' given more than once")
    return terms


# --------------------------------------------------------------------------
# tag=value lists (RFC 6376 §3.2; DMARC uses the same form)

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")


def parse_tags(text: str) -> list:
    """``[(name, value), ...]`` in order; a repeated or malformed tag is an error."""
    tags, seen = [], set()
    parts = text.split(";")
    if parts and not parts[-1].strip():
        parts = parts[:-1]       # a trailing ';' is allowed
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(" \t\r\n")
        if not eq:
            raise RecordError(f"{part.strip()!r} is not tag=value")
        if not _TAG_NAME.match(name):
            raise RecordError(f"bad tag name {name!r}")
        if name in seen:
            raise RecordError(f"tag {name!r} given twice")
        seen.add(name)
        tags.append((name, value.strip(" \t\r\n")))
    return tags


# --------------------------------------------------------------------------
# DKIM key records (RFC 6376 §3.6.1, RFC 8463)

@dataclass(frozen=True)
class DkimKey:
    key_type: str            # k=: rsa or ed25519
    public: bytes            # p= decoded; empty for a revoked key
    tags: dict
    hashes: tuple = ()       # h=, empty when absent (all allowed)
    flags: tuple = ()        # t=
    services: tuple = ()     # s=


def parse_dkim_key(text: str) -> DkimKey:
    import base64
    import binascii

    tags = parse_tags(text)
    values = dict(tags)
    if "v" in values and (tags[0][0] != "v" or values["v"] != "DKIM1"):
        raise RecordError("v= must come first and be DKIM1")
    if "p" not in values:
        raise RecordError("no p= tag (public key)")
    key_type = values.get("k", "rsa").lower()
    compact = re.sub(r"[ \t\r\n]", "", values["p"])
    try:
        public = base64.b64decode(compact, validate=True) if compact else b""
    except (binascii.Error, ValueError):
        raise RecordError("p= is not valid base64") from None

    def colon_list(tag):
        return tuple(x.strip().lower() for x in values.get(tag, "").split(":") if x.strip())
    return DkimKey(key_type, public, values, colon_list("h"), colon_list("t"), colon_list("s"))


# --------------------------------------------------------------------------
# DMARC (RFC 9989 §4.7, §4.8; pct, rf and ri from RFC 7489, now historic)

_DMARC_POLICIES = ("none", "quarantine", "reject")
_DMARC_TAGS = frozenset({"v", "p", "sp", "np", "adkim", "aspf", "pct", "fo", "rf", "ri",
                         "rua", "ruf", "t", "psd"})
_DMARC_HISTORIC = ("pct", "rf", "ri")          # RFC 9989 §C.5.2: removed


@dataclass(frozen=True)
class DmarcUri:
    uri: str
    scheme: str
    address: str             # for mailto: the address; else the URI
    limit: str = ""          # "!10m"


@dataclass(frozen=True)
class DmarcRecord:
    tags: dict
    p: str | None
    sp: str | None
    np: str | None
    adkim: str
    aspf: str
    pct: int
    rua: tuple
    ruf: tuple
    unknown: tuple           # tag names receivers will ignore
    psd: str = "u"           # RFC 9989: y, n or u
    t: str = "n"             # RFC 9989: y (testing) or n
    historic: tuple = ()     # pct, rf, ri present: RFC 9989 removed them


def _dmarc_uris(tag: str, value: str) -> tuple:
    uris = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            raise RecordError(f"{tag}=: empty URI in the list")
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.\-]*):([^!]+)(![0-9]+[kmgt]?)?", item, re.I)
        if not m:
            raise RecordError(f"{tag}=: {item!r} is not a URI")
        scheme = m.group(1).lower()
        rest = m.group(2)
        address = rest
        if scheme == "mailto":
            if not re.fullmatch(r"[^@\s]+@[A-Za-z0-9.\-]+\.?", rest):
                raise RecordError(f"{tag}=: {item!r} is not a mail address")
        uris.append(DmarcUri(item, scheme, address, m.group(3) or ""))
    return tuple(uris)


def parse_dmarc(text: str) -> DmarcRecord:
    tags = parse_tags(text)
    if not tags or tags[0][0] != "v" or tags[0][1] != "DMARC1":
        raise RecordError("must start with v=DMARC1")
    values = dict(tags)

    def policy(tag):
        value = values.get(tag)
        if value is None:
            return None
        if value.lower() not in _DMARC_POLICIES:
            raise RecordError(f"{tag}={value}: expected none, quarantine or reject")
        return value.lower()

    def mode(tag):
        value = values.get(tag, "r").lower()
        if value not in ("r", "s"):
            raise RecordError(f"{tag}={values[tag]}: expected r or s")
        return value

    pct_text = values.get("pct", "100")
    if not re.fullmatch(r"[0-9]{1,3}", pct_text) or int(pct_text) > 100:
        raise RecordError(f"pct={pct_text}: expected 0 to 100")
    if "fo" in values and not all(o.strip() in ("0", "1", "d", "s")
                                  for o in values["fo"].split(":")):
        raise RecordError(f"fo={values['fo']}: expected 0, 1, d or s, ':'-separated")
    if "ri" in values and not re.fullmatch(r"[0-9]{1,32}", values["ri"]):
        raise RecordError(f"ri={values['ri']}: expected a number of seconds")
    if "rf" in values and not all(re.fullmatch(r"[A-Za-z0-9\-]+", f.strip())
                                  for f in values["rf"].split(":")):
        raise RecordError(f"rf={values['rf']}: expected report format names")
    psd = values.get("psd", "u").lower()
    if psd not in ("y", "n", "u"):
        raise RecordError(f"psd={values['psd']}: expected y, n or u")
    t = values.get("t", "n").lower()
    if t not in ("y", "n"):
        raise RecordError(f"t={values['t']}: expected y or n")
    return DmarcRecord(
        tags=values, p=policy("p"), sp=policy("sp"), np=policy("np"),
        adkim=mode("adkim"), aspf=mode("aspf"), pct=int(pct_text), psd=psd, t=t,
        historic=tuple(tag for tag in _DMARC_HISTORIC if tag in values),
        rua=_dmarc_uris("rua", values["rua"]) if "rua" in values else (),
        ruf=_dmarc_uris("ruf", values["ruf"]) if "ruf" in values else (),
        unknown=tuple(n for n, _ in tags if n not in _DMARC_TAGS))


# --------------------------------------------------------------------------
# MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3)

_FIELD_DELIM = re.compile(r"[ \t]*;[ \t]*")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}$")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+$")


def is_sts(text: str) -> bool:
    return text.startswith("v=STSv1") and _FIELD_DELIM.match(text, 7) is not None


def _fields(text: str, version: str) -> dict:
    if not text.startswith(version):
        raise RecordError(f"must start with {version}")
    rest = text[len(version):]
    fields = {}
    parts = _FIELD_DELIM.split(rest)
    if parts[0] != "":
        raise RecordError(f"{version} must be followed by ';'")
    parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq or not _EXT_NAME.match(name):
            raise RecordError(f"{part!r} is not name=value")
        if name in fields:
            raise RecordError(f"{name}= given twice")
        fields[name] = value
    return fields


def parse_sts(text: str) -> dict:
    fields = _fields(text, "v=STSv1")
    if "id" not in fields:
        raise RecordError("no id= field")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", fields["id"]):
        raise RecordError(f"id={fields['id']}: 1 to 32 letters and digits")
    for name, value in fields.items():
        if name != "id" and not _EXT_VALUE.match(value):
            raise RecordError(f"{name}=: bad value")
    return fields


def is_tlsrpt(text: str) -> bool:
    return text.startswith("v=TLSRPTv1") and _FIELD_DELIM.match(text, 10) is not None


def parse_tlsrpt(text: str) -> dict:
    """The fields; ``rua`` as a tuple of URIs (mailto: or https:)."""
    fields = _fields(text, "v=TLSRPTv1")
    if "rua" not in fields:
        raise RecordError("no rua= field")
    uris = []
    for item in fields["rua"].split(","):
        item = item.strip()
        m = re.fullmatch(r"(mailto|https):(\S+)", item, re.I)
        if not m:
            raise RecordError(f"rua=: {item!r} is not a mailto: or https: URI")
        if m.group(1).lower() == "mailto" and not re.fullmatch(r"[^@\s]+@[A-Za-z0-9.\-]+", m.group(2)):
            raise RecordError(f"rua=: {item!r} is not a mail address")
        uris.append(item)
    out = dict(fields)
    out["rua"] = tuple(uris)
    return out
