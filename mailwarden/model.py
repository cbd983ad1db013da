"""What the engine works on: SMTP events as plain objects, and check results.

``Connection`` lives for one SMTP connection, ``Message`` for one transaction
(reset at MAIL FROM and RSET), as aiosmtpd separates Session and Envelope.
Neither knows about pymilter; the adapter and ``mailwarden scan`` fill them.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import itertools
import re
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Optional


class Stage(enum.IntEnum):
    CONNECT = 1
    HELO = 2
    MAIL = 3
    RCPT = 4
    BODY = 5        # after each body chunk; for checks that must stop early
    EOM = 6

    @property
    def method(self) -> str:
        return "on_" + self.name.lower()


class Word(str, enum.Enum):
    """A word of mailwarden's vocabulary that logs, JSON, metrics labels and
    the INI file spell as text.  A member is its text: it equals, hashes,
    prints and serializes as the string, so ``Action.REJECT == "reject"``,
    ``"reject" in {Action.REJECT}`` and ``json.dumps(Action.REJECT)`` all
    hold, and a value read from the configuration compares with it."""

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Action(Word):
    """What the MTA is told to do with a message (the verdict's action, a
    check's hard reply)."""
    ACCEPT = "accept"
    ADD_HEADER = "add_header"        # accept, with X-Spam headers
    QUARANTINE = "quarantine"        # accept into the MTA's hold queue
    TEMPFAIL = "tempfail"            # 4xx
    REJECT = "reject"                # 5xx
    DISCARD = "discard"              # accept and drop


class Trust(Word):
    """The client's trust class (``Engine.trust``), and with ``ALLOWLISTED``
    the client tags a check's ``skip_for`` and ``[limits] exempt`` name."""
    AUTHENTICATED = "authenticated"  # SMTP AUTH
    TRUSTED = "trusted"              # in [relay] trusted_networks
    OTHER = "other"
    ALLOWLISTED = "allowlisted"      # a tag set by iplist, never a class


# RFC 8601 result words (plus "policy" from RFC 8601 §2.7.1 and "hardfail"
# never: SPF's is "fail"). Checks that are not authentication methods use
# "pass", "fail" and "none" too.
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply the MTA should give, with its enhanced status code."""

    action: Action     # REJECT, TEMPFAIL or DISCARD
    code: int
    xcode: str
    text: str

    def __post_init__(self):
        if self.action == Action.REJECT and not 500 <= self.code <= 599:
            raise ValueError(f"a reject needs a 5xx code, not {self.code}")
        if self.action == Action.TEMPFAIL and not 400 <= self.code <= 499:
            raise ValueError(f"a tempfail needs a 4xx code, not {self.code}")

    def line(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"


@dataclass(frozen=True)
class Result:
    """One finding of one check, frozen once made.

    ``method`` is the RFC 8601 method name when the result belongs in
    Authentication-Results (``iprev``, ``spf``, ...), else None.
    ``properties`` are ``(ptype.property, value)`` pairs for that header.
    ``reply`` is a hard verdict (a blocked client, an oversized message) that
    ends the transaction whatever the score.  ``tags`` tell other checks
    and the engine about the client (``allowlisted``), never scored.
    """

    check: str
    result: str
    symbol: Optional[str] = None
    reason: str = ""
    method: Optional[str] = None
    properties: tuple = ()
    reply: Optional[Reply] = None
    tags: frozenset = frozenset()
    stage: Optional[Stage] = None
    tempfail: bool = True      # whether a temperror here may tempfail the message
    add_headers: tuple = ()    # (name, value) to prepend when the message is accepted,
                               # e.g. a DKIM-Signature; values folded with "\n\t"
    quarantine: str = ""       # a reason here asks policy to quarantine the message
                               # (e.g. DMARC p=quarantine), weaker than a reply
    options: tuple = ()        # short ASCII words shown next to the symbol in the status
                               # header and a score reject text (e.g. listed domains)
    findings: tuple = ()       # (key, value) pairs other checks read through the named
                               # accessors below; never written to a header

    def __post_init__(self):
        if self.result not in RESULTS:
            raise ValueError(f"unknown result {self.result!r}")

    # -- what other checks may read -------------------------------------------
    # A check reads another's findings only through these, never by the
    # Authentication-Results layout of ``properties``.

    def _value(self, key: str, slot: int = 1) -> str:
        for prop in self.properties:
            if prop[0] == key and len(prop) > slot and prop[slot]:
                return str(prop[slot])
        return ""

    @property
    def verified_name(self) -> str:
        """iprev: the client's PTR name that resolved back to its address
        (``pass`` only; a name that failed is not verified), else ""."""
        return self._value("policy.iprev", 2) if self.result == "pass" else ""

    @property
    def mailfrom(self) -> str:
        """spf: the MAIL FROM identity (``smtp.mailfrom``) checked, else ""."""
        return self._value("smtp.mailfrom")

    @property
    def header_d(self) -> str:
        """dkim: the signing domain (``header.d``), else ""."""
        return self._value("header.d")

    @property
    def header_i(self) -> str:
        """dkim: the signing identity (``header.i``) when shown, else ""."""
        return self._value("header.i")

    @property
    def header_s(self) -> str:
        """dkim: the selector (``header.s``), else ""."""
        return self._value("header.s")

    def _finding(self, key: str, default=None):
        for name, value in self.findings:
            if name == key:
                return value
        return default

    @property
    def arc_valid(self) -> bool:
        """arc: the ARC chain validated (RFC 8617 §5.2: ``arc=pass``)."""
        return self.check == "arc" and self.result == "pass"

    @property
    def arc_chain(self) -> tuple:
        """arc: the sealer domain (the ARC-Seal's ``d=``) of each set, from
        instance 1 up, lower case; () without a readable chain.  A domain
        listed here is the sender's claim unless :attr:`arc_valid`."""
        return self._finding("arc.chain", ())

    @property
    def arc_last_valid(self) -> int:
        """arc: the highest instance N such that the sets 1..N are whole and
        their seals 1..N all verify, each with the cv= RFC 8617 asks; N is
        the chain's length when :attr:`arc_valid`, 0 when not even set 1
        is good (or there is no chain)."""
        return self._finding("arc.last_valid", 0)

    @property
    def arc_terminated(self) -> bool:
        """arc: the highest ARC-Seal already said ``cv=fail``: the chain
        ended before us, and no set may be added to it."""
        return bool(self._finding("arc.terminated", False))

    @property
    def arc_hops(self) -> tuple:
        """arc: an :class:`ArcHop` per set (instance 1 up): what each sealer
        recorded in its ARC-Authentication-Results.  Only the hops up to
        :attr:`arc_last_valid` are vouched for by their seal."""
        return self._finding("arc.hops", ())

    @classmethod
    def make(cls, fields: dict) -> "Result":
        """``Result(**fields)``, checked the same way, without the frozen
        dataclass's one ``object.__setattr__`` per field: how checks make
        their results (``Check.result``), several per message."""
        result = fields.get("result")
        if result not in _RESULT_WORDS or not _FIELD_NAMES.issuperset(fields) \
                or not _REQUIRED.issubset(fields):
            return cls(**fields)             # raises as the constructor does
        made = object.__new__(cls)
        values = made.__dict__
        values.update(_DEFAULTS)
        values.update(fields)
        return made

    def at_stage(self, stage: "Stage") -> "Result":
        """This result as found at ``stage``: a copy (the fields were checked
        when it was made; ``dataclasses.replace`` would check them again)."""
        if self.stage is stage:
            return self
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__["stage"] = stage
        return copy


_RESULT_WORDS = frozenset(RESULTS)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Result)
             if f.default is not dataclasses.MISSING}
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Result))
_REQUIRED = _FIELD_NAMES - set(_DEFAULTS)


