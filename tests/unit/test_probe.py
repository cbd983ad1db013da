"""The probe's parts without real servers: certificate judgement, name
matching, the relay tricks, and scripted SMTP servers on 127.0.0.1 for what
a real Postfix rarely does (hanging up mid-test, speaking nonsense)."""

from __future__ import annotations

import datetime
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailwarden.audit import probe
from mailwarden.audit.findings import FAIL, OK, WARN, AuditError

NOW = datetime.datetime(2026, 1, 15, tzinfo=datetime.timezone.utc)


def make_cert(name="mx.example.org", *, sans=("mx.example.org",), days_left=60,
              starts_in_days=-1, self_signed=False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if self_signed:
        issuer, issuer_key = subject, key
    else:
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
        issuer_key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW + datetime.timedelta(days=starts_in_days))
               .not_valid_after(NOW + datetime.timedelta(days=days_left)))
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("kwargs,name,level,words", [
    ({}, "mx.example.org", OK, "matches mx.example.org"),
    ({"days_left": -2, "starts_in_days": -30}, "mx.example.org", FAIL, "expired on 2026-01-13"),
    ({"days_left": 5}, "mx.example.org", WARN, "expires in 5 days"),
    ({"starts_in_days": 3}, "mx.example.org", FAIL, "not valid before"),
    ({}, "imap.example.org", FAIL, "does not match imap.example.org"),
    ({"sans": ("*.example.org",)}, "imap.example.org", OK, "matches"),
    ({"sans": ("*.example.org",)}, "a.b.example.org", FAIL, "does not match"),
    ({"self_signed": True}, "mx.example.org", WARN, "self-signed"),
    ({}, None, WARN, "name not checked"),
    # the CN counts only without a subjectAltName
    ({"sans": ()}, "mx.example.org", OK, "matches"),
    ({"sans": ("other.example.org",)}, "mx.example.org", FAIL, "does not match"),
])
def test_judge_certificate(kwargs, name, level, words):
    got, message, value = probe.judge_certificate(make_cert(**kwargs), name, now=NOW)
    assert got == level
    assert words in message
    assert "expires" in value


def test_judge_certificate_without_one():
    assert probe.judge_certificate(None, "x.example")[0] == FAIL


def test_name_matches():
    assert probe.name_matches("MX.Example.ORG.", ["mx.example.org"])
    assert probe.name_matches("a.example.org", ["*.example.org"])
    assert not probe.name_matches("example.org", ["*.example.org"])
    assert not probe.name_matches("a.org", ["*.org"])      # no wildcard for a TLD


def test_relay_tricks():
    tricks = dict(probe.relay_tricks("mx.example.org", "other.example"))
    assert tricks == {
        "plain": "user@other.example",
        "percent hack": "user%other.example@mx.example.org",
        "double @": "user@other.example@mx.example.org",
        "quoted local part": '"user@other.example"@mx.example.org',
        "source route": "@mx.example.org:user@other.example",
        "bang path": "other.example!user@mx.example.org",
        "trailing dot": "user@other.example.",
        "mixed case": "User@oThEr.eXaMpLe",
        "address literal": "user@[203.0.113.5]",
    }


# --------------------------------------------------------------------------
# scripted SMTP servers

