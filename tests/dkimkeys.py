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