@dataclass(frozen=True)
class ArcHop:
    """One ARC set's ARC-Authentication-Results, read (RFC 8617 §4.1.1):
    the instance, the sealer domain (its ARC-Seal's ``d=``), the
    authserv-id the sealer wrote, and each resinfo as (method, result,
    ((ptype.property, value), ...)), method and result in lower case.
    Values are the sealer's text: data, quoted before any header."""

    instance: int
    sealer: str
    authserv_id: str
    results: tuple = ()

    def result_of(self, method: str) -> str:
        """The first result recorded for ``method`` (``dmarc``, ``dkim``,
        ``spf``, ...) at this hop, else ""."""
        for name, result, _props in self.results:
            if name == method:
                return result
        return ""

    def passed(self, method: str) -> bool:
        """Whether any result of ``method`` at this hop is ``pass`` (a
        message may carry several DKIM signatures)."""
        return any(name == method and result == "pass" for name, result, _p in self.results)

    def passed_domains(self, method: str) -> tuple:
        """The domains this hop's ``pass`` results of ``method`` name, lower
        case: ``header.d`` for ``dkim``, the domain of ``smtp.mailfrom``
        for ``spf``; () for any other method."""
        key = {"dkim": "header.d", "spf": "smtp.mailfrom"}.get(method)
        found = []
        for name, result, props in self.results:
            if name != method or result != "pass":
                continue
            for prop, value in props:
                if prop.lower() == key:
                    found.append(str(value).rpartition("@")[2].strip().rstrip(".").lower())
        return tuple(found)