class ScriptedSmtp:
    """An SMTP server on 127.0.0.1 that refuses every RCPT and hangs up
    (421) after ``rcpts_per_session`` of them; ``greeting`` may be anything."""

    def __init__(self, rcpts_per_session=100, greeting=b"220 mx.example.org ESMTP\r\n",
                 ehlo=b"250-mx.example.org\r\n250 8BITMIME\r\n",
                 mail=b"250 2.1.0 Ok\r\n"):
        self.rcpts_per_session = rcpts_per_session
        self.greeting = greeting
        self.ehlo = ehlo
        self.mail = mail
        self.sessions = 0
        self.rcpts = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.sessions += 1
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except OSError:
                    pass

    def _session(self, conn):
        conn.sendall(self.greeting)
        rfile = conn.makefile("rb")
        count = 0
        for raw in rfile:
            line = raw.decode().strip()
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                conn.sendall(self.ehlo)
            elif verb == "VRFY":
                conn.sendall(b"252 2.0.0 send some mail, I'll try my best\r\n")
            elif verb == "MAIL":
                conn.sendall(self.mail)
            elif verb == "RCPT":
                self.rcpts.append(line)
                count += 1
                if count >= self.rcpts_per_session:
                    conn.sendall(b"421 4.7.0 Error: too many errors\r\n")
                    return
                conn.sendall(b"554 5.7.1 Relay access denied\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                conn.sendall(b"250 2.0.0 Ok\r\n")

    def stop(self):
        self._stop.set()
        self.listener.close()
        self._thread.join(5)


def smtp_only(port, **kwargs) -> probe.ProbeOptions:
    kwargs.setdefault("others", ())
    return probe.ProbeOptions("127.0.0.1", smtp_port=port, submission_port=0, imap_port=0,
                              pop3_port=0, imaps_port=0, pop3s_port=0, timeout=5, **kwargs)


def test_relay_tests_go_on_after_the_server_hangs_up():
    server = ScriptedSmtp(rcpts_per_session=4)
    try:
        findings, errors = probe.Probe(smtp_only(server.port)).run()
    finally:
        server.stop()
    relay = [f for f in findings if " relay " in f.subject]
    assert errors == []
    # nine tricks, each answered once: 554 or the 421 that ended a session
    assert len(relay) == 9 and len(server.rcpts) == 9
    assert [f.level for f in relay].count(WARN) == 2      # the two 421s: not a refusal
    assert {f.subject.split(" relay ")[1] for f in relay} == {
        name for name, _ in probe.relay_tricks("x", "y")}
    subjects = {f.subject: f for f in findings}
    assert subjects[f"smtp:{server.port} STARTTLS"].level == FAIL
    assert subjects[f"smtp:{server.port} VRFY"].level == OK
    # the local domain came from the banner
    assert any("@mx.example.org" in r for r in server.rcpts)


def test_local_domain_and_relay_target_options():
    server = ScriptedSmtp()
    try:
        probe.Probe(smtp_only(server.port, local_domain="mail.example.net",
                              relay_target="far.example")).run()
    finally:
        server.stop()
    assert "RCPT TO:<user%far.example@mail.example.net>" in server.rcpts


def test_a_server_speaking_nonsense_is_an_error_not_a_finding():
    server = ScriptedSmtp(greeting=b"HTTP/1.1 400 Bad Request\r\n")
    try:
        findings, errors = probe.Probe(smtp_only(server.port)).run()
    finally:
        server.stop()
    assert findings == []
    assert errors and "not an SMTP reply" in errors[0]


def test_unresolvable_host_and_bad_source_are_audit_errors(monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with monkeypatch.context() as m:
        # no real lookup: tests never ask a resolver off this machine
        m.setattr(probe.socket, "getaddrinfo", no_such_host)
        with pytest.raises(AuditError, match="cannot resolve"):
            probe.Probe(probe.ProbeOptions("no-such-host.invalid", timeout=1)).run()
    with pytest.raises(AuditError, match="cannot connect from"):
        probe.Probe(smtp_only(1, source="198.51.100.254")).run()


def test_the_probe_connects_only_to_the_address_it_resolved(monkeypatch):
    server = ScriptedSmtp()
    connected = []
    real_connect = socket.socket.connect

    class Recording(socket.socket):
        def connect(self, address):
            connected.append(address[0])
            return real_connect(self, address)

    monkeypatch.setattr(probe.socket, "socket", Recording)
    try:
        probe.Probe(smtp_only(server.port)).run()
    finally:
        server.stop()
    assert connected and set(connected) == {"127.0.0.1"}


def test_old_style_auth_keyword_counts_as_auth():
    server = ScriptedSmtp(ehlo=b"250-mx.example.org\r\n250-AUTH=PLAIN LOGIN\r\n250 8BITMIME\r\n")
    try:
        findings, _ = probe.Probe(smtp_only(server.port)).run()
    finally:
        server.stop()
    auth = next(f for f in findings if f.subject.endswith(" AUTH"))
    assert auth.level == FAIL and auth.value == "PLAIN LOGIN"


@pytest.mark.parametrize("area_port,level", [("smtp", WARN), ("submission", OK)])
def test_mail_from_refused(area_port, level):
    server = ScriptedSmtp(mail=b"530 5.7.0 Authentication required\r\n")
    try:
        if area_port == "smtp":
            options = smtp_only(server.port)
        else:
            options = probe.ProbeOptions("127.0.0.1", smtp_port=0, submission_port=server.port,
                                         imap_port=0, pop3_port=0, imaps_port=0, pop3s_port=0,
                                         timeout=5, others=())
        findings, errors = probe.Probe(options).run()
    finally:
        server.stop()
    relay = next(f for f in findings if f.subject == f"{area_port}:{server.port} relay")
    assert relay.level == level and relay.value.startswith("530")
    assert server.rcpts == [] and errors == []
