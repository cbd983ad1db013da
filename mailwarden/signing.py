"""DKIM signing keys and signatures (RFC 6376, RFC 8301, RFC 8463).

The signing library: what the ``dkim_sign`` check
(:mod:`mailwarden.checks.dkim_sign`), ``mailwarden genkey`` and the domain
audit share to read keys, sign and publish.

Keys are read once, at start-up (before privileges are dropped): an RSA key
in PEM (PKCS#1 or PKCS#8), or an Ed25519 key either as dkimpy and
``mailwarden genkey`` write it (base64 of the 32-byte seed, RFC 8463 §4) or
in PKCS#8 PEM.  A key readable by group or others, unreadable, or not a key
of a known type is refused with its path.

Signing reuses dkimpy's parser, canonicalization and header selection, so
what we sign is exactly what dkimpy (and every verifier agreeing with it)
checks; the private-key operation itself is done by ``cryptography``
(OpenSSL), about ten times faster for RSA than dkimpy's pure-Python RSA.
Verification shares its canonicalization here too (the end of this
module): the dkim and arc checks hash header fields and bodies with it,
byte for byte what dkimpy makes (tests/unit/test_dkim_canon.py), in a few
bytes operations per field or block.

The dkimpy internals used here (``rfc822_parse``, ``fold``, ``RE_BTAG``,
``hash_headers``) are pinned to a release range in setup.cfg and checked by
tests/unit/test_dkimpy_contract.py.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field

import dkim
import nacl.exceptions
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import HASH_ALGORITHMS

from .address import AddressProblem, normalize_domain
from .options import ValueProblem, parse_list

__all__ = ["KeyProblem", "SigningKey", "load_key", "sign", "arc_set", "txt_record",
           "split_txt", "parse_key_specs", "MIN_RSA_BITS", "DEFAULT_SIGN_HEADERS",
           "PublicKey", "KeyCache", "OverBudget", "BodyHash", "body_digest", "body_digests",
           "select_headers", "relaxed_name", "no_space", "strip_b", "relaxed_field", "header_hash_input",
           "signature_valid"]

# RFC 8301 §3.2: signers MUST use at least 1024 bits (and SHOULD use 2048)
MIN_RSA_BITS = 1024

# RFC 6376 §5.4.1's list, with the MIME and identity fields most signers add
DEFAULT_SIGN_HEADERS = (
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Message-ID", "Sender",
    "In-Reply-To", "References", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "Content-ID", "Content-Description",
    "Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc",
    "Resent-Message-ID", "List-Id", "List-Help", "List-Unsubscribe",
    "List-Subscribe", "List-Post", "List-Owner", "List-Archive",
)

_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_\-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9_\-]*[A-Za-z0-9])?)*$")


class KeyProblem(ValueError):
    """A key file that cannot be used; the message names the path."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    path: str
    algorithm: str                     # "rsa-sha256" or "ed25519-sha256"
    bits: int
    private: object = field(repr=False, compare=False)

    @property
    def kind(self) -> str:
        return "rsa" if self.algorithm == "rsa-sha256" else "ed25519"

    def sign_digest(self, digest: bytes) -> bytes:
        if self.algorithm == "rsa-sha256":
            return self.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data, as a message
        return self.private.sign(digest)


def valid_selector(text: str) -> bool:
    return bool(_SELECTOR.match(text)) and len(text) <= 63 * 4


def parse_key_specs(text: str) -> tuple:
    """``DOMAIN:SELECTOR:PATH`` items (comma or space separated), as
    ``[check.dkim_sign] keys`` and ``[check.arc] keys`` take them:
    ((domain, selector, path), ...); ValueProblem names a bad item."""
    specs = []
    for item in parse_list(text):
        parts = item.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueProblem(f"expected DOMAIN:SELECTOR:PATH, got {item!r}")
        domain_text, selector, path = parts
        try:
            domain = normalize_domain(domain_text)
        except AddressProblem as exc:
            raise ValueProblem(f"{item!r}: {exc}") from None
        if domain.startswith("["):
            raise ValueProblem(f"{item!r}: an address literal cannot sign")
        if not valid_selector(selector):
            raise ValueProblem(f"{item!r}: not a DKIM selector: {selector!r}")
        specs.append((domain, selector.lower(), path))
    return tuple(specs)


