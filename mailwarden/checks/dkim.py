"""dkim: DKIM signature verification (RFC 6376), RSA and Ed25519 (RFC 8463).

Every DKIM-Signature of the message is checked, from the top, up to
``max_signatures``; each gets its own result, symbol and
Authentication-Results entry ``dkim=RESULT header.d= header.s= header.a=
header.b=`` (the first 8 characters of ``b=``, RFC 6008).  A message
without signatures gets ``dkim=none``.  Allow-listed clients are not
checked (nothing is judged for them).

The message checked is the header fields exactly as received
(values untouched: no re-decoding, no re-folding, CRLF line ends) and the
body as received.  The key is looked up here, through this message's
:class:`~mailwarden.dns.Lookup`; that is what lets a DNS timeout be told
from a missing key.  dkimpy parses the signature, reads the key record and
canonicalizes (RFC 6376 §3.4); the hashes and the signature are checked
here (§6.1.3), the RSA signature by OpenSSL (``cryptography``), so that
the arithmetic is not done in Python.  A key record read once is kept,
parsed, by its exact text (``_read_key``).

Results (RFC 8601 §2.7.1), each with its own symbol:

* ``pass``: the signature verifies (``DKIM_PASS``);
* ``fail``: the signed header fields do not match (``DKIM_FAIL``), the body
  hash does not match (``DKIM_BODY_MISMATCH``), or the key has been revoked
  with an empty ``p=`` (``DKIM_KEY_REVOKED``; RFC 6376 §6.1.2 says treat it
  as a failed check);
* ``policy``: the signature may verify but local policy does not accept
  it: an RSA key shorter than ``min_key_bits`` (``DKIM_KEY_TOO_SHORT``, RFC
  8301 §3.2), or rsa-sha1 when ``rsa_sha1 = policy`` (``DKIM_SHA1``);
* ``neutral``: the signature cannot be processed: a syntax error, ``From``
  not signed, an unknown algorithm (``DKIM_INVALID``), or an ``x=`` in
  the past (``DKIM_EXPIRED``; RFC 6376 §6.1.1 lets a verifier ignore it);
* ``temperror``: SERVFAIL, timeout or an exhausted lookup budget on the
  key (``DKIM_TEMPERROR``);
* ``permerror``: no key published (``DKIM_NO_KEY``) or a key that cannot be
  used (malformed, or of another type than ``a=``: ``DKIM_KEY_INVALID``).

rsa-sha1 (``rsa_sha1``): RFC 8301 §3.1 says verifiers must not consider
such signatures valid, so by default a verifying rsa-sha1 signature is a
``fail`` (``DKIM_SHA1``); ``policy`` reports it as ``policy``; ``pass``
accepts it as before RFC 8301.

INI keys (``[check.dkim]``):
  enabled             yes
  tempfail_on_error   yes
  max_signatures      10     signatures checked at most, from the top
  min_key_bits        1024   shorter RSA keys give "policy" (RFC 8301)
  rsa_sha1            fail   fail, policy or pass
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass

import dkim as dkimpy
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (
    CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed,
)
from dkim.crypto import HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value

from ..config import opt, parse_choice, parse_int
from . import Check, CheckOptions

_WS = re.compile(rb"\s+")


@dataclass(frozen=True)
class DkimOptions(CheckOptions):
    max_signatures: int = opt(10, parse_int(1, 100))
    min_key_bits: int = opt(1024, parse_int(512, 16384))
    rsa_sha1: str = opt("fail", parse_choice("fail", "policy", "pass"))


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


class DkimCheck(Check):
    name = "dkim"
    replayable = True              # pure but for its lookups (see checks/__init__)
    method = "dkim"
    Options = DkimOptions
    skip_for = frozenset({"allowlisted"})
    symbols = {
        "DKIM_PASS": 0.0,
        "DKIM_NONE": 0.0,
        "DKIM_FAIL": 1.0,
        "DKIM_BODY_MISMATCH": 1.0,
        "DKIM_KEY_REVOKED": 1.0,
        "DKIM_KEY_TOO_SHORT": 0.5,
        "DKIM_SHA1": 0.5,
        "DKIM_INVALID": 0.5,
        "DKIM_EXPIRED": 0.5,
        "DKIM_TEMPERROR": 0.0,
        "DKIM_NO_KEY": 0.5,
        "DKIM_KEY_INVALID": 0.5,
    }

    def on_eom(self, ctx):
        msg = ctx.msg
        count = sum(1 for name, _ in msg.headers if name.lower() == "dkim-signature")
        if not count:
            return self.result("none", "DKIM_NONE")
        headers = msg.wire_headers()
        out = []
        for idx in range(min(count, self.options.max_signatures)):
            out.append(self._verify_one(ctx, headers, idx))
        if count > self.options.max_signatures:
            ctx.log.info("dkim: %d signatures, checked the first %d", count,
                         self.options.max_signatures)
        return out

    # -- one signature -------------------------------------------------------

    def _verify_one(self, ctx, headers: list, idx: int):
        sig_header = [h for h in headers if h[0].lower() == b"dkim-signature"][idx]
        raw = sig_header[1]
        try:
            tags = parse_tag_value(raw)
        except InvalidTagValueList as exc:
            return self.result("neutral", "DKIM_INVALID", f"signature syntax: {exc}")
        props = _properties(tags)

        def res(result, symbol, reason=""):
            return self.result(result, symbol, reason, properties=props)

        # expiry on our clock, before dkimpy's own test (which allows 10 hours)
        expires = tags.get(b"x", b"").strip()
        if expires.isdigit() and int(expires) < ctx.now():
            return res("neutral", "DKIM_EXPIRED", f"signature expired (x={_text(expires)})")
        try:
            dkimpy.validate_signature_fields(tags)
        except dkimpy.ValidationError as exc:
            return res("neutral", "DKIM_INVALID", str(exc))
        signed = [h.strip().lower() for h in tags[b"h"].split(b":")]     # RFC 6376 §3.5
        if b"from" not in signed:
            # RFC 6376 §6.1.1: a signature not covering From is ignored
            return res("neutral", "DKIM_INVALID", "From is not signed")

        domain, selector = _text(tags[b"d"]), _text(tags[b"s"])
        key_name = f"{selector}._domainkey.{domain}"
        answer = ctx.dns.query(key_name, "TXT", decisive=True)
        if answer.temporary:
            return res("temperror", "DKIM_TEMPERROR", f"key lookup: {answer.describe()}")
        if not answer.ok or not answer.records:
            return res("permerror", "DKIM_NO_KEY", f"no key at {key_name}")
        key_text = answer.records[0].encode("utf-8", "replace")
        try:
            key_tags = parse_tag_value(key_text)
        except InvalidTagValueList as exc:
            return res("permerror", "DKIM_KEY_INVALID", f"key record syntax: {exc}")
        if not _WS.sub(b"", key_tags.get(b"p", b"")):
            return res("fail", "DKIM_KEY_REVOKED", "key revoked")
        try:
            key = _read_key(key_name, key_text)
        except (dkimpy.KeyFormatError, ValueError) as exc:
            return res("permerror", "DKIM_KEY_INVALID", f"unusable key: {exc}")
        keysize, ktag = key.size, key.ktag
        algorithm = tags[b"a"].lower()
        if ktag is None or not algorithm.startswith(ktag + b"-"):
            return res("permerror", "DKIM_KEY_INVALID",
                       f"key type {_text(ktag or b'?')} does not match a={_text(algorithm)}")
        if ktag == b"rsa" and keysize < self.options.min_key_bits:
            return res("policy", "DKIM_KEY_TOO_SHORT",
                       f"RSA key of {keysize} bits, less than {self.options.min_key_bits}")

        if key.tlsrpt:
            return res("neutral", "DKIM_INVALID", "key is for TLSRPT (s=tlsrpt), not mail")
        try:
            valid = _verify(headers, ctx.msg.body, tags, signed, sig_header, key)
        except _BodyMismatch:
            return res("fail", "DKIM_BODY_MISMATCH", "body hash mismatch")
        except dkimpy.ValidationError as exc:
            return res("neutral", "DKIM_INVALID", str(exc))
        except (dkimpy.MessageFormatError, dkimpy.ParameterError) as exc:
            return res("neutral", "DKIM_INVALID", str(exc))
        except dkimpy.KeyFormatError as exc:
            return res("permerror", "DKIM_KEY_INVALID", str(exc))
        if not valid:
            return res("fail", "DKIM_FAIL", "signature did not verify")
        if algorithm == b"rsa-sha1" and self.options.rsa_sha1 != "pass":
            return res(self.options.rsa_sha1, "DKIM_SHA1", "rsa-sha1 is not accepted (RFC 8301)")
        return res("pass", "DKIM_PASS")


class _Key:
    """A key record as read: dkimpy's parse, and for RSA the key for OpenSSL."""

    __slots__ = ("pk", "size", "ktag", "tlsrpt", "rsa")

    def __init__(self, pk, size, ktag, tlsrpt):
        self.pk, self.size, self.ktag, self.tlsrpt = pk, size, ktag, tlsrpt
        self.rsa = None
        if ktag == b"rsa":
            self.rsa = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key()


