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
canonicalizes header fields (RFC 6376 §3.4); the rest of RFC 6376 where
dkimpy departs from it is checked here (``q=`` and the key's ``s=``, ``t=``
and ``h=`` as colon-separated lists, ``i=`` decoded from
dkim-quoted-printable, a key record without ``p=``), and so are the body
hash, the header selection and the signature (§6.1.3), the RSA signature by
OpenSSL (``cryptography``), so that the arithmetic is not done in Python.
A key record read once is kept, parsed, by its exact text, in a cache of
the check's own (:class:`KeyCache`: bounded, emptied by a configuration
reload; the DNS cache decides how long the same text comes back).  Header
fields and the signature are canonicalized here (:func:`relaxed_field`,
:func:`strip_b`), the same bytes dkimpy makes, in a few bytes operations
per field; ARC (:mod:`mailwarden.checks.arc`) verifies with the same code.

Work is bounded per message: every signature is first read and its key
fetched; then the body is read once, and hashed once per (body
canonicalization, hash algorithm), whatever the ``l=`` values; header
fields are selected in linear time; ``h=`` may name ``max_signed_headers``
fields at most; and verification stops when ``cpu_budget`` seconds of CPU
are spent on the message (the signatures left are ``policy``,
``DKIM_CPU_BUDGET``, and a line is logged).

Results (RFC 8601 §2.7.1), each with its own symbol:

* ``pass``: the signature verifies (``DKIM_PASS``);
* ``fail``: the signed header fields do not match (``DKIM_FAIL``), the body
  hash does not match (``DKIM_BODY_MISMATCH``), or the key has been revoked
  with an empty ``p=`` (``DKIM_KEY_REVOKED``; RFC 6376 §6.1.2 says treat it
  as a failed check);
* ``policy``: the signature may verify but local policy does not accept
  it: an RSA key shorter than ``min_key_bits`` (``DKIM_KEY_TOO_SHORT``, RFC
  8301 §3.2), rsa-sha1 when ``rsa_sha1 = policy`` (``DKIM_SHA1``), or the
  message's CPU budget was used up before it was checked
  (``DKIM_CPU_BUDGET``);
* ``neutral``: the signature cannot be processed: a syntax error, ``From``
  not signed, an unknown algorithm or no known ``q=`` method
  (``DKIM_INVALID``), or an ``x=`` in the past (``DKIM_EXPIRED``; RFC 6376
  §6.1.1 lets a verifier ignore it);
* ``temperror``: SERVFAIL, timeout or an exhausted lookup budget on the
  key (``DKIM_TEMPERROR``);
* ``permerror``: no key published (``DKIM_NO_KEY``); a key that cannot be
  used (malformed, without ``p=``, of another type than ``a=``, not for
  email in ``s=``, not allowing the hash of ``a=`` in ``h=``, or with
  ``t=s`` and an ``i=`` in a subdomain of ``d=``: ``DKIM_KEY_INVALID``); a
  key name that cannot exist in the DNS (``s=`` and ``d=`` with an empty
  label, a label over 63 octets, a name over 253, a character outside
  letters, digits, ``-`` and ``_``, a label that starts or ends with
  ``-``: ``DKIM_BAD_NAME``; asked of no
  server); more than ``max_signed_headers`` names in ``h=``
  (``DKIM_TOO_MANY_HEADERS``).

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
  max_signed_headers  100    names in one signature's h= at most (more: permerror)
  cpu_budget          5s     CPU time for all signatures of one message
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass

import dkim as dkimpy
import idna
from dkim.canonicalization import (
    CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed,
)
from dkim.util import InvalidTagValueList, parse_tag_value

from ..signing import KeyCache, OverBudget, PublicKey, body_digests, header_hash_input, \
    no_space, relaxed_name, select_headers, signature_valid
from ..options import opt, parse_choice, parse_cpu_budget, parse_int
from ..model import Trust
from ..orgdomain import is_label
from . import Check, CheckOptions



