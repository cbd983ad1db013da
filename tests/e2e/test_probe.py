"""``mailwarden probe`` against real servers on loopback.

* the private Postfix of the harness, once hardened (STARTTLS with a
  certificate from a test CA, AUTH only over TLS through Dovecot's SASL
  socket, a submission service requiring TLS, VRFY off, no relaying for the
  probe's address), once weak without TLS (AUTH in clear, VRFY on, the
  version in the banner, an open relay for loopback), once weak with TLS (a
  self-signed certificate, AUTH before STARTTLS, TLS 1.0 accepted);
* Debian's Dovecot (imap, pop3, imaps, pop3s) from a private configuration,
  with ``disable_plaintext_auth = yes`` and with it off.

Certificates are made here with openssl.  The probe is only ever given
127.0.0.1; it connects from 127.0.0.2 because Dovecot counts a client on the
server's own address as secure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from mailwarden import cli
from mailwarden.audit import probe

from tests.harness import Postfix, free_port, wait_until

HOSTNAME = "mx.test.example"        # the harness Postfix's myhostname
SOURCE = "127.0.0.2"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVECONF = shutil.which("doveconf") or "/usr/bin/doveconf"

pytestmark = pytest.mark.skipif(
    not Path(DOVECOT).exists(),
    reason="probe tests need Dovecot (apt-get install dovecot-imapd dovecot-pop3d)")


# --------------------------------------------------------------------------
# certificates

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_signed(directory: Path, name: str) -> tuple:
    """A test CA and a certificate for ``name`` signed by it: (key, cert)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
             "-subj", "/CN=mailwarden test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={name}", cwd=directory)
    (directory / "ext.cnf").write_text(f"subjectAltName=DNS:{name}\n"
                                       "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "30",
             "-extfile", "ext.cnf", cwd=directory)
    # the chain a server sends: its certificate, then the CA
    (directory / "chain.pem").write_bytes((directory / "server.pem").read_bytes()
                                          + (directory / "ca.pem").read_bytes())
    return directory / "server.key", directory / "chain.pem"


def make_self_signed(directory: Path, name: str) -> tuple:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.pem", "-days", "30", "-subj", f"/CN={name}",
             "-addext", f"subjectAltName=DNS:{name}", cwd=directory)
    return directory / "server.key", directory / "server.pem"


# --------------------------------------------------------------------------
# Dovecot

class Dovecot:
    """Debian's Dovecot from a private config: imap, pop3, imaps and pop3s on
    free 127.0.0.1 ports, a passwd-file, and an auth socket for Postfix."""

    def __init__(self, workdir: Path, key: Path, cert: Path, plaintext_auth: bool):
        self.workdir = workdir
        self.key, self.cert = key, cert
        self.plaintext_auth = plaintext_auth
        self.ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        self.config = workdir / "dovecot.conf"
        self.base_dir = workdir / "run"
        self.log = workdir / "dovecot.log"
        self._proc = None

    @property
    def auth_socket(self) -> Path:
        return self.base_dir / "auth-postfix"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        (self.workdir / "passwd").write_text("alice:{PLAIN}secret::::::\n")
        dh = Path("/usr/share/dovecot/dh.pem")
        version = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[0]
        major_minor = tuple(int(x) for x in version.split(".")[:2])
        # 2.4 renamed the setting; Debian 12 ships 2.3
        if major_minor >= (2, 4):
            plaintext = f"auth_allow_cleartext = {'yes' if self.plaintext_auth else 'no'}"
        else:
            plaintext = f"disable_plaintext_auth = {'no' if self.plaintext_auth else 'yes'}"
        p = self.ports
        self.config.write_text(f"""\
base_dir = {self.base_dir}
state_dir = {self.workdir}/state
log_path = {self.log}
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
{f"ssl_dh = <{dh}" if dh.exists() else ""}
{plaintext}
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.workdir}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={self.workdir}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = {p['imap']}
  }}
  inet_listener imaps {{
    port = {p['imaps']}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {p['pop3']}
  }}
  inet_listener pop3s {{
    port = {p['pop3s']}
    ssl = yes
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
""")

    def start(self, timeout: float = 20.0) -> "Dovecot":
        self._write_config()
        check = subprocess.run([DOVECONF, "-n", "-c", str(self.config)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self._proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(self.workdir / "dovecot.stderr", "ab"))
        wait_until(self._ready, timeout, f"Dovecot on {self.ports}")
        return self

    def _ready(self) -> bool:
        if self._proc.poll() is not None:
            raise AssertionError(f"dovecot exited {self._proc.returncode}: "
                                 + (self.workdir / "dovecot.stderr").read_text()
                                 + (self.log.read_text() if self.log.exists() else ""))
        if not self.auth_socket.exists():
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.ports["pop3"]), timeout=2) as s:
                s.settimeout(5)
                return s.recv(64).startswith(b"+OK")
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