@functools.lru_cache(maxsize=512)
def _read_key(key_name: str, key_text: bytes) -> _Key:
    """The key record ``key_text``, parsed (KeyFormatError, ValueError if
    unusable); by its exact text, so the same record is parsed once."""
    return _Key(*dkimpy.evaluate_pk(key_name, key_text))


class _BodyMismatch(Exception):
    pass


_PREHASHED = {b"rsa-sha256": Prehashed(hashes.SHA256()), b"rsa-sha1": Prehashed(hashes.SHA1())}


def _b64(value: bytes, tag: str) -> bytes:
    try:
        return base64.b64decode(_WS.sub(b"", value), validate=True)
    except (binascii.Error, ValueError):
        raise dkimpy.MessageFormatError(f"{tag}= is not valid base64") from None


_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")          # white space that is not one SP


class BodyHash:
    """The body hash of RFC 6376 §3.4.3 (simple) or §3.4.4 (relaxed), fed in
    chunks, so that a large spooled body is never held whole.

    Byte for byte what dkimpy computes on the whole body: lines end at LF
    (a CR before it belongs to the line end); relaxed drops white space at
    line ends and makes other runs one SP; empty lines at the end are
    dropped; a last line without its CRLF gets one; an empty body is CRLF
    (simple) or nothing (relaxed).  ``limit``: the l= tag, bytes hashed at
    most."""

    def __init__(self, hasher, relaxed: bool, limit: int | None = None):
        self.hash = hasher()
        self.relaxed = relaxed
        self.left = limit
        self.partial = b""          # a line not ended yet
        self.empty = 0              # empty lines held back: they count only if more follows
        self.wrote = False

    def _emit(self, data: bytes) -> None:
        if self.left is not None:
            data = data[:self.left]
            self.left -= len(data)
        self.hash.update(data)

    def _lines(self, text: bytes) -> None:
        """Complete lines, their line ends removed, joined by LF."""
        for line in text.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if self.relaxed:
                line = line.rstrip(b" \t")
                if b"\t" in line or b"  " in line:
                    line = _WSP_RUN.sub(b" ", line)
            if not line:
                self.empty += 1
                continue
            if self.empty:
                self._emit(b"\r\n" * self.empty)
                self.empty = 0
            self._emit(line + b"\r\n")
            self.wrote = True

    def update(self, chunk: bytes) -> None:
        data = self.partial + chunk if self.partial else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self.partial = data
            return
        self.partial = data[end + 1:]
        self._lines(data[:end])

    def digest(self) -> bytes:
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
        return self.hash.digest()


