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
The dkimpy internals used here (``rfc822_parse``, ``fold``, ``RE_BTAG``,
``hash_headers``) are pinned to a release range in setup.cfg and checked by
tests/unit/test_dkimpy_contract.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass, field

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from .address import AddressProblem, normalize_domain
from .options import ValueProblem, parse_list

__all__ = ["KeyProblem", "SigningKey", "load_key", "sign", "arc_set", "txt_record",
           "split_txt", "parse_key_specs", "MIN_RSA_BITS", "DEFAULT_SIGN_HEADERS"]

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

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def _arc_header(name: bytes, fields: list, key: SigningKey, hashed: list,
                standardize: bool) -> bytes:
    """One ARC-Message-Signature or ARC-Seal value (after the colon, no
    trailing CRLF): ``hashed`` are the relaxed-canonical (name, value)
    fields that come before the signature field itself in the hash."""
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
    hasher = hashlib.sha256()
    for field_name, value in hashed:
        hasher.update(field_name + b":" + value)
    ((cname, cvalue),) = _RELAXED.canonicalize_headers([(name, b" " + unsigned)])
    hasher.update(cname + b":" + cvalue.rstrip())
    fields = [(k, base64.b64encode(key.sign_digest(hasher.digest())) if k == b"b" else v)
              for k, v in fields]
    value = b"; ".join(b"=".join(f) for f in fields)
    if not standardize:
        value = dkim.fold(value + b"\r\n", namelen=len(name), linesep=b"\r\n").rstrip(b"\r\n")
    return value


def arc_set(message: bytes, key: SigningKey, instance: int, cv: str, aar: bytes,
            prior: list, include: list, now: float | None = None,
            standardize: bool = False) -> list:
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
    suite expects (sorted, unfolded).  RFC 8617 knows rsa-sha256 only.
    """
    if key.algorithm != "rsa-sha256":
        raise dkim.ParameterError("ARC seals with rsa-sha256 only (RFC 8617 §4.1.3)")
    if "from" not in include:
        raise dkim.ParameterError("the From header field must be signed (RFC 6376 §5.4)")
    headers, body = dkim.rfc822_parse(message)
    stamp = str(int(time.time() if now is None else now)).encode("ascii")
    i = str(instance).encode("ascii")
    domain, selector = key.domain.encode("ascii"), key.selector.encode("ascii")
    aar_value = b"i=" + i + b"; " + aar.strip()
    bodyhash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    include_b = [h.encode("ascii") for h in include]
    ams_fields = [(b"i", i), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"),
                  (b"d", domain), (b"s", selector), (b"t", stamp),
                  (b"h", b" : ".join(include_b)), (b"bh", bodyhash), (b"b", b"0" * 60)]
    signed = dkim.select_headers(_RELAXED.canonicalize_headers(headers), include_b)
    ams = _arc_header(b"ARC-Message-Signature", ams_fields, key, signed, standardize)
    as_fields = [(b"i", i), (b"cv", cv.encode("ascii")), (b"a", b"rsa-sha256"),
                 (b"d", domain), (b"s", selector), (b"t", stamp), (b"b", b"0" * 60)]
    chain = list(prior) + [(b"ARC-Authentication-Results", b" " + aar_value),
                           (b"ARC-Message-Signature", b" " + ams)]
    seal = _arc_header(b"ARC-Seal", as_fields, key, _RELAXED.canonicalize_headers(chain),
                       standardize)
    return [(b"ARC-Seal", seal), (b"ARC-Message-Signature", ams),
            (b"ARC-Authentication-Results", aar_value)]