@pytest.fixture(scope="module")
def certs(e2e_dir):
    base = e2e_dir / "probe-certs"
    return {"ca": make_ca_signed(base / "ca", HOSTNAME),
            "self": make_self_signed(base / "self", HOSTNAME)}


@pytest.fixture(scope="module")
def dovecot_strict(e2e_dir, certs):
    server = Dovecot(e2e_dir / "dovecot-strict", *certs["ca"], plaintext_auth=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dovecot_lax(e2e_dir, certs):
    server = Dovecot(e2e_dir / "dovecot-lax", *certs["self"], plaintext_auth=True).start()
    yield server
    server.stop()


# --------------------------------------------------------------------------
# Postfix

class TlsPostfix(Postfix):
    """The harness Postfix plus tlsmgr (smtpd's TLS needs it) and, when
    ``submission_port`` is given, a submission service requiring TLS and SASL."""

    def __init__(self, *args, submission_port: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.submission_port = submission_port

    def _write_config(self) -> None:
        super()._write_config()
        with open(self.config_dir / "master.cf", "a", encoding="ascii") as fh:
            fh.write("tlsmgr unix - - n 1000? 1 tlsmgr\n")
            if self.submission_port:
                fh.write(f"127.0.0.1:{self.submission_port} inet n - n - - smtpd\n"
                         "  -o smtpd_tls_security_level=encrypt\n"
                         "  -o smtpd_sasl_auth_enable=yes\n"
                         "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n")


def _sasl(dovecot: Dovecot) -> dict:
    return {"smtpd_sasl_type": "dovecot", "smtpd_sasl_path": str(dovecot.auth_socket)}


# the one local recipient, so that VRFY can tell it from others
_LOCAL = {"mydestination": "$myhostname", "local_recipient_maps": "inline:{postmaster=ok}"}


@pytest.fixture(scope="module")
def postfix_hardened(e2e_dir, sink, certs, dovecot_strict):
    key, chain = certs["ca"]
    settings = {
        **_LOCAL, **_sasl(dovecot_strict),
        # the probe's address is not trusted: it must not relay
        "mynetworks": "[::1]/128",
        "relay_domains": "",
        "smtpd_relay_restrictions":
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_chain_files": f"{key}, {chain}",
        "smtpd_tls_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "disable_vrfy_command": "yes",
        "smtpd_helo_required": "yes",
        "smtpd_banner": "$myhostname ESMTP",
    }
    instance = TlsPostfix(e2e_dir / "postfix-probe-hardened", sink.port,
                                 extra_main_cf=settings, submission_port=free_port())
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def postfix_plain(e2e_dir, sink, dovecot_lax):
    settings = {
        **_LOCAL, **_sasl(dovecot_lax),
        "smtpd_tls_security_level": "none",
        "smtpd_sasl_auth_enable": "yes",
        "disable_vrfy_command": "no",
        "smtpd_banner": "$myhostname ESMTP $mail_name $mail_version",
    }
    instance = Postfix(e2e_dir / "postfix-probe-plain", sink.port, extra_main_cf=settings)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def postfix_weak_tls(e2e_dir, sink, certs, dovecot_lax):
    key, cert = certs["self"]
    settings = {
        **_LOCAL, **_sasl(dovecot_lax),
        "mynetworks": "[::1]/128",
        "relay_domains": "",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key),
        "smtpd_tls_auth_only": "no",
        "smtpd_sasl_auth_enable": "yes",
        # without the system OpenSSL config (MinProtocol TLSv1.2, SECLEVEL 2)
        # Postfix really takes TLS 1.0 when its own settings allow it
        "tls_config_file": "none",
        "smtpd_tls_protocols": ">=TLSv1",
        "smtpd_tls_mandatory_protocols": ">=TLSv1",
        "tls_medium_cipherlist": "ALL:@SECLEVEL=0",
        "tls_high_cipherlist": "ALL:@SECLEVEL=0",
        "disable_vrfy_command": "yes",
    }
    instance = TlsPostfix(e2e_dir / "postfix-probe-weak-tls", sink.port, extra_main_cf=settings)
    instance.start()
    yield instance
    instance.stop()


# --------------------------------------------------------------------------
# running the probe

def run_probe(capsys, *, smtp=0, submission=0, imap=0, pop3=0, imaps=0, pop3s=0,
              extra=()):
    argv = ["probe", "127.0.0.1", "--smtp-port", str(smtp), "--submission-port", str(submission),
            "--imap-port", str(imap), "--pop3-port", str(pop3), "--imaps-port", str(imaps),
            "--pop3s-port", str(pop3s), "--source", SOURCE, "--timeout", "10", "--json",
            # the other services have their own tests (test_host_services.py)
            "--others", "none", *extra]
    code = cli.main(argv)
    out = capsys.readouterr().out
    data = json.loads(out)
    return code, data


def by_subject(data) -> dict:
    return {f["subject"]: f for f in data["findings"]}


def levels(data) -> dict:
    return {f["subject"]: f["level"] for f in data["findings"]}


def closed_port() -> int:
    """A port nothing listens on (free when asked; nothing here binds it)."""
    return free_port()


# --------------------------------------------------------------------------
# SMTP

def test_hardened_postfix(capsys, postfix_hardened):
    smtp, sub = postfix_hardened.smtp_port, postfix_hardened.submission_port
    code, data = run_probe(capsys, smtp=smtp, submission=sub)
    found = by_subject(data)
    assert code == 0, data
    assert data.get("errors") is None
    assert [f for f in data["findings"] if f["level"] != "ok"] == []
    s = f"smtp:{smtp}"
    assert found[f"{s} STARTTLS"]["message"] == "offered"
    assert found[f"{s} AUTH"]["message"] == "offered only after STARTTLS"
    assert "PLAIN" in found[f"{s} AUTH"]["value"]
    assert found[f"{s} TLS"]["value"].startswith("TLSv1.3")
    assert "TLSv1/TLSv1.1 refused" in found[f"{s} TLS"]["message"]
    cert = found[f"{s} certificate"]
    assert "matches mx.test.example" in cert["message"] and "not self-signed" in cert["message"]
    assert found[f"{s} VRFY"]["message"] == "disabled"
    assert found[f"{s} VRFY"]["value"].startswith("postmaster: 502")
    relay = [f for f in data["findings"] if " relay " in f["subject"] and f["subject"].startswith(s)]
    assert len(relay) == 9
    assert all(f["level"] == "ok" and f["value"][:1] == "5" for f in relay)
    assert found[f"{s} relay percent hack"]["message"] == \
        "RCPT TO:<user%other.example@mx.test.example> refused"
    u = f"submission:{sub}"
    assert found[f"{u} AUTH"]["message"] == "offered only after STARTTLS"
    assert found[f"{u} relay plain"]["level"] == "ok"
    assert found[f"{u} certificate"]["level"] == "ok"


def test_postfix_without_tls(capsys, postfix_plain):
    smtp = postfix_plain.smtp_port
    sub = closed_port()
    code, data = run_probe(capsys, smtp=smtp, submission=sub)
    assert code == 1
    s = f"smtp:{smtp}"
    assert levels(data)[f"{s} STARTTLS"] == "fail"
    found = by_subject(data)
    assert found[f"{s} AUTH"]["level"] == "fail"
    assert "before STARTTLS" in found[f"{s} AUTH"]["message"]
    assert found[f"{s} VRFY"]["level"] == "warn"
    assert found[f"{s} VRFY"]["value"].startswith("postmaster: 252")
    assert found[f"{s} banner"]["level"] == "warn"
    # loopback is in mynetworks and relay_domains is static:ALL: every trick passes
    relay = [f for f in data["findings"] if f["subject"].startswith(f"{s} relay ")]
    assert len(relay) == 9 and all(f["level"] == "fail" for f in relay)
    assert found[f"{s} relay address literal"]["message"].startswith(
        "RCPT TO:<user@[203.0.113.5]> accepted")
    assert found[f"submission:{sub}"]["message"] == "nothing listens here"
    assert not any(f["subject"].endswith("certificate") for f in data["findings"])


def test_postfix_with_weak_tls(capsys, postfix_weak_tls):
    smtp = postfix_weak_tls.smtp_port
    code, data = run_probe(capsys, smtp=smtp)
    assert code == 1
    found = by_subject(data)
    s = f"smtp:{smtp}"
    assert found[f"{s} STARTTLS"]["level"] == "ok"
    assert found[f"{s} AUTH"]["level"] == "fail"
    assert found[f"{s} TLS"]["level"] == "fail"
    assert "still accepts TLSv1" in found[f"{s} TLS"]["message"]
    assert found[f"{s} certificate"]["level"] == "warn"
    assert "self-signed" in found[f"{s} certificate"]["message"]
    assert found[f"{s} VRFY"]["level"] == "ok"
    relay = [f for f in data["findings"] if f["subject"].startswith(f"{s} relay ")]
    assert len(relay) == 9 and all(f["level"] == "ok" for f in relay)


def test_certificate_name_checked_against_the_given_name(capsys, postfix_hardened):
    code, data = run_probe(capsys, smtp=postfix_hardened.smtp_port,
                           extra=["--name", "imap.elsewhere.example"])
    cert = by_subject(data)[f"smtp:{postfix_hardened.smtp_port} certificate"]
    assert code == 1
    assert cert["level"] == "fail" and "does not match imap.elsewhere.example" in cert["message"]


# --------------------------------------------------------------------------
# IMAP and POP3

def test_dovecot_with_plaintext_auth_disabled(capsys, dovecot_strict):
    p = dovecot_strict.ports
    code, data = run_probe(capsys, imap=p["imap"], pop3=p["pop3"], imaps=p["imaps"],
                           pop3s=p["pop3s"], extra=["--name", HOSTNAME])
    assert code == 0, data
    assert [f for f in data["findings"] if f["level"] != "ok"] == []
    found = by_subject(data)
    assert found[f"imap:{p['imap']} cleartext login"]["message"] == \
        "LOGINDISABLED before STARTTLS"
    assert found[f"imap:{p['imap']} STARTTLS"]["message"] == "offered"
    assert found[f"pop3:{p['pop3']} cleartext login"]["message"] == "USER refused before STLS"
    assert found[f"pop3:{p['pop3']} STLS"]["message"] == "offered"
    for label in (f"imap:{p['imap']}", f"imaps:{p['imaps']}", f"pop3:{p['pop3']}",
                  f"pop3s:{p['pop3s']}"):
        assert found[f"{label} TLS"]["level"] == "ok"
        assert found[f"{label} certificate"]["level"] == "ok"


def test_dovecot_with_plaintext_auth_allowed(capsys, dovecot_lax):
    p = dovecot_lax.ports
    code, data = run_probe(capsys, imap=p["imap"], pop3=p["pop3"], imaps=p["imaps"],
                           pop3s=p["pop3s"], extra=["--name", HOSTNAME])
    assert code == 1
    found = by_subject(data)
    login = found[f"imap:{p['imap']} cleartext login"]
    assert login["level"] == "fail" and "AUTH=PLAIN" in login["value"]
    assert found[f"pop3:{p['pop3']} cleartext login"]["level"] == "fail"
    assert found[f"imap:{p['imap']} STARTTLS"]["level"] == "ok"
    assert found[f"pop3:{p['pop3']} STLS"]["level"] == "ok"
    for label in (f"imap:{p['imap']}", f"imaps:{p['imaps']}", f"pop3:{p['pop3']}",
                  f"pop3s:{p['pop3s']}"):
        assert found[f"{label} certificate"]["level"] == "warn"
        assert "self-signed" in found[f"{label} certificate"]["message"]


def test_only_the_tls_ports(capsys, dovecot_strict):
    # IMAPS and POP3S alone are as good as STARTTLS with cleartext logins off
    p = dovecot_strict.ports
    imap, pop3 = closed_port(), closed_port()
    code, data = run_probe(capsys, imap=imap, pop3=pop3, imaps=p["imaps"], pop3s=p["pop3s"],
                           extra=["--name", HOSTNAME])
    assert code == 0
    found = by_subject(data)
    assert found[f"imap:{imap}"]["message"] == "nothing listens here (IMAPS only)"
    assert found[f"pop3:{pop3}"]["message"] == "nothing listens here (POP3S only)"


def test_from_the_servers_own_address_dovecot_allows_cleartext(capsys, dovecot_strict):
    # the same strict Dovecot, probed from 127.0.0.1 itself: it counts the
    # client as local and secure, and the probe says why it sees a login
    p = dovecot_strict.ports
    code = cli.main(["probe", "127.0.0.1", "--smtp-port", "0", "--submission-port", "0",
                     "--imap-port", str(p["imap"]), "--pop3-port", "0", "--imaps-port", "0",
                     "--pop3s-port", "0", "--source", "127.0.0.1", "--others", "none", "--json"])
    data = json.loads(capsys.readouterr().out)
    login = by_subject(data)[f"imap:{p['imap']} cleartext login"]
    assert code == 1
    assert login["level"] == "fail" and "server's own address" in login["message"]


# --------------------------------------------------------------------------
# the probe itself

def test_nothing_answers_is_exit_2(capsys):
    ports = [closed_port() for _ in range(6)]
    code = cli.main(["probe", "127.0.0.1", "--smtp-port", str(ports[0]),
                     "--submission-port", str(ports[1]), "--imap-port", str(ports[2]),
                     "--pop3-port", str(ports[3]), "--imaps-port", str(ports[4]),
                     "--pop3s-port", str(ports[5]), "--others", "none"])
    assert code == 2
    assert "nothing answers" in capsys.readouterr().err


def test_table_output(capsys, postfix_hardened):
    code = cli.main(["probe", "127.0.0.1", "--smtp-port", str(postfix_hardened.smtp_port),
                     "--submission-port", "0", "--imap-port", "0", "--pop3-port", "0",
                     "--imaps-port", "0", "--pop3s-port", "0", "--source", SOURCE,
                     "--others", "none"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("probe 127.0.0.1\nAREA")
    assert f"smtp:{postfix_hardened.smtp_port} relay source route" in out
    assert out.rstrip().endswith("0 warn, 0 fail")


# --------------------------------------------------------------------------
# audit-postfix on the same running instances: settings and behaviour agree

def audit_postfix(capsys, instance) -> dict:
    code = cli.main(["audit-postfix", "--config-dir", str(instance.config_dir),
                     "--milter", "unix:/nonexistent/milter.sock", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1          # no mailwarden in these instances: smtpd_milters fails
    return levels(data)


def test_audit_postfix_agrees_with_the_probe(capsys, postfix_hardened, postfix_plain):
    hard = audit_postfix(capsys, postfix_hardened)
    assert hard["smtpd_tls_security_level"] == "ok"
    assert hard["smtpd_tls_auth_only"] == "ok"
    assert hard["smtpd_tls_protocols"] == "ok"
    assert hard["disable_vrfy_command"] == "ok"
    assert hard["smtpd_relay_restrictions"] == "ok" and hard["relay_domains"] == "ok"
    assert hard["smtpd_milters"] == "fail"

    plain = audit_postfix(capsys, postfix_plain)
    assert plain["smtpd_tls_security_level"] == "fail"      # probe: STARTTLS not offered
    assert plain["smtpd_tls_auth_only"] == "fail"           # probe: AUTH before STARTTLS
    assert plain["disable_vrfy_command"] == "warn"          # probe: VRFY tells users apart
    assert plain["smtpd_banner"] == "warn"                  # probe: version in the banner
    assert plain["relay_domains"] == "fail"                 # probe: every trick accepted