@dataclass(frozen=True)
class DkimOptions(CheckOptions):
    max_signatures: int = opt(10, parse_int(1, 100))
    min_key_bits: int = opt(1024, parse_int(512, 16384))
    rsa_sha1: str = opt("fail", parse_choice("fail", "policy", "pass"))
    max_signed_headers: int = opt(100, parse_int(5, 10000))
    cpu_budget: float = opt(5.0, parse_cpu_budget)


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


# -- names and tags -----------------------------------------------------------

def key_name(selector: bytes, domain: bytes) -> tuple:
    """(``SELECTOR._domainkey.DOMAIN``, None), or (None, why) for a name
    that cannot exist in the DNS, so that no server is asked (RFC 1035
    §2.3.4: labels of 1 to 63 octets, names of 253 at most; RFC 6376 §3.1:
    the selector and domain are sub-domains).  U-labels (RFC 8616) are
    turned into A-labels by UTS #46."""
    labels = []
    for tag, raw in (("s", selector), ("d", domain)):
        raw = no_space(raw)         # folding white space a signer put inside
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{tag}= is not UTF-8"
        for label in text.split("."):
            if not label:
                return None, f"{tag}= has an empty label"
            # checked before IDNA too: an A-label is never shorter than its
            # U-label, and Punycode of a long text is slow
            if len(label) > 63:
                return None, f"{tag}= has a label of {len(label)} characters (63 at most)"
            if not label.isascii():
                try:
                    label = idna.encode(label, uts46=True, std3_rules=False).decode("ascii")
                except (idna.IDNAError, UnicodeError):
                    return None, f"{tag}= has a label that is no valid IDN"
            if len(label) > 63:
                return None, f"{tag}= has a label of {len(label)} octets (63 at most)"
            if not is_label(label, underscore=True):
                return None, f"{tag}= has a character a DNS label here cannot have"
            labels.append(label)
        if tag == "s":
            labels.append("_domainkey")
    name = ".".join(labels)
    if len(name) > 253:
        return None, f"the key name has {len(name)} octets (253 at most)"
    return name, None


_QP_BYTE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_qp(value: bytes) -> bytes:
    """A dkim-quoted-printable value (RFC 6376 §2.11), decoded: white space
    is dropped, ``=XX`` is the octet XX; any other ``=`` is a syntax error
    (ValueError)."""
    value = no_space(value)
    decoded = _QP_BYTE.sub(lambda m: bytes((int(m.group(1), 16),)), value)
    if b"=" in _QP_BYTE.sub(b"", value):
        raise ValueError("i= is not valid dkim-quoted-printable")
    return decoded


def colon_list(value: bytes) -> list:
    """A colon-separated tag value, each item stripped and lower-cased."""
    return [item.strip().lower() for item in value.split(b":")]