def _verify(headers: list, body, sig: dict, include_headers: list, sig_header: tuple,
            key: _Key) -> bool:
    """RFC 6376 §6.1.3 for one signature whose fields and key are checked:
    the body hash (else _BodyMismatch), then the header hash and signature.
    ``headers``: the message's as :meth:`~mailwarden.model.Message.wire_headers`
    gives them; ``body``: its :class:`~mailwarden.model.Body` (or None),
    read block by block."""
    try:
        canon = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as exc:
        raise dkimpy.MessageFormatError(f"invalid c= value: {exc.args[0]}") from None
    algorithm = sig[b"a"].lower()
    hasher = HASH_ALGORITHMS[algorithm]
    body_hash = BodyHash(hasher, canon.body_algorithm is Relaxed,
                         int(sig[b"l"]) if b"l" in sig else None)
    for chunk in (body.chunks() if body is not None else ()):
        body_hash.update(chunk)
    if body_hash.digest() != _b64(sig[b"bh"], "bh"):
        raise _BodyMismatch()
    # a From field added above the signed one must break the signature
    # (RFC 6376 §8.15): ask for one instance more than the signer signed
    if b"from" in include_headers:
        include_headers = include_headers + [b"from"]
    h = hasher()
    wanted = set(include_headers)       # only these are hashed: canonicalize only these
    signed = canon.canonicalize_headers([field for field in headers
                                         if field[0].lower().rstrip() in wanted])
    dkimpy.hash_headers(h, canon, signed, include_headers, sig_header, sig)
    signature = _b64(sig[b"b"], "b")
    if key.ktag == b"rsa":
        try:
            key.rsa.verify(signature, h.digest(), padding.PKCS1v15(), _PREHASHED[algorithm])
        except InvalidSignature:
            return False
        except ValueError as exc:
            raise dkimpy.KeyFormatError(f"RSA key cannot check this signature: {exc}") from None
        return True
    if key.ktag == b"ed25519":
        try:
            key.pk.verify(h.digest(), signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True
    raise dkimpy.KeyFormatError(f"unknown key type {_text(key.ktag or b'?')}")


def _properties(tags: dict) -> tuple:
    props = [("header.d", _text(tags.get(b"d", b"")))]
    if b"i" in tags:
        props.append(("header.i", _text(tags[b"i"])))
    props += [("header.s", _text(tags.get(b"s", b""))),
              ("header.a", _text(tags.get(b"a", b""))),
              ("header.b", _text(_WS.sub(b"", tags.get(b"b", b""))[:8]))]
    return tuple(p for p in props if p[1])


CHECKS = (DkimCheck,)
