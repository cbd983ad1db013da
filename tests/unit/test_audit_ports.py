"""The catalogue of services that do not belong on a mail host, what the
probe reads from them, and how it shows what it read: scripted servers on
127.0.0.1 (a banner, silence, an HTTP and an HTTPS answer, hostile bytes),
and hypothesis for banners an attacker writes."""

from __future__ import annotations

import datetime
import io
import json
import socket
import ssl
import threading
import time
import unicodedata

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.audit import ports, probe
from mailwarden.audit.findings import FAIL, OK, WARN, AuditError, Finding, render
from mailwarden.cli import main
from tests.hostile import HOSTILE_TEXTS

BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown_safely(text: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cs") or c in BIDI for c in text)


class TinyServer:
    """A TCP server on 127.0.0.1: says ``greeting`` on connect, answers the
    first thing it reads with ``reply`` (bytes, or a function of what it
    read), and records what it read; ``tls`` wraps each connection."""

    def __init__(self, greeting: bytes = b"", reply=None, tls: ssl.SSLContext | None = None):
        self.greeting, self.reply, self.tls = greeting, reply, tls
        self.received: list = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.02)          # how soon stop() is noticed
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
            self.connections += 1
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            if self.greeting:
                conn.sendall(self.greeting)
            if self.reply is not None:
                data = conn.recv(4096)
                self.received.append(data)
                conn.sendall(self.reply(data) if callable(self.reply) else self.reply)
            else:
                conn.recv(4096)          # until the probe closes
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop.set()
        self.listener.close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def grab(server: TinyServer, name: str, timeout: float = 5.0) -> ports.Answer:
    known = ports.moved_to(ports.BY_NAME[name], server.port)
    return ports.grab(socket.AF_INET, "127.0.0.1", known, timeout)


def others_only(moved: dict, **kwargs) -> probe.ProbeOptions:
    return probe.ProbeOptions("127.0.0.1", smtp_port=0, submission_port=0, imap_port=0,
                              pop3_port=0, imaps_port=0, pop3s_port=0, timeout=5,
                              others=tuple(moved), other_ports=moved, **kwargs)


# --------------------------------------------------------------------------
# the catalogue


def test_the_catalogue_is_consistent():
    assert len(ports.BY_NAME) == len(ports.CATALOGUE)
    assert all(k.kind in ports.KINDS for k in ports.CATALOGUE)
    assert all(k.tcp or k.udp for k in ports.CATALOGUE)
    # the services the seed's advice names
    for name, port in (("ftp", 21), ("telnet", 23), ("http", 80), ("https", 443),
                       ("mysql", 3306), ("postgresql", 5432), ("redis", 6379),
                       ("mongodb", 27017), ("memcached", 11211), ("rsync", 873),
                       ("snmp", 161), ("smux", 199), ("webmin", 10000), ("whm-tls", 2087)):
        assert ports.TCP_BY_PORT[port].name == name
    assert ports.BY_NAME["ftp"].level == FAIL and ports.BY_NAME["http"].level == WARN
    assert ports.BY_NAME["ssh"].level == OK
    assert not set(ports.MAIL_PORTS) & set(ports.TCP_BY_PORT)


