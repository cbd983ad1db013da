"""Test certificates made with openssl: a test CA with a server certificate
signed by it, a client certificate from the same CA, and a self-signed one.
For the private Postfix and Dovecot of the end-to-end tests; nothing here is
trusted outside them (30 days, keys on disk unencrypted)."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["make_ca_signed", "make_client_cert", "make_self_signed", "CA_NAME"]

CA_NAME = "mailwarden test CA"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_signed(directory: Path, name: str) -> tuple:
    """A test CA (``ca.pem``, ``ca.key`` in ``directory``) and a server
    certificate for ``name`` signed by it: (key, chain), the chain being the
    certificate, then the CA, as a server sends it."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-subj", f"/CN={CA_NAME}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", *_EC, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={name}", cwd=directory)
    (directory / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\n"
                                       "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "30",
             "-extfile", "ext.cnf", cwd=directory)
    (directory / "chain.pem").write_bytes((directory / "server.pem").read_bytes()
                                          + (directory / "ca.pem").read_bytes())
    return directory / "server.key", directory / "chain.pem"


def make_client_cert(directory: Path, name: str) -> tuple:
    """A client certificate for ``name`` from the CA :func:`make_ca_signed`
    made in ``directory``: (key, cert)."""
    stem = f"client-{name}"
    _openssl("req", *_EC, "-keyout", f"{stem}.key", "-out", f"{stem}.csr",
             "-subj", f"/CN={name}", cwd=directory)
    (directory / f"{stem}.cnf").write_text(f"subjectAltName=DNS:{name}\n"
                                           "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{stem}.pem", "-days", "30",
             "-extfile", f"{stem}.cnf", cwd=directory)
    return directory / f"{stem}.key", directory / f"{stem}.pem"


def make_self_signed(directory: Path, name: str) -> tuple:
    """A self-signed certificate for ``name``: (key, cert)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.pem", "-days", "30", "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=DNS:{name}", cwd=directory)
    return directory / "server.key", directory / "server.pem"