class DkimCheck(Check):
    name = "dkim"
    replayable = True              # pure but for its lookups (see checks/__init__)
    method = "dkim"
    Options = DkimOptions
    skip_for = frozenset({Trust.ALLOWLISTED})
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
        "DKIM_BAD_NAME": 0.5,
        "DKIM_TOO_MANY_HEADERS": 0.5,
        "DKIM_CPU_BUDGET": 0.5,
    }

    # CPU seconds of the calling thread; an instance attribute may replace
    # it (tests move it by hand)
    cpu_clock = staticmethod(time.thread_time)

    def __init__(self, options, services):
        super().__init__(options, services)
        self.keys = KeyCache()

    def on_eom(self, ctx):
        msg = ctx.msg
        headers = msg.wire_headers()
        sig_fields = [h for h in headers if h[0].lower() == b"dkim-signature"]
        if not sig_fields:
            return self.result("none", "DKIM_NONE")
        limit = self.options.max_signatures
        # first every signature's fields and key (all lookups happen here,
        # so that a replay after a lookup repeats no hashing) ...
        prepared = [self._prepare(ctx, field) for field in sig_fields[:limit]]
        if len(sig_fields) > limit:
            ctx.log.info("dkim: %d signatures, checked the first %d", len(sig_fields), limit)
        # ... then the hashing, under one CPU budget
        return self._verify_all(ctx, headers, prepared)

    # -- one signature: fields and key ---------------------------------------

    def _prepare(self, ctx, sig_header: tuple):
        """A final Result, or the _Work to verify."""
        raw = sig_header[1]
        try:
            tags = parse_tag_value(raw)
        except InvalidTagValueList as exc:
            return self.result("neutral", "DKIM_INVALID", f"signature syntax: {exc}")
        identity = None
        if b"i" in tags:
            try:
                identity = decode_qp(tags[b"i"])
            except ValueError as exc:
                return self.result("neutral", "DKIM_INVALID", str(exc),
                                   properties=_properties(tags))
            if b"@" not in identity:          # RFC 6376 §3.5: [Local-part] "@" domain-name
                return self.result("neutral", "DKIM_INVALID", "i= has no @",
                                   properties=_properties(tags, identity))
        props = _properties(tags, identity)

        def res(result, symbol, reason=""):
            return self.result(result, symbol, reason, properties=props)

        # expiry on our clock, before dkimpy's own test (which allows 10 hours)
        expires = tags.get(b"x", b"").strip()
        if expires.isdigit() and int(expires) < ctx.now():
            return res("neutral", "DKIM_EXPIRED", f"signature expired (x={_text(expires)})")
        # RFC 6376 §3.5: q= is a list, unknown methods are ignored; i= is
        # compared decoded.  dkimpy checks the rest of the fields.
        checked = dict(tags)
        if b"q" in checked:
            if b"dns/txt" not in colon_list(checked[b"q"]):
                return res("neutral", "DKIM_INVALID",
                           f"no known query method in q={_text(checked[b'q'])}")
            del checked[b"q"]
        if identity is not None:
            checked[b"i"] = identity
        try:
            dkimpy.validate_signature_fields(checked)
        except dkimpy.ValidationError as exc:
            return res("neutral", "DKIM_INVALID", str(exc))
        signed = [h.strip().lower() for h in tags[b"h"].split(b":")]     # RFC 6376 §3.5
        if len(signed) > self.options.max_signed_headers:
            return res("permerror", "DKIM_TOO_MANY_HEADERS",
                       f"h= names {len(signed)} header fields, more than "
                       f"{self.options.max_signed_headers}")
        if b"from" not in signed:
            # RFC 6376 §6.1.1: a signature not covering From is ignored
            return res("neutral", "DKIM_INVALID", "From is not signed")

        name, problem = key_name(tags[b"s"], tags[b"d"])
        if name is None:
            return res("permerror", "DKIM_BAD_NAME", f"no such key name: {problem}")
        answer = ctx.dns.query(name, "TXT", decisive=True)
        if answer.temporary:
            return res("temperror", "DKIM_TEMPERROR", f"key lookup: {answer.describe()}")
        if not answer.ok or not answer.records:
            return res("permerror", "DKIM_NO_KEY", f"no key at {name}")
        record = self.keys.get(answer.records[0], _read_record)
        key_tags = record.tags
        if key_tags is None:
            return res("permerror", "DKIM_KEY_INVALID", record.problem)
        if b"p" not in key_tags:
            # RFC 6376 §3.6.1: p= is required; only an empty one revokes
            return res("permerror", "DKIM_KEY_INVALID", "key record without p=")
        if record.revoked:
            return res("fail", "DKIM_KEY_REVOKED", "key revoked")
        algorithm = tags[b"a"].lower()
        problem = _key_refuses(key_tags, algorithm, identity, tags[b"d"])
        if problem:
            return res("permerror", "DKIM_KEY_INVALID", problem)
        services = colon_list(key_tags.get(b"s", b"*"))
        if b"*" not in services and b"email" not in services and b"tlsrpt" in services:
            return res("neutral", "DKIM_INVALID", "key is for TLSRPT (s=tlsrpt), not mail")
        key = record.key
        if key is None:
            return res("permerror", "DKIM_KEY_INVALID", record.problem)
        ktag = key.ktag
        if ktag is None or not algorithm.startswith(ktag + b"-"):
            return res("permerror", "DKIM_KEY_INVALID",
                       f"key type {_text(ktag or b'?')} does not match a={_text(algorithm)}")
        if ktag == b"rsa" and key.size < self.options.min_key_bits:
            return res("policy", "DKIM_KEY_TOO_SHORT",
                       f"RSA key of {key.size} bits, less than {self.options.min_key_bits}")
        try:
            canon = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError as exc:
            return res("neutral", "DKIM_INVALID", f"invalid c= value: {exc.args[0]}")
        limit = int(tags[b"l"]) if b"l" in tags else None
        return _Work(tags, props, signed, sig_header, key, canon, algorithm, limit)

    # -- hashing, under the budget -------------------------------------------

    def _verify_all(self, ctx, headers: list, prepared: list) -> list:
        started = self.cpu_clock()
        budget = self.options.cpu_budget

        def spent() -> float:
            return self.cpu_clock() - started

        work = [w for w in prepared if isinstance(w, _Work)]
        digests = {}
        if work:
            try:
                digests = body_digests(ctx.msg.body, work, lambda: spent() > budget)
            except OverBudget:
                digests = None
        out = []
        skipped = 0
        for item in prepared:
            if not isinstance(item, _Work):
                out.append(item)
                continue
            if digests is None or spent() > budget:
                skipped += 1
                out.append(self.result("policy", "DKIM_CPU_BUDGET",
                                       f"not checked: the CPU budget of {budget:g}s "
                                       f"for this message is used up", properties=item.props))
                continue
            out.append(self._verify_one(item, headers, digests))
        if skipped:
            ctx.log.warning("dkim: CPU budget of %gs used up (%.2fs); %d of %d signatures "
                            "not checked", budget, spent(), skipped, len(work))
        return out

    def _verify_one(self, work: "_Work", headers: list, digests: dict):
        def res(result, symbol, reason=""):
            return self.result(result, symbol, reason, properties=work.props)

        try:
            if digests[work.body_key] != _b64(work.tags[b"bh"], "bh"):
                return res("fail", "DKIM_BODY_MISMATCH", "body hash mismatch")
            valid = _verify_headers(headers, work)
        except dkimpy.ValidationError as exc:
            return res("neutral", "DKIM_INVALID", str(exc))
        except (dkimpy.MessageFormatError, dkimpy.ParameterError) as exc:
            return res("neutral", "DKIM_INVALID", str(exc))
        except dkimpy.KeyFormatError as exc:
            return res("permerror", "DKIM_KEY_INVALID", str(exc))
        if not valid:
            return res("fail", "DKIM_FAIL", "signature did not verify")
        if work.algorithm == b"rsa-sha1" and self.options.rsa_sha1 != "pass":
            return res(self.options.rsa_sha1, "DKIM_SHA1", "rsa-sha1 is not accepted (RFC 8301)")
        return res("pass", "DKIM_PASS")


