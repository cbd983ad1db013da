"""Fresh DKIM keys and dkimpy signatures for the tests.

Keys are made when a test asks for them (never committed): RSA 2048 or
1024 through ``cryptography``, Ed25519 through PyNaCl.  ``zone_line`` gives
the TXT record that publishes a key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SIGNED_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


@dataclass(frozen=True)
class Key:
    kind: str              # "rsa" or "ed25519"
    private: bytes         # what dkimpy's sign() takes
    public: str            # the p= value

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.kind == "rsa" else b"ed25519-sha256"

    def zone_line(self, selector: str, domain: str) -> str:
        return (f'{selector}._domainkey.{domain}. TXT '
                f'"v=DKIM1; k={self.kind}; p={self.public}"')


def rsa_key(bits: int = 2048) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key("rsa", pem, base64.b64encode(der).decode())


def ed25519_key() -> Key:
    signing = nacl.signing.SigningKey.generate()
    return Key("ed25519", base64.b64encode(bytes(signing)),
               base64.b64encode(bytes(signing.verify_key)).decode())


def sign(message: bytes, key: Key, selector: str, domain: str,
         algorithm: bytes | None = None, headers=SIGNED_HEADERS,
         canonicalize=(b"relaxed", b"relaxed")) -> bytes:
    """The message with a DKIM-Signature prepended (CRLF line ends)."""
    signature = dkim.sign(message, selector.encode(), domain.encode(), key.private,
                          signature_algorithm=algorithm or key.algorithm,
                          include_headers=list(headers), canonicalize=canonicalize)
    return signature + message


def sign_tags(message: bytes, key: Key, tags: list, headers=SIGNED_HEADERS,
              canonicalize: bytes = b"relaxed/relaxed", limit: int | None = None) -> bytes:
    """The message with an Ed25519 DKIM-Signature whose tags are exactly
    ``tags`` ([(name, value)], bytes, in order; ``a=``, ``c=``, ``h=``,
    ``bh=`` and ``b=`` are added), for tags dkimpy's signer does not write
    (``q=`` lists, encoded ``i=``, a bad ``d=``)."""
    from dkim.canonicalization import CanonicalizationPolicy
    import hashlib

    assert key.kind == "ed25519"
    policy = CanonicalizationPolicy.from_c_value(canonicalize)
    parsed, body = dkim.rfc822_parse(message)
    canon_body = policy.canonicalize_body(body)
    if limit is not None:
        canon_body = canon_body[:limit]
    fields = [(b"v", b"1"), (b"a", b"ed25519-sha256"), (b"c", canonicalize)] + list(tags)
    if limit is not None:
        fields.append((b"l", str(limit).encode()))
    fields += [(b"h", b":".join(headers)),
               (b"bh", base64.b64encode(hashlib.sha256(canon_body).digest())), (b"b", b"")]
    value = b" " + b"; ".join(k + b"=" + v for k, v in fields)
    hasher = hashlib.sha256()
    dkim.hash_headers(hasher, policy, policy.canonicalize_headers(parsed), list(headers),
                      (b"DKIM-Signature", value), dict(fields))
    signing = nacl.signing.SigningKey(base64.b64decode(key.private))
    b = base64.b64encode(signing.sign(hasher.digest()).signature)
    return b"DKIM-Signature:" + value + b + b"\r\n" + message