_ids = itertools.count(1)


# TLS protocol versions as OpenSSL names them (SSL_get_version), which is
# what Postfix and Sendmail pass in {tls_version}; oldest first
TLS_VERSIONS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_TLS_VERSION = re.compile(r"(SSL|TLS)v?([0-9])(?:\.([0-9]))?", re.I | re.A)


def tls_rank(version: str) -> Optional[tuple]:
    """A ``{tls_version}`` value as ``(family, major, minor)``, SSL (0)
    before TLS (1), so that versions compare (``TLSv1`` and ``TLSv1.0`` are
    ``(1, 1, 0)``); None for a value that names no SSL or TLS version."""
    m = _TLS_VERSION.fullmatch(version.strip()) if len(version) <= 16 else None
    if m is None:
        return None
    return (0 if m.group(1).upper() == "SSL" else 1, int(m.group(2)), int(m.group(3) or 0))


def tls_name(version: str) -> str:
    """The OpenSSL name (one of :data:`TLS_VERSIONS`) of a ``{tls_version}``
    value, or "" when it names none of them."""
    rank = tls_rank(version)
    if rank is None:
        return ""
    family, major, minor = rank
    if family == 0:
        name = f"SSLv{major}" if not minor else ""
    else:
        name = f"TLSv{major}" + (f".{minor}" if minor else "")
    return name if name in TLS_VERSIONS else ""


def parse_client_address(addr) -> Optional[ipaddress._BaseAddress]:
    """An address as MTAs pass it: ``IPv6:2001:db8::1``, ``[1.2.3.4]``, ..."""
    if addr is None:
        return None
    if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return addr
    text = str(addr).strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    return unmapped(ip)


def unmapped(ip):
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) as the IPv4
    address it carries; any other address (or None) as it is.  Every
    comparison of a client's address goes through here, so that a client
    cannot pass as another by the form its address is written in."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


@dataclass
class Connection:
    """One SMTP connection: who the client is and what it said before MAIL."""

    client_ip: Optional[ipaddress._BaseAddress] = None
    client_name: str = ""             # the MTA's verified name, or "unknown"
    helo: str = ""
    auth_user: str = ""
    auth_type: str = ""
    # the TLS session, as the MTA's macros give it: all empty in cleartext
    tls_version: str = ""             # {tls_version}, e.g. TLSv1.3
    tls_cipher: str = ""              # {cipher}
    tls_bits: str = ""                # {cipher_bits}
    tls_cert_subject: str = ""        # {cert_subject} of a client certificate
    tls_cert_issuer: str = ""         # {cert_issuer} (Postfix: only when verified)
    tls_verify: str = ""              # {verify} (Sendmail: OK, NO, FAIL, NONE, ...)
    our_hostname: str = ""            # macro j
    macros: dict = field(default_factory=dict)
    results: list = field(default_factory=list)   # connect and helo stage results
    id: int = field(default_factory=lambda: next(_ids))
    messages: int = 0
    dns: Optional[object] = None      # the Lookup session of the current stage
    # the engine's last answer to "is client_ip in trusted_networks?"
    trusted_memo: Optional[tuple] = field(default=None, repr=False, compare=False)

    @property
    def authenticated(self) -> bool:
        return bool(self.auth_user)

    def label(self) -> str:
        ip = str(self.client_ip) if self.client_ip is not None else "local"
        return f"{self.client_name or 'unknown'}[{ip}]"