def _key_refuses(key_tags: dict, algorithm: bytes, identity, domain: bytes) -> str:
    """Why the key record does not allow this signature (RFC 6376 §3.6.1,
    §6.1.2), or ""."""
    if b"h" in key_tags:
        hash_name = algorithm.partition(b"-")[2]
        if hash_name not in colon_list(key_tags[b"h"]):
            return (f"the key allows h={_text(key_tags[b'h'])}, not the hash of "
                    f"a={_text(algorithm)}")
    services = colon_list(key_tags.get(b"s", b"*"))
    if not {b"*", b"email", b"tlsrpt"} & set(services):
        return f"the key is not for email (s={_text(key_tags[b's'])})"
    if identity is not None and b"s" in colon_list(key_tags.get(b"t", b"")):
        i_domain = identity.rpartition(b"@")[2].lower()
        if i_domain != domain.strip().lower():
            return "the key has t=s: i= must be in d= itself, not a subdomain"
    return ""


def _for_dkimpy(key_tags: dict) -> bytes:
    """The key record as dkimpy reads it: s= (which dkimpy takes as one
    value, not a list) and h= are checked here and left out."""
    return b"; ".join(k + b"=" + v for k, v in key_tags.items() if k not in (b"s", b"h"))


class _Record:
    """A DKIM key record, read: its tags (None when they cannot be read),
    whether p= is empty, the key (None when unusable) and what is wrong."""

    __slots__ = ("tags", "revoked", "key", "problem")

    def __init__(self, tags, revoked=False, key=None, problem=""):
        self.tags, self.revoked, self.key, self.problem = tags, revoked, key, problem