def load_key(path: str, domain: str = "", selector: str = "") -> SigningKey:
    """Read and check one key file; KeyProblem says what is wrong, with the path."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyProblem(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyProblem(f"{path}: a private key must not be accessible to group or others "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}; chmod 600 it)")
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20)
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read: {exc.strerror}") from None
    private = _parse_key(data, path)
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise KeyProblem(f"{path}: RSA key of {private.key_size} bits; "
                             f"RFC 8301 needs at least {MIN_RSA_BITS}")
        return SigningKey(domain, selector, path, "rsa-sha256", private.key_size, private)
    return SigningKey(domain, selector, path, "ed25519-sha256", 256, private)


def _parse_key(data: bytes, path: str):
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(text, password=None)
        except TypeError:
            raise KeyProblem(f"{path}: the key is encrypted with a passphrase") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyProblem(f"{path}: not a readable PEM private key ({exc})") from None
        if not isinstance(private, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise KeyProblem(f"{path}: a {type(private).__name__} key; DKIM signs with "
                             f"RSA or Ed25519 only")
        return private
    try:
        seed = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise KeyProblem(f"{path}: neither an RSA or Ed25519 private key in PEM nor an "
                         f"Ed25519 key as base64 of its 32-byte seed")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def txt_record(public) -> str:
    """The ``v=DKIM1; k=...; p=...`` TXT value for a public key."""
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")


def split_txt(value: str, size: int = 255) -> list:
    """A TXT value cut into character-strings of at most ``size`` bytes."""
    raw = value.encode("ascii")
    return [raw[i:i + size].decode("ascii") for i in range(0, len(raw), size)] or [""]


def parse_canonicalization(text: str) -> tuple:
    """``relaxed/relaxed``; one word is the header's, the body's is simple (RFC 6376 §3.5)."""
    value = text.strip().lower()
    try:
        policy = CanonicalizationPolicy.from_c_value(value.encode("ascii"))
    except (InvalidCanonicalizationPolicyError, UnicodeEncodeError):
        raise ValueError(f"expected simple or relaxed, as HEADER/BODY, got {text!r}") from None
    header, _, body = policy.to_c_value().partition(b"/")
    return header.decode(), body.decode()


def headers_to_sign(header_names, sign_headers, oversign) -> list:
    """The h= list (lower case): each wanted field as often as it occurs, and
    the oversigned ones once more, so that none can be added (RFC 6376 §8.15)."""
    counts: dict = {}
    for name in header_names:
        low = name.lower()
        counts[low] = counts.get(low, 0) + 1
    out = []
    over = {h.lower() for h in oversign}
    for name in sign_headers:
        low = name.lower()
        out += [low] * counts.get(low, 0)
        if low in over:
            out.append(low)
    for low in sorted(over - {h.lower() for h in sign_headers}):
        out += [low] * (counts.get(low, 0) + 1)
    return out


def sign(message: bytes, key: SigningKey, include: list,
         canonicalization: tuple = ("relaxed", "relaxed"), now: float | None = None,
         cache: dict | None = None) -> bytes:
    """The value of a DKIM-Signature field (after the colon, folded with CRLF SP).

    ``message`` is the message as it will be delivered (headers and body);
    ``include`` the lower-case h= names (see :func:`headers_to_sign`).
    ``cache``, a dict kept for one message, spares the parse and the body
    hash (most of the cost of a large message) to its second signature.
    Raises ``dkim.DKIMException`` on a message dkimpy cannot parse.
    """
    if "from" not in include:
        raise dkim.ParameterError("the From header field must be signed (RFC 6376 §5.4)")
    cache = {} if cache is None else cache
    policy = CanonicalizationPolicy.from_c_value("/".join(canonicalization).encode("ascii"))
    if "parsed" not in cache:
        cache["parsed"] = dkim.rfc822_parse(message)
    headers, body = cache["parsed"]
    body_key = ("bh", policy.to_c_value())
    if body_key not in cache:
        cache[body_key] = base64.b64encode(
            hashlib.sha256(policy.canonicalize_body(body)).digest())
    bodyhash = cache[body_key]
    include_b = [h.encode("ascii") for h in include]
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", policy.to_c_value()),
        (b"d", key.domain.encode("ascii")),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(int(time.time() if now is None else now)).encode("ascii")),
        (b"h", b" : ".join(include_b)),
        (b"bh", bodyhash),
        # a placeholder as long as a signature puts b= on a line of its own,
        # so folding the real value later leaves everything before it alone
        (b"b", b"0" * 60),
    ]
    name = b"DKIM-Signature"
    unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name),
                         linesep=b"\r\n")
    unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(headers), include_b,
                      (name, b" " + unsigned), dict(fields))
    fields[-1] = (b"b", base64.b64encode(key.sign_digest(hasher.digest())))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(name),
                      linesep=b"\r\n")
    return value.rstrip(b"\r\n")


# -- ARC sets (RFC 8617) -------------------------------------------------------

def _arc_header(name: bytes, fields: list, key: SigningKey, hashed: bytes,
                standardize: bool) -> bytes:
    """One ARC-Message-Signature or ARC-Seal value (after the colon, no
    trailing CRLF): ``hashed`` are the relaxed-canonical fields that come
    before the signature field itself in the hash."""
    if standardize:
        # the conformance suite's form: tags sorted, lower case but bh= and
        # b=, no white space, never folded
        fields = sorted(((k, v.replace(b" ", b"") if k in (b"bh", b"b")
                          else v.lower().replace(b" ", b"")) for k, v in fields),
                        key=lambda f: f[0])
        unsigned = b"; ".join(b"=".join(f) for f in fields)
    else:
        unsigned = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name),
                             linesep=b"\r\n")
    unsigned = dkim.RE_BTAG.sub(b"\\1", unsigned)
    hasher = hashlib.sha256(hashed)
    hasher.update(relaxed_field(name, b" " + unsigned).rstrip())
    fields = [(k, base64.b64encode(key.sign_digest(hasher.digest())) if k == b"b" else v)
              for k, v in fields]
    value = b"; ".join(b"=".join(f) for f in fields)
    if not standardize:
        value = dkim.fold(value + b"\r\n", namelen=len(name), linesep=b"\r\n").rstrip(b"\r\n")
    return value


def arc_set(message: bytes, key: SigningKey, instance: int, cv: str, aar: bytes,
            prior: list, include: list, now: float | None = None,
            standardize: bool = False, parsed: tuple | None = None) -> list:
    """The ARC set of ``instance`` for ``message`` (RFC 8617 §5.1): three
    (name, value) pairs, ARC-Seal first, values after the colon without
    the trailing CRLF, folded with CRLF SP.

    ``message`` is the message as it will leave, without this set;
    ``aar`` the ARC-Authentication-Results payload after ``i=N;``
    (``authserv-id; resinfo; ...``); ``prior`` the (name, value) ARC
    header fields of the sets the seal covers, in increasing instance
    order, AAR, AMS, AS each (empty for ``cv=fail``: RFC 8617 §5.1.2 has
    the seal of a failed chain cover its own set alone); ``include`` the
    lower-case h= names of the AMS; ``cv`` none, pass or fail.
    The seal hashes the sets in instance order whatever their place in
    the header.  ``standardize`` writes the tags as the ARC conformance
    suite expects (sorted, unfolded).  ``parsed`` is
    ``dkim.rfc822_parse(message)`` when the caller has it already.  RFC
    8617 knows rsa-sha256 only.
    """
    if key.algorithm != "rsa-sha256":
        raise dkim.ParameterError("ARC seals with rsa-sha256 only (RFC 8617 §4.1.3)")
    if "from" not in include:
        raise dkim.ParameterError("the From header field must be signed (RFC 6376 §5.4)")
    headers, body = dkim.rfc822_parse(message) if parsed is None else parsed
    stamp = str(int(time.time() if now is None else now)).encode("ascii")
    i = str(instance).encode("ascii")
    domain, selector = key.domain.encode("ascii"), key.selector.encode("ascii")
    aar_value = b"i=" + i + b"; " + aar.strip()
    bodyhash = base64.b64encode(body_digest(body, True, b"rsa-sha256"))
    include_b = [h.encode("ascii") for h in include]
    ams_fields = [(b"i", i), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"),
                  (b"d", domain), (b"s", selector), (b"t", stamp),
                  (b"h", b" : ".join(include_b)), (b"bh", bodyhash), (b"b", b"0" * 60)]
    signed = b"".join(relaxed_field(n, v)
                      for n, v in select_headers(headers, include_b, relaxed_name))
    ams = _arc_header(b"ARC-Message-Signature", ams_fields, key, signed, standardize)
    as_fields = [(b"i", i), (b"cv", cv.encode("ascii")), (b"a", b"rsa-sha256"),
                 (b"d", domain), (b"s", selector), (b"t", stamp), (b"b", b"0" * 60)]
    chain = list(prior) + [(b"ARC-Authentication-Results", b" " + aar_value),
                           (b"ARC-Message-Signature", b" " + ams)]
    seal = _arc_header(b"ARC-Seal", as_fields, key,
                       b"".join(relaxed_field(n, v) for n, v in chain), standardize)
    return [(b"ARC-Seal", seal), (b"ARC-Message-Signature", ams),
            (b"ARC-Authentication-Results", aar_value)]


# -- verification (RFC 6376 §3.4, §3.7, §6.1.3), for the dkim and arc checks ---

class PublicKey:
    """A key record as read: dkimpy's parse, and for RSA the key for OpenSSL."""

    __slots__ = ("pk", "size", "ktag", "tlsrpt", "rsa")

    def __init__(self, pk, size, ktag, tlsrpt):
        self.pk, self.size, self.ktag, self.tlsrpt = pk, size, ktag, tlsrpt
        self.rsa = None
        if ktag == b"rsa":
            self.rsa = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key()