def test_the_help_lists_the_catalogue(capsys):
    tcp = ports.levels_help(udp=False)
    assert "cleartext (fail): ftp 21, telnet 23" in tcp and "tftp" not in tcp
    assert "ntp 123/udp" in ports.levels_help()
    with pytest.raises(SystemExit):
        main(["audit-host", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(f"{k.name} {k.port}" in shown for k in ports.CATALOGUE)


def test_choose():
    everything = ports.choose()
    assert [k.name for k in everything] == [k.name for k in ports.CATALOGUE if k.tcp]
    chosen = ports.choose(("ftp", "redis"), {"ftp": 2121})
    assert [(k.name, k.port) for k in chosen] == [("ftp", 2121), ("redis", 6379)]
    assert [k.name for k in ports.choose(None, {"ftp": 0})][:2] == ["ssh", "telnet"]
    assert ports.choose(("tftp",)) == []            # UDP only: not probed
    assert ports.choose(()) == []
    with pytest.raises(ValueError, match="unknown service 'gopher'"):
        ports.choose(("gopher",))


@pytest.mark.parametrize("text,parsed", [("all", None), ("none", ()), ("ftp", ("ftp",)),
                                         ("ftp, redis,", ("ftp", "redis"))])
def test_parse_others(text, parsed):
    assert probe.parse_others(text) == parsed


@pytest.mark.parametrize("argv", [["--others", "gopher"], ["--other-port", "ftp"],
                                  ["--other-port", "gopher=70"], ["--other-port", "ftp=70000"],
                                  ["--other-port", "ftp=-1"]])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["probe", "127.0.0.1", *argv])
    assert exc.value.code == 2
    assert "probe: error" in capsys.readouterr().err


# --------------------------------------------------------------------------
# what a service says of itself


@pytest.mark.parametrize("ask,raw,text", [
    (ports.FIRST, b"220 (vsFTPd 3.0.3)\r\n220 second line\r\n", "220 (vsFTPd 3.0.3)"),
    (ports.FIRST, b"\r\n\r\nSSH-2.0-OpenSSH_9.2p1\r\n", "SSH-2.0-OpenSSH_9.2p1"),
    (ports.FIRST, b"\xff\xfe bad utf-8\n", "\ufffd\ufffd bad utf-8"),
    (ports.HTTP, b"HTTP/1.1 200 OK\r\nDate: x\r\nserver: nginx/1.22\r\n\r\nbody",
     "HTTP/1.1 200 OK; Server: nginx/1.22"),
    (ports.HTTP, b"HTTP/1.0 404 Not Found\r\n\r\n", "HTTP/1.0 404 Not Found"),
    (ports.MYSQL, b"\x4a\x00\x00\x00\x0a8.0.36-0ubuntu\x00\x08\x00\x00\x00",
     "handshake, version 8.0.36-0ubuntu"),
    (ports.MYSQL, b"\x45\x00\x00\x00\xff\x6a\x04Host '192.0.2.1' is not allowed",
     "error 1130: Host '192.0.2.1' is not allowed"),
    (ports.TELNET, b"\xff\xfd\x18\xff\xfd\x20\xff\xfb\x01Debian login: ",
     "option negotiation (3 commands); Debian login:"),
    (ports.TELNET, b"\xff\xfd\x18", "option negotiation (1 command)"),
    (ports.POSTGRES, b"N", "answers the SSLRequest: N (no TLS)"),
    (ports.POSTGRES, b"S", "answers the SSLRequest: S (TLS offered)"),
    (ports.REDIS, b"-NOAUTH Authentication required.\r\n", "-NOAUTH Authentication required."),
    (ports.FIRST, b"", ""),
])
def test_describe(ask, raw, text):
    assert ports.describe(ask, raw) == text


def test_a_long_banner_is_cut():
    text = ports.banner_text(b"220 " + b"x" * 5000)
    assert len(text) == ports.BANNER_CHARS + 3 and text.endswith("...")


HOSTILE_BYTES = st.one_of(
    st.binary(max_size=3000),
    st.sampled_from([t.encode("utf-8", "surrogatepass") for t in HOSTILE_TEXTS]),
    st.lists(st.sampled_from([b"\x1b[2J", b"\x1b]0;owned\x07", b"\x9b31m", b"\r", b"\n",
                              b"\x00", b"\xe2\x80\xae", b"\xff\xfb\x01", b"220 ", b"\\x1b",
                              b"HTTP/1.1 200 OK\r\n", b"Server: ", b"\r\n\r\n", b"\xc2\x9b",
                              b"\xed\xa0\x80", b"fail  ok"]),
             max_size=40).map(b"".join))


@given(HOSTILE_BYTES, st.sampled_from([ports.FIRST, ports.HTTP, ports.MYSQL, ports.TELNET,
                                       ports.POSTGRES, ports.REDIS]))
def test_a_hostile_banner_stays_data(raw, ask):
    text = ports.describe(ask, raw)
    # bounded: one banner, at most a status line and a Server header
    assert len(text) <= 2 * (ports.BANNER_CHARS + 3) + len("; Server: ")
    assert "\r" not in text and "\n" not in text
    known = ports.BY_NAME["ftp"]
    level, message, value = ports.judge_answer(ports.Answer(known, True, text))
    findings = [Finding(ports.AREA, level, "ftp:21", message, value),
                Finding(ports.AREA, OK, "after", "the next finding")]
    table = io.StringIO()
    render("probe 127.0.0.1", findings, False, table)
    shown = table.getvalue()
    # one line each: title, header, two findings, counts; nothing unescaped
    assert shown.count("\n") == 5
    assert shown_safely(shown.replace("\n", ""))
    assert shown.splitlines()[2].split()[:3] == ["services", "fail", "ftp:21"]
    out = io.StringIO()
    render("probe 127.0.0.1", findings, True, out)
    data = json.loads(out.getvalue())
    assert data["findings"][0]["value"] == value
    assert data["summary"] == {"ok": 1, "warn": 0, "fail": 1}


# --------------------------------------------------------------------------
# over a socket


def test_grab_a_banner():
    with TinyServer(b"220 (vsFTPd 3.0.3)\r\n") as server:
        answer = grab(server, "ftp")
    assert answer.answered and answer.banner == "220 (vsFTPd 3.0.3)" and answer.note == ""


def test_grab_asks_redis_one_ping_and_nothing_else():
    with TinyServer(reply=b"+PONG\r\n") as server:
        answer = grab(server, "redis")
        assert server.received == [b"PING\r\n"]
    level, message, value = ports.judge_answer(answer)
    assert (level, value) == (FAIL, "+PONG") and "without a password" in message


def test_grab_asks_http_for_its_head():
    reply = b"HTTP/1.1 403 Forbidden\r\nServer: Apache/2.4.57 (Debian)\r\n\r\n"
    with TinyServer(reply=reply) as server:
        answer = grab(server, "http")
        assert server.received[0].startswith(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n")
    assert answer.banner == "HTTP/1.1 403 Forbidden; Server: Apache/2.4.57 (Debian)"


@pytest.mark.parametrize("name,address,header", [
    ("mx.example.org", "192.0.2.1", "mx.example.org"),
    (None, "192.0.2.1", "192.0.2.1"), (None, "2001:db8::1", "[2001:db8::1]"),
    # a name taken from an SMTP banner is the server's to choose
    ("mx.example.org\r\nX-Evil: 1", "192.0.2.1", "192.0.2.1"),
    ("m\u00fcller.example", "192.0.2.1", "192.0.2.1"), ("a b", "192.0.2.1", "192.0.2.1")])
def test_the_host_header(name, address, header):
    assert ports._host_header(name, address) == header
    assert ports._question(ports.HTTP, header).count(b"\r\n") == 5


def test_grab_asks_postgresql_for_tls_only():
    with TinyServer(reply=b"N") as server:
        answer = grab(server, "postgresql")
        assert server.received == [bytes.fromhex("0000000804d2162f")]
    assert answer.banner == "answers the SSLRequest: N (no TLS)"


def _tls_server_context(tmp_path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "panel.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


def test_grab_https_through_a_self_signed_certificate(tmp_path):
    reply = b"HTTP/1.1 200 Document follows\r\nServer: MiniServ/2.105\r\n\r\n"
    with TinyServer(reply=reply, tls=_tls_server_context(tmp_path)) as server:
        answer = grab(server, "webmin")
    assert answer.banner == "HTTP/1.1 200 Document follows; Server: MiniServ/2.105"
    assert ports.judge_answer(answer)[0] == FAIL


def test_grab_https_from_a_server_without_tls():
    with TinyServer(b"220 not tls at all\r\n") as server:
        answer = grab(server, "https")
    assert answer.answered and answer.note.startswith("TLS handshake failed")
    level, message, _ = ports.judge_answer(answer)
    assert level == WARN and "(TLS handshake failed" in message


def test_grab_a_silent_service_waits_a_bounded_time():
    with TinyServer() as server:
        start = time.monotonic()
        answer = grab(server, "ftp", timeout=0.5)
        elapsed = time.monotonic() - start
    assert answer.answered and answer.banner == "" and answer.note == "said nothing within 0.5 s"
    assert elapsed < 2


def test_grab_a_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # bound, never listening: refused
        known = ports.moved_to(ports.BY_NAME["ftp"], port)
        answer = ports.grab(socket.AF_INET, "127.0.0.1", known, 2)
    assert not answer.answered


# --------------------------------------------------------------------------
# the probe's sweep


def test_the_probe_tries_the_others_in_parallel():
    servers = [TinyServer() for _ in range(6)]          # each says nothing
    names = ["ftp", "ssh", "telnet", "rsync", "vnc", "smux"]
    try:
        options = others_only({n: s.port for n, s in zip(names, servers)})
        options.timeout = 1.0
        start = time.monotonic()
        findings, errors = probe.Probe(options).run()
        elapsed = time.monotonic() - start
    finally:
        for server in servers:
            server.stop()
    assert errors == []
    assert [f.subject for f in findings] == [f"{n}:{s.port}" for n, s in zip(names, servers)]
    # six waits of 1 s one after the other would take 6 s
    assert elapsed < 4, elapsed
    assert all(s.connections == 1 for s in servers)


def test_the_probe_table_shows_a_hostile_banner_escaped(capsys):
    banner = b"220 \x1b[2J\x1b]0;owned\x07 \xe2\x80\xae evil\r\nfail  pwned\r\n"
    with TinyServer(banner) as server:
        code = main(["probe", "127.0.0.1", "--smtp-port", "0", "--submission-port", "0",
                     "--imap-port", "0", "--pop3-port", "0", "--imaps-port", "0",
                     "--pop3s-port", "0", "--others", "ftp", "--other-port",
                     f"ftp={server.port}", "--timeout", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "[220 \\x1b[2J\\x1b]0;owned\\x07 \\u202e evil]" in out
    assert "pwned" not in out                                  # the second line is not read


def test_nothing_else_answers_is_one_ok_finding():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
        sweep = probe.Probe(others_only({"ftp": closed, "redis": closed}))
        sweep._resolve()
        sweep.probe_others()
    assert [(f.subject, f.level) for f in sweep.findings] == [("other services", OK)]
    assert sweep.findings[0].message == "none of 2 other well-known services answers"
    assert sweep.findings[0].value == f"{closed} {closed}"


def test_nothing_answering_at_all_is_an_audit_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
        with pytest.raises(AuditError, match="nothing answers on ports 2 other well-known ports"):
            probe.Probe(others_only({"ftp": closed, "redis": closed})).run()


def test_the_sweep_binds_to_the_source_and_connects_only_to_the_address(monkeypatch):
    connected, bound = [], []
    real_connect, real_bind = socket.socket.connect, socket.socket.bind

    class Recording(socket.socket):
        def connect(self, address):
            connected.append(address[0])
            return real_connect(self, address)

        def bind(self, address):
            bound.append(address[0])
            return real_bind(self, address)

    with TinyServer(b"220 x\r\n") as ftp, TinyServer(reply=b"+PONG\r\n") as redis:
        monkeypatch.setattr(probe.socket, "socket", Recording)
        findings, _ = probe.Probe(others_only({"ftp": ftp.port, "redis": redis.port},
                                              source="127.0.0.2")).run()
        monkeypatch.undo()
    assert set(connected) == {"127.0.0.1"} and set(bound) == {"127.0.0.2"}
    assert len(findings) == 2
    with pytest.raises(AuditError, match="cannot connect from 198.51.100.254"):
        probe.Probe(others_only({"ftp": 21}, source="198.51.100.254")).run()


@settings(max_examples=20, deadline=None)
@given(HOSTILE_BYTES.filter(lambda b: b.strip()))
def test_whatever_a_service_sends_the_table_stays_one_line(raw):
    with TinyServer(raw) as server:
        findings, errors = probe.Probe(others_only({"ftp": server.port})).run()
    assert errors == [] and len(findings) == 1
    out = io.StringIO()
    render("probe", findings, False, out)
    assert out.getvalue().count("\n") == 4
    assert shown_safely(out.getvalue().replace("\n", ""))
