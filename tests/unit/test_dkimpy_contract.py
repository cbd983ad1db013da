"""What mailwarden relies on in dkimpy beyond its documented sign/verify.

``mailwarden/checks/dkim.py`` and ``mailwarden/signing.py`` call dkimpy's
internals (``hash_headers``, ``RE_BTAG``, ``fold``, ``evaluate_pk``,
``validate_signature_fields``, the canonicalization classes, ...).
setup.cfg pins a range of dkimpy releases; these tests fail if a release in
or past it changes a name, a signature or a behaviour we depend on.  Each
expectation is worked out here from RFC 6376, not taken from dkimpy.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import re

import dkim
import pytest
from dkim.canonicalization import (
    CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed, Simple,
)
from dkim.crypto import HASH_ALGORITHMS
from dkim.util import InvalidTagValueList, parse_tag_value

from tests import dkimkeys


def params(fn) -> list:
    return list(inspect.signature(fn).parameters)


def test_the_names_we_call_exist_with_their_parameters():
    assert params(dkim.hash_headers) == ["hasher", "canonicalize_headers", "headers",
                                         "include_headers", "sigheader", "sig"]
    assert params(dkim.fold)[:3] == ["header", "namelen", "linesep"]
    assert params(dkim.evaluate_pk) == ["name", "s"]
    assert params(dkim.validate_signature_fields)[0] == "sig"
    assert params(dkim.rfc822_parse) == ["message"]
    assert params(dkim.select_headers) == ["headers", "include_headers"]
    for exc in ("ValidationError", "KeyFormatError", "MessageFormatError", "ParameterError"):
        assert issubclass(getattr(dkim, exc), dkim.DKIMException)
    assert issubclass(InvalidCanonicalizationPolicyError, Exception)
    assert issubclass(InvalidTagValueList, Exception)
    assert {b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256"} <= set(HASH_ALGORITHMS)
    assert HASH_ALGORITHMS[b"rsa-sha256"] is hashlib.sha256
    assert HASH_ALGORITHMS[b"ed25519-sha256"] is hashlib.sha256
    assert HASH_ALGORITHMS[b"rsa-sha1"] is hashlib.sha1


def test_parse_tag_value_strips_values_and_keeps_inner_text():
    tags = parse_tag_value(b" v=1; a = rsa-sha256 ;h=from :\r\n to; b=ab\r\n cd ")
    assert tags[b"v"] == b"1" and tags[b"a"] == b"rsa-sha256"
    assert tags[b"h"] == b"from :\r\n to" and tags[b"b"] == b"ab\r\n cd"
    with pytest.raises(InvalidTagValueList):
        parse_tag_value(b"v=1; v=2")


@pytest.mark.parametrize("value,emptied", [
    (b" v=1; b=abc; bh=xyz", b" v=1; b=; bh=xyz"),
    (b" v=1; bh=xyz;\r\n b=ab/+\r\n\tcd==", b" v=1; bh=xyz;\r\n b="),
    (b" v=1;b = ab cd ; d=x", b" v=1;b = ; d=x"),
])
def test_re_btag_empties_the_b_value_only(value, emptied):
    assert dkim.RE_BTAG.sub(b"\\1", value) == emptied


def test_fold_makes_lines_of_at_most_78_and_unfolds_to_the_same_tags():
    value = b"; ".join([b"v=1", b"a=rsa-sha256", b"h=" + b" : ".join([b"subject"] * 30),
                        b"bh=" + b"A" * 44, b"b=" + b"B" * 344])
    folded = dkim.fold(value, namelen=len(b"DKIM-Signature"), linesep=b"\r\n")
    lines = folded.split(b"\r\n")
    assert len(lines) > 1
    assert len(b"DKIM-Signature: " + lines[0]) <= 78
    assert all(len(line) <= 78 and line[:1] in (b" ", b"\t") for line in lines[1:] if line)
    assert re.sub(rb"\s+", b"", folded) == re.sub(rb"\s+", b"", value)


def test_canonicalization_policy_as_rfc_6376_describes_it():
    policy = CanonicalizationPolicy.from_c_value(b"relaxed")
    assert policy.header_algorithm is Relaxed and policy.body_algorithm is Simple
    assert policy.to_c_value() == b"relaxed/simple"
    with pytest.raises(InvalidCanonicalizationPolicyError):
        CanonicalizationPolicy.from_c_value(b"future")
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    # RFC 6376 §3.4.2: name lower case, WSP runs one SP, no WSP at either end, CRLF kept
    assert relaxed.canonicalize_headers([(b"SubJect ", b" a \t b\r\n c \r\n")]) == \
        [(b"subject", b"a b c\r\n")]
    simple = CanonicalizationPolicy.from_c_value(b"simple/simple")
    assert simple.canonicalize_headers([(b"SubJect ", b" a \r\n")]) == [(b"SubJect ", b" a \r\n")]
    # RFC 6376 §3.4.3 / §3.4.4
    assert simple.canonicalize_body(b"a \r\n\r\n\r\n") == b"a \r\n"
    assert relaxed.canonicalize_body(b"a \t b \r\n\r\n") == b"a b\r\n"


def test_hash_headers_hashes_the_selected_fields_then_the_signature_without_b():
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    headers = policy.canonicalize_headers([(b"From", b" a@x.example\r\n"),
                                           (b"Subject", b" Hi \r\n"),
                                           (b"To", b" b@y.example\r\n")])
    sig_value = b" v=1; d=x.example; h=subject:from; b=QUJD\r\n REVG"
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, headers, [b"subject", b"from"],
                      (b"DKIM-Signature", sig_value), {})
    # RFC 6376 §3.7: selected fields in h= order, then the signature field
    # with an empty b= and no CRLF at its end
    expected = (b"subject:Hi\r\nfrom:a@x.example\r\n"
                b"dkim-signature:v=1; d=x.example; h=subject:from; b=")
    assert hasher.digest() == hashlib.sha256(expected).digest()


def test_validate_signature_fields_accepts_good_and_names_what_is_wrong():
    good = {b"v": b"1", b"a": b"rsa-sha256", b"b": b"QUJD", b"bh": b"QUJD",
            b"d": b"x.example", b"h": b"from", b"s": b"sel", b"i": b"a@sub.x.example"}
    assert dkim.validate_signature_fields(dict(good)) is None
    for change, word in [({b"a": b"rsa-md5"}, "algorithm"), ({b"i": b"a@y.example"}, "i="),
                         ({b"v": b"2"}, "v="), ({b"l": b"x"}, "l=")]:
        with pytest.raises(dkim.ValidationError, match=word):
            dkim.validate_signature_fields({**good, **change})
    missing = dict(good)
    del missing[b"h"]
    with pytest.raises(dkim.ValidationError, match="missing"):
        dkim.validate_signature_fields(missing)


def test_evaluate_pk_gives_key_size_type_and_tlsrpt():
    rsa_key = dkimkeys.rsa_key(1024)
    pk, size, ktag, tlsrpt = dkim.evaluate_pk("s._domainkey.x.example",
                                              f"v=DKIM1; k=rsa; p={rsa_key.public}".encode())
    assert (size, ktag, tlsrpt) == (1024, b"rsa", False)
    assert pk["modulus"].bit_length() == 1024 and pk["publicExponent"] == 65537
    ed = dkimkeys.ed25519_key()
    pk, size, ktag, _ = dkim.evaluate_pk("s._domainkey.x.example",
                                         f"k=ed25519; p={ed.public}".encode())
    assert (size, ktag) == (256, b"ed25519")
    assert bytes(pk) == base64.b64decode(ed.public)
    with pytest.raises(dkim.KeyFormatError):
        dkim.evaluate_pk("s._domainkey.x.example", b"v=DKIM1; k=rsa; p=AAAA")


def test_rfc822_parse_gives_name_value_pairs_and_the_body():
    headers, body = dkim.rfc822_parse(b"From: a\r\nX: 1\r\n 2\r\n\r\nbody\r\n")
    assert [tuple(h) for h in headers] == [(b"From", b" a\r\n"), (b"X", b" 1\r\n 2\r\n")]
    assert body == b"body\r\n"