class KeyCache:
    """Key records as read, by their exact text: ``get(text, read)`` gives
    ``read(text)``, made once while the text stays among the ``size`` most
    recently used (oldest out).  What ``read`` makes depends on the text
    alone, so a record is never kept longer than the DNS cache gives the
    same text back; one per check instance, so a configuration reload
    starts empty.  Thread-safe: ``read`` runs outside the lock (two
    threads may both read a new record; either result is the same)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, read):
        key = (read, text)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        made = read(text)
        with self._lock:
            self._items[key] = made
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return made

    def __len__(self) -> int:
        return len(self._items)


class OverBudget(Exception):
    pass


_PREHASHED = {b"rsa-sha256": Prehashed(hashes.SHA256()), b"rsa-sha1": Prehashed(hashes.SHA1())}


_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")          # white space that is not one SP


class _Prefixes:
    """One running hash of a canonical body, and its digests at each l=
    (a copy of the hash state where the prefix ends): one pass, whatever
    the number of l= values."""

    def __init__(self, hasher, limits):
        self.hash = hasher()
        self.at = 0
        self.limits = sorted(set(limits))
        self.digests: dict = {}

    def update(self, data: bytes) -> None:
        while self.limits and self.limits[0] <= self.at + len(data):
            take = self.limits[0] - self.at
            self.hash.update(data[:take])
            self.at += take
            data = data[take:]
            self.digests[self.limits.pop(0)] = self.hash.copy().digest()
        self.hash.update(data)
        self.at += len(data)

    def finish(self) -> dict:
        full = self.hash.digest()
        for limit in self.limits:          # l= past the end: the whole body
            self.digests[limit] = full
        self.limits = []
        self.digests[None] = full
        return self.digests


class _CanonicalBody:
    """RFC 6376 §3.4.3 (simple) or §3.4.4 (relaxed) body canonicalization,
    fed in chunks, so that a large spooled body is never held whole; what
    it makes goes to every sink (``update(bytes)``).

    Byte for byte what dkimpy computes on the whole body: lines end at LF
    (a CR before it belongs to the line end); relaxed drops white space at
    line ends and makes other runs one SP; empty lines at the end are
    dropped; a last line without its CRLF gets one; an empty body is CRLF
    (simple) or nothing (relaxed).  Each block of whole lines is done by a
    few bytes operations, not line by line."""

    def __init__(self, relaxed: bool, sinks: list):
        self.relaxed = relaxed
        self.sinks = sinks
        self.partial = b""          # a line not ended yet
        self.empty = 0              # empty lines held back: they count only if more follows
        self.wrote = False

    def _emit(self, data: bytes) -> None:
        for sink in self.sinks:
            sink.update(data)

    def _lines(self, block: bytes) -> None:
        """Whole lines, each ending in LF (a CR before it already removed)."""
        if self.relaxed:
            if b" \n" in block or b"\t\n" in block:
                # white space at line ends: rstrip per line is 5 to 40 times
                # faster than a regular expression trying each SP it meets
                lines = block.split(b"\n")
                last = lines.pop()
                block = b"\n".join([line.rstrip(b" \t") for line in lines]) + b"\n" + last
            if b"\t" in block or b"  " in block:
                block = _WSP_RUN.sub(b" ", block)
        text = block.rstrip(b"\n")
        if not text:                             # nothing but empty lines
            self.empty += len(block)
            return
        if self.empty:
            self._emit(b"\r\n" * self.empty)
        self._emit((text + b"\n").replace(b"\n", b"\r\n"))
        self.empty = len(block) - len(text) - 1
        self.wrote = True

    def update(self, chunk: bytes) -> None:
        data = self.partial + chunk if self.partial else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self.partial = data
            return
        self.partial = data[end + 1:]
        self._lines(data[:end + 1].replace(b"\r\n", b"\n"))

    def finish(self) -> None:
        last = self.partial
        if last:                    # no line end after it: one is added (RFC 6376 §3.4.3)
            if self.relaxed and (b"\t" in last or b"  " in last):
                last = _WSP_RUN.sub(b" ", last)
            if self.empty:
                self._emit(b"\r\n" * self.empty)
            self._emit(last + b"\r\n")
        elif not self.wrote and not self.relaxed:
            self._emit(b"\r\n")   # an empty body is one CRLF in simple
        self.partial, self.empty = b"", 0


class BodyHash:
    """One body hash (``hasher``, relaxed or simple, ``limit``: the l= tag),
    fed in chunks: ``update(chunk)`` then ``digest()``."""

    def __init__(self, hasher, relaxed: bool, limit: int | None = None):
        self._prefixes = _Prefixes(hasher, [] if limit is None else [limit])
        self._limit = limit
        self._canon = _CanonicalBody(relaxed, [self._prefixes])

    def update(self, chunk: bytes) -> None:
        self._canon.update(chunk)

    def digest(self) -> bytes:
        self._canon.finish()
        return self._prefixes.finish()[self._limit]


class _BodyWanted:
    """A body hash asked for, as ``body_digests`` reads a signature."""

    __slots__ = ("algorithm", "limit", "body_key")

    def __init__(self, relaxed: bool, algorithm: bytes, limit):
        self.algorithm, self.limit = algorithm, limit
        self.body_key = (relaxed, algorithm.partition(b"-")[2], limit)


def body_digest(body, relaxed: bool, algorithm: bytes, limit=None) -> bytes:
    """The body hash of ``body`` (a :class:`~mailwarden.model.Body`, bytes
    or None) for a signature of ``algorithm`` (``rsa-sha256``, ...),
    relaxed or simple, cut at ``limit`` (its l=) when not None."""
    wanted = _BodyWanted(relaxed, algorithm, limit)
    return body_digests(body, [wanted], lambda: False)[wanted.body_key]


def body_digests(body, work: list, over_budget) -> dict:
    """(relaxed, hash name, l=) -> digest for every signature in ``work``
    (``body`` a :class:`~mailwarden.model.Body`, bytes or None):
    the body is read once, canonicalized once per canonicalization and
    hashed once per (canonicalization, hash); ``over_budget()`` is asked
    after each block (OverBudget when it says so)."""
    wanted: dict = {}                      # (relaxed, hash name) -> (hasher, limits)
    for w in work:
        hasher, limits = wanted.setdefault(w.body_key[:2], (HASH_ALGORITHMS[w.algorithm], []))
        if w.limit is not None:
            limits.append(w.limit)
    prefixes = {key: _Prefixes(hasher, limits) for key, (hasher, limits) in wanted.items()}
    canons = [_CanonicalBody(relaxed, [p for (r, _h), p in prefixes.items() if r == relaxed])
              for relaxed in {r for r, _h in prefixes}]
    if body is None:
        chunks = ()
    elif isinstance(body, (bytes, bytearray, memoryview)):
        chunks = (body,)
    else:
        chunks = body.chunks()
    for chunk in chunks:
        for canon in canons:
            canon.update(chunk)
        if over_budget():
            raise OverBudget()
    for canon in canons:
        canon.finish()
    out = {}
    for (relaxed, hash_name), p in prefixes.items():
        for limit, digest in p.finish().items():
            out[(relaxed, hash_name, limit)] = digest
    return out


def select_headers(fields: list, names: list, key=bytes.lower) -> list:
    """The fields ``names`` (an h= list, lower case) asks for, in its order:
    each name takes the last instance of that name not taken yet, from the
    bottom up (RFC 6376 §5.4.2); a name with none left takes nothing.
    ``key(field name)`` is the name compared.  Linear: the instances of the
    names asked for are indexed once."""
    wanted = set(names)
    instances: dict = {}
    for one in fields:
        name = key(one[0])
        if name in wanted:
            instances.setdefault(name, []).append(one)
    out = []
    for name in names:
        left = instances.get(name)
        if left:
            out.append(left.pop())
    return out


def relaxed_name(name: bytes) -> bytes:
    return name.lower().rstrip()


_UNFOLD = re.compile(rb"\r?\n")
_WSP = re.compile(rb"[\t ]+")
# dkimpy's RE_BTAG (the b= tag of a signature field and its value, and the
# field's line end when b= is last) written without its nested
# quantifiers: its FWS, ((\s*\r?\n)?\s+)?, matches what \s* matches, and
# (FWS [base64])* what ([\s base64]* [base64])? does, so both match the
# same text at each place; this one in C, without backtracking per octet
_BTAG = re.compile(rb"([;\s]b\s*=)(?:[\sA-Za-z0-9+/=]*[A-Za-z0-9+/=])?(?:\r?\n\Z)?")


def no_space(value: bytes) -> bytes:
    """``value`` without its white space: what ``re.sub(rb"\\s+", b"", value)``
    makes (bytes.split() splits at the same six octets: SP, HTAB, LF, CR,
    VT, FF), without the regular expression engine."""
    return b"".join(value.split())


def strip_b(value: bytes) -> bytes:
    """A signature field's value with its b= value emptied (RFC 6376 §3.7),
    as dkimpy's ``RE_BTAG.sub(b"\\1", value)`` makes it."""
    return _BTAG.sub(rb"\1", value)


