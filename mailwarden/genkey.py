"""``mailwarden genkey``: a DKIM signing key and the DNS record to publish.

Writes ``DIR/SELECTOR.private`` with mode 0600 (created that way, never
widened afterwards; an existing file is not overwritten) and prints the TXT
record for ``SELECTOR._domainkey.DOMAIN``, cut into character-strings of at
most 255 bytes as DNS requires (RFC 1035 §3.3.14, RFC 6376 §3.6.2.2).  RSA
keys are PKCS#1 PEM; Ed25519 keys are base64 of the 32-byte seed, the form
dkimpy reads (RFC 8463).  ``[check.dkim_sign] keys`` then takes
``DOMAIN:SELECTOR:DIR/SELECTOR.private``.
"""

from __future__ import annotations

import base64
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .address import AddressProblem, normalize_domain
from .signing import MIN_RSA_BITS, split_txt, txt_record, valid_selector


def make_key(kind: str, bits: int = 2048) -> tuple:
    """(private key file bytes, TXT value)."""
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        data = private.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        seed = private.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        data = base64.b64encode(seed) + b"\n"
    return data, txt_record(private.public_key())


def zone_line(domain: str, selector: str, txt: str) -> str:
    strings = " ".join(f'"{s}"' for s in split_txt(txt))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"


def write_private(path: str, data: bytes) -> None:
    # O_EXCL: never truncate a key in use; the mode is set at creation, so the
    # key is never readable by others, not even for an instant
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)            # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def cmd_genkey(args) -> int:
    try:
        domain = normalize_domain(args.domain)
    except AddressProblem as exc:
        print(f"mailwarden genkey: --domain: {exc}", file=sys.stderr)
        return 2
    if domain.startswith("[") or not valid_selector(args.selector):
        print("mailwarden genkey: need a domain name and a selector of letters, digits, "
              "'-', '_' and dots", file=sys.stderr)
        return 2
    if args.type == "rsa" and not MIN_RSA_BITS <= args.bits <= 8192:
        print(f"mailwarden genkey: --bits must be between {MIN_RSA_BITS} and 8192 "
              f"(RFC 8301; 2048 recommended)", file=sys.stderr)
        return 2
    path = os.path.join(args.out, f"{args.selector}.private")
    data, txt = make_key(args.type, args.bits)
    try:
        os.makedirs(args.out, mode=0o700, exist_ok=True)
        write_private(path, data)
    except FileExistsError:
        print(f"mailwarden genkey: {path} exists; not overwriting a key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mailwarden genkey: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"; private key: {path} (mode 0600)")
    print(f"; [check.dkim_sign] keys = {domain}:{args.selector}:{os.path.abspath(path)}")
    print(zone_line(domain, args.selector, txt))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("genkey", help="make a DKIM signing key, print its DNS record")
    p.add_argument("--domain", required=True, help="the signing domain (d=)")
    p.add_argument("--selector", required=True, help="the selector (s=)")
    p.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    p.add_argument("--out", required=True, help="directory for SELECTOR.private")
    p.set_defaults(func=cmd_genkey)