_CRLF = re.compile(rb"\r?\n")


class Body:
    """The message body, spooled to disk past a bound and counted exactly.

    Checks of one stage may read it at once from several threads: every
    read says where it starts, under the body's lock."""

    def __init__(self, spool_threshold: int = 1024 * 1024):
        self._file = tempfile.SpooledTemporaryFile(max_size=spool_threshold)
        self._lock = threading.Lock()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self._file.seek(0, 2)
            self._file.write(chunk)
            self.size += len(chunk)

    def read(self) -> bytes:
        with self._lock:
            self._file.seek(0)
            return self._file.read()

    def chunks(self, size: int = 65536):
        """The body in blocks of ``size`` bytes: never all of it at once."""
        offset = 0
        while True:
            with self._lock:
                self._file.seek(offset)
                block = self._file.read(size)
            if not block:
                break
            offset += len(block)
            yield block

    @property
    def spooled(self) -> bool:
        return bool(getattr(self._file, "_rolled", False))

    def close(self) -> None:
        self._file.close()


@dataclass
class Message:
    """One transaction: envelope, headers as received, body."""

    mail_from: str = ""                      # without angle brackets; "" is the null sender
    mail_params: dict = field(default_factory=dict)   # ESMTP parameters, upper-case keys
    rcpts: list = field(default_factory=list)
    # (name: str, raw value: bytes): the value exactly as after the colon,
    # leading white space and folding included, so DKIM sees the wire bytes
    headers: list = field(default_factory=list)
    body: Optional[Body] = None
    queue_id: str = ""
    results: list = field(default_factory=list)       # mail .. eom stage results
    header_bytes: int = 0
    dns: Optional[object] = None      # this message's Lookup session
    # wire_headers() as made last, with the length and last field of
    # ``headers`` it was made from (a change of either makes it anew)
    _wire: Optional[tuple] = field(default=None, repr=False, compare=False)

    def add_header(self, name: str, value: bytes) -> None:
        self.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        self._wire = None

    def header_values(self, name: str) -> list:
        """Raw values of every header field called ``name``."""
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    def header_texts(self, name: str) -> list:
        """Values as text: unfolded, stripped, undecodable bytes escaped."""
        return [_CRLF.sub(b"", v).decode("utf-8", "surrogateescape").strip()
                for v in self.header_values(name)]

    @property
    def size(self) -> int:
        return self.header_bytes + 2 + (self.body.size if self.body else 0)

    def wire_headers(self) -> list:
        """(name, value) as bytes, as on the wire: each value as after the
        colon, its line ends CRLF and a CRLF at its end (how DKIM reads them).

        Made once and shared by every reader of the message (DKIM, ARC,
        the outgoing copy): callers must not change the list.  A field
        added by :meth:`add_header`, or a change of the length or of the
        last field of ``headers``, makes it anew."""
        headers = self.headers
        cached = self._wire
        if (cached is not None and cached[0] == len(headers)
                and (not headers or cached[1] is headers[-1])):
            return cached[2]
        wire = [(name.encode("ascii", "surrogateescape"),
                 (_CRLF.sub(b"\r\n", value) if b"\n" in value else value) + b"\r\n")
                for name, value in headers]
        self._wire = (len(headers), headers[-1] if headers else None, wire)
        return wire

    def raw_headers(self) -> bytes:
        """Headers as on the wire (CRLF line ends), values untouched."""
        return b"".join(name + b":" + value for name, value in self.wire_headers())

    def as_bytes(self) -> bytes:
        body = self.body.read() if self.body else b""
        return self.raw_headers() + b"\r\n" + body

    def as_buffer(self) -> bytearray:
        """The message as :meth:`as_bytes`, held once: the body is copied
        block by block into one buffer of the final size, never read whole
        first and joined after."""
        head = self.raw_headers() + b"\r\n"
        size = self.body.size if self.body else 0
        buf = bytearray(len(head) + size)
        buf[:len(head)] = head
        at = len(head)
        if self.body is not None:
            for block in self.body.chunks():
                buf[at:at + len(block)] = block
                at += len(block)
        del buf[at:]                  # the body cannot grow now; this only guards
        return buf

    def close(self) -> None:
        if self.body is not None:
            self.body.close()


def strip_brackets(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address