def relaxed_field(name: bytes, value: bytes) -> bytes:
    """A header field in relaxed canonical form (RFC 6376 §3.4.2),
    ``name:value`` and its CRLF, as dkimpy's ``Relaxed.canonicalize_headers``
    makes it: the name in lower case without the white space before the
    colon; the value unfolded (each CRLF, or LF, removed), each run of SP
    and HTAB one SP, white space at both ends removed."""
    if b"\n" in value:
        value = _UNFOLD.sub(b"", value)
    if b"\t" in value or b"  " in value:
        value = _WSP.sub(b" ", value)
    return name.lower().rstrip() + b":" + value.strip() + b"\r\n"


def header_hash_input(selected: list, sig_field: tuple, relaxed: bool) -> bytes:
    """What a signature's header hash covers (RFC 6376 §3.7): the
    ``selected`` fields ((name, value as on the wire, CRLF at its end), in
    h= order) canonicalized, then the signature field ``sig_field`` with
    its b= value emptied and no CRLF at its end."""
    name, value = sig_field
    if relaxed:
        parts = [relaxed_field(n, v) for n, v in selected]
        parts.append(relaxed_field(name, strip_b(value)).rstrip())
    else:
        parts = [n + b":" + v for n, v in selected]
        parts.append((name + b":" + strip_b(value)).rstrip())
    return b"".join(parts)


def signature_valid(key: "PublicKey", algorithm: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` by ``key`` verifies over ``data`` hashed by the
    hash of ``algorithm``: RSA by OpenSSL, Ed25519 over the hash (RFC 8463
    §3).  KeyFormatError for a key that cannot check it."""
    digest = HASH_ALGORITHMS[algorithm](data).digest()
    if key.ktag == b"rsa":
        try:
            key.rsa.verify(signature, digest, padding.PKCS1v15(), _PREHASHED[algorithm])
        except InvalidSignature:
            return False
        except ValueError as exc:
            raise dkim.KeyFormatError(f"RSA key cannot check this signature: {exc}") from None
        return True
    if key.ktag == b"ed25519":
        try:
            key.pk.verify(digest, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True
    raise dkim.KeyFormatError(f"unknown key type {(key.ktag or b'?').decode('ascii', 'replace')}")