def _read_record(text: str) -> _Record:
    """The key record ``text`` (a TXT record as the resolver gives it), read."""
    try:
        tags = parse_tag_value(text.encode("utf-8", "replace"))
    except InvalidTagValueList as exc:
        return _Record(None, problem=f"key record syntax: {exc}")
    if b"p" not in tags:
        return _Record(tags)
    if not no_space(tags[b"p"]):
        return _Record(tags, revoked=True)
    try:
        return _Record(tags, key=PublicKey(*dkimpy.evaluate_pk("", _for_dkimpy(tags))))
    except (dkimpy.KeyFormatError, ValueError) as exc:
        return _Record(tags, problem=f"unusable key: {exc}")


class _Work:
    """A signature whose fields and key are good: what hashing needs."""

    __slots__ = ("tags", "props", "signed", "sig_header", "key", "canon", "algorithm",
                 "limit", "body_key")

    def __init__(self, tags, props, signed, sig_header, key, canon, algorithm, limit):
        self.tags, self.props, self.signed, self.sig_header = tags, props, signed, sig_header
        self.key, self.canon, self.algorithm, self.limit = key, canon, algorithm, limit
        self.body_key = (canon.body_algorithm is Relaxed, algorithm.partition(b"-")[2], limit)


def _b64(value: bytes, tag: str) -> bytes:
    try:
        return base64.b64decode(no_space(value), validate=True)
    except (binascii.Error, ValueError):
        raise dkimpy.MessageFormatError(f"{tag}= is not valid base64") from None


def _verify_headers(headers: list, work: _Work) -> bool:
    """RFC 6376 §6.1.3 for one signature whose body hash matched: the
    header hash and the signature."""
    include = work.signed
    # a From field added above the signed one must break the signature
    # (RFC 6376 §8.15): ask for one instance more than the signer signed
    if b"from" in include:
        include = include + [b"from"]
    # fields are selected by their name as canonicalized (relaxed: lower
    # case, no white space before the colon), and only those selected are
    # canonicalized
    relaxed = work.canon.header_algorithm is Relaxed
    selected = select_headers(headers, include, relaxed_name if relaxed else bytes.lower)
    signature = _b64(work.tags[b"b"], "b")
    return signature_valid(work.key, work.algorithm,
                           header_hash_input(selected, work.sig_header, relaxed), signature)


# what header.i may show once i= is decoded: an addr-spec of atoms (RFC
# 5322 §3.2.3); decoding can make quotes, ";" or spaces, which are left out
_SHOWN_IDENTITY = re.compile(rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@[A-Za-z0-9._-]+\Z")


def _properties(tags: dict, identity: bytes | None = None) -> tuple:
    props = [("header.d", _text(tags.get(b"d", b"")))]
    if b"i" in tags:
        shown = identity if identity is not None else tags[b"i"]
        if _SHOWN_IDENTITY.match(shown):
            props.append(("header.i", _text(shown)))
    props += [("header.s", _text(tags.get(b"s", b""))),
              ("header.a", _text(tags.get(b"a", b""))),
              ("header.b", _text(no_space(tags.get(b"b", b""))[:8]))]
    return tuple(p for p in props if p[1])


CHECKS = (DkimCheck,)
