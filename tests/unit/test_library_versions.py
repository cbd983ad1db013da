"""mailwarden runs on Debian 12's own libraries (the Debian package depends
on them) as well as on today's releases from PyPI (the virtual environment).

The lower bounds in ``setup.cfg`` are what the code was tested against: each
must admit Debian 12's version, and each place where the code needs a newer
release has a fallback, tested here whatever version is installed.  The
whole unit suite is also run against Debian's versions (``make
test-debian-libs``, and the Debian package's end-to-end test).
"""

from __future__ import annotations

import configparser
import datetime
import re

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from mailwarden.audit import probe
from tests.harness import ROOT

# what Debian 12 (bookworm) ships, python3-* packages
DEBIAN_12 = {
    "pymilter": "1.0.5",
    "dkimpy": "1.1.4",
    "pyspf": "2.0.14",
    "dnspython": "2.3.0",
    "idna": "3.3",
    "tldextract": "3.1.2",
    "pynacl": "1.5.0",
    "cryptography": "38.0.4",
    "prometheus-client": "0.16.0",
    "redis": "4.3.4",
}


def _version(text: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def _requirements() -> dict:
    """``{distribution: [(operator, version), ...]}`` of install_requires and
    the redis extra."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    lines += cfg["options.extras_require"]["redis"].splitlines()
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-")
        found[name] = re.findall(r"(>=|<=|==|!=|<|>|~=)\s*([0-9][0-9.]*)", line)
    return found


def test_every_runtime_dependency_has_its_debian_12_version_here():
    assert set(_requirements()) == set(DEBIAN_12)


@pytest.mark.parametrize("name", sorted(DEBIAN_12))
def test_the_bounds_admit_debian_12(name):
    have = _version(DEBIAN_12[name])
    for op, bound in _requirements()[name]:
        want = _version(bound)
        ok = {">=": have >= want, ">": have > want, "<": have < want,
              "<=": have <= want, "==": have == want, "!=": have != want,
              "~=": have >= want}[op]
        assert ok, f"{name}{op}{bound} refuses Debian 12's {DEBIAN_12[name]}"


# -- cryptography < 40 has no Certificate.verify_directly_issued_by ------------

NOW = datetime.datetime(2026, 1, 15, tzinfo=datetime.timezone.utc)


def _cert(key, signer=None, hash_alg=hashes.SHA256()):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.org")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=30)))
    return builder.sign(signer or key, hash_alg)


KEYS = {
    "rsa": (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            hashes.SHA256()),
    "ecdsa": (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
    "ed25519": (ed25519.Ed25519PrivateKey.generate, None),
    "ed448": (ed448.Ed448PrivateKey.generate, None),
}


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_the_fallback_accepts_a_certificate_signed_by_its_own_key(kind):
    make, hash_alg = KEYS[kind]
    cert = _cert(make(), hash_alg=hash_alg)
    probe._verify_own_signature(cert)           # does not raise
    assert probe._self_signed(cert)


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_the_fallback_refuses_a_signature_by_another_key(kind):
    """Same subject and issuer, signed by someone else: not self-signed."""
    make, hash_alg = KEYS[kind]
    cert = _cert(make(), signer=make(), hash_alg=hash_alg)
    with pytest.raises(InvalidSignature):
        probe._verify_own_signature(cert)
    assert not probe._self_signed(cert)
