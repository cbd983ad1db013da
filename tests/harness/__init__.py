"""Real parts on loopback for end-to-end tests and the bench.

* :class:`DnsServer`: unbound serving ``tests/data/zones/*.zone`` (plus any
  zone text) and nothing else: every other name is NXDOMAIN, never recursed.
* :class:`BlackholeDns`: a DNS port that never answers (timeouts).
* :class:`Sink`: an in-process SMTP server keeping what Postfix delivers.
* :class:`Postfix`: a private Postfix instance relaying everything to a sink,
  with the milter lines of ``contrib/postfix/main.cf``.
* :class:`tests.harness.sendmail.Sendmail`: the same for a private Sendmail,
  built around the lines of ``contrib/sendmail/mailwarden.mc``.
* :class:`Mailwarden`: ``mailwarden run`` on a UNIX socket, with a written INI.
* :func:`smtp_send`: one SMTP transaction (optionally with XCLIENT, STARTTLS,
  AUTH, or from another loopback address), every reply recorded.

Every server listens on 127.0.0.1 on a free port; every process started here
is stopped by ``stop()`` (all classes are context managers too).  Nothing
waits by sleeping: readiness is polled with a bounded timeout.

A test with the fixtures of ``tests/e2e/conftest.py`` (DNS data goes in
``tests/data/zones/NAME.zone``, served to every e2e test)::

    def test_something(postfix, sink, mailwarden):
        mw = mailwarden({"check.size": {"max_size": "10K"}})
        data, msgid = make_message("subject", extra_headers=["X-A: b"])
        result = smtp_send(postfix.smtp_port, mail_from="a@sender.example",
                           rcpts=["b@rcpt.example"], data=data,
                           xclient={"ADDR": "198.51.100.7", "NAME": "mail.sender.example"})
        assert result.accepted, (result, mw.log_text())
        got = sink.wait_for_match(msgid.encode())
        assert got.header_values("Authentication-Results")

The session's Postfix is shared: a test that changes it with ``postconf()``
puts the old settings back (and ``restart()``s: after a ``reload()`` running
smtpd processes may serve a connection or two with the old settings).
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import dns.exception
import dns.message
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.name

from mailwarden.dns import split_txt, strip_zone_comment

ROOT = Path(__file__).resolve().parents[2]
ZONE_DIR = ROOT / "tests" / "data" / "zones"
CONTRIB_MAIN_CF = ROOT / "contrib" / "postfix" / "main.cf"
MAILWARDEN_BIN = ROOT / ".venv" / "bin" / "mailwarden"
AUTHSERV_ID = "mx.test.example"

__all__ = [
    "free_port", "wait_until", "DnsServer", "BlackholeDns", "Sink", "SinkMessage",
    "Postfix", "Mailwarden", "SmtpResult", "smtp_send", "zone_to_local_data",
    "make_message", "binaries_missing", "AUTHSERV_ID", "ROOT", "client_tls_context",
]


class HarnessError(RuntimeError):
    """A part of the test set-up did not come up or go down as it should."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking (also free for UDP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            # DNS servers take the same number for UDP: make sure it is free too
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise HarnessError("no free port found")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; HarnessError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def binaries_missing() -> list:
    """Names of the programs the e2e tests need that are not installed."""
    needed = ("postfix", "unbound", "postconf")
    return [name for name in needed
            if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _sbin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    path = Path("/usr/sbin") / name
    if path.exists():
        return str(path)
    raise HarnessError(f"{name} is not installed")


def _open_dirs_to_all(path: Path) -> None:
    """Let user postfix traverse to a socket under ``path``."""
    for parent in [path, *path.parents]:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            os.chmod(parent, mode | 0o005)


def _stop_process(proc: Optional[subprocess.Popen], timeout: float = 10.0,
                  sig: int = signal.SIGKILL) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --------------------------------------------------------------------------
# DNS


def zone_to_local_data(text: str, default_ttl: int = 300) -> list:
    """unbound ``local-data:`` values for zone lines ``NAME [TTL] [IN] TYPE RDATA``.

    The pseudo types TIMEOUT and SERVFAIL (for the in-process fake resolver)
    are skipped.  Each record is checked by dnspython, so a typo fails here
    and not as a puzzling NXDOMAIN later.
    """
    records = []
    for raw in text.splitlines():
        line = strip_zone_comment(raw).strip()
        if not line:
            continue
        parts = line.split(None, 1)
        name = parts[0] if parts[0].endswith(".") else parts[0] + "."
        tokens = parts[1].split(None, 1) if len(parts) > 1 else []
        ttl = default_ttl
        if tokens and tokens[0].isdigit():
            ttl = int(tokens[0])
            tokens = tokens[1].split(None, 1) if len(tokens) > 1 else []
        if tokens and tokens[0].upper() == "IN":
            tokens = tokens[1].split(None, 1) if len(tokens) > 1 else []
        if not tokens:
            raise ValueError(f"zone line without a type: {raw!r}")
        rdtype = tokens[0].upper()
        rdata = tokens[1].strip() if len(tokens) > 1 else ""
        if rdtype in ("TIMEOUT", "SERVFAIL"):
            continue
        if rdtype in ("TXT", "SPF"):
            rdata = split_txt(rdata)
        parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype),
                                     rdata, origin=dns.name.root)
        text_rdata = parsed.to_text()
        records.append(f"{name.lower()} {ttl} IN {rdtype} {text_rdata}")
    return records


def _quote_local_data(record: str) -> str:
    # unbound reads the value as one quoted string; TXT data carries double
    # quotes, so the outer quotes are single ones
    if "'" in record:
        raise ValueError(f"unbound cannot take a single quote in local-data: {record!r}")
    return f"local-data: '{record}'"


class DnsServer:
    """unbound on 127.0.0.1:``port`` answering only from the test zones.

    ``zone_files`` defaults to every ``tests/data/zones/*.zone``; ``zone_text``
    adds lines.  ``add(text)`` adds more lines and restarts the server.
    """

    def __init__(self, workdir, zone_text: str = "", zone_files: Optional[Iterable] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if zone_files is None:
            zone_files = sorted(ZONE_DIR.glob("*.zone"))
        self.zone_files = [Path(p) for p in zone_files]
        self.zone_text = zone_text
        self.port = free_port()
        self.config_path = self.workdir / "unbound.conf"
        self.log_path = self.workdir / "unbound.log"
        self._proc: Optional[subprocess.Popen] = None

    def _all_zone_text(self) -> str:
        parts = [p.read_text(encoding="utf-8") for p in self.zone_files]
        parts.append(self.zone_text)
        return "\n".join(parts)

    def _write_config(self) -> None:
        records = zone_to_local_data(self._all_zone_text())
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.workdir}"',
            '  pidfile: ""',
            f'  logfile: "{self.log_path}"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  num-threads: 1",
            "  do-not-query-localhost: yes",
            "  access-control: 127.0.0.0/8 allow",
            # answers must follow the zone text at once, never a stale copy
            "  cache-max-ttl: 0",
            "  cache-max-negative-ttl: 0",
            "  module-config: \"iterator\"",
            "  trust-anchor-signaling: no",
            # everything not in the test data is NXDOMAIN: never recurse
            '  local-zone: "." static',
        ]
        # unbound's built-in zones (RFC 6303 reverse zones of the test nets,
        # localhost, ...) would shadow the test data below them
        for zone in _DEFAULT_ZONES:
            lines.append(f'  local-zone: "{zone}" nodefault')
        lines += ["  " + _quote_local_data(r) for r in records]
        lines += ["remote-control:", "  control-enable: no"]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 15.0) -> "DnsServer":
        self._write_config()
        checkconf = shutil.which("unbound-checkconf") or "/usr/sbin/unbound-checkconf"
        if Path(checkconf).exists():
            check = subprocess.run([checkconf, str(self.config_path)],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise HarnessError(f"unbound config refused: {check.stdout}{check.stderr}")
        with open(self.workdir / "unbound.stderr", "ab") as errors:
            self._proc = subprocess.Popen(
                [_sbin("unbound"), "-d", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            wait_until(self._answers, timeout, f"unbound on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"unbound exited with {self._proc.returncode}: "
                               f"{self.log_text()[-2000:]}")
        query = dns.message.make_query("ready.invalid.", "A")
        try:
            dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
            return True
        except (dns.exception.Timeout, OSError):
            return False

    def query(self, name: str, rdtype: str = "A"):
        """One query straight to this server; the dnspython response."""
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=2)

    def txt_lookup(self, name: bytes, timeout: float = 5):
        """dkimpy's ``dnsfunc``: the first TXT record at ``name``, its
        character-strings joined, or None (for verifying DKIM signatures
        and ARC chains against this server's keys)."""
        for rrset in self.query(name.decode(), "TXT").answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return None

    def add(self, zone_text: str) -> None:
        """Serve more zone lines (restarts unbound on the same port)."""
        self.zone_text += "\n" + zone_text
        self.reload()

    def reload(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        text = ""
        for path in (self.log_path, self.workdir / "unbound.stderr"):
            if path.exists():
                text += path.read_text(encoding="utf-8", errors="replace")
        return text

    def stop(self) -> None:
        _stop_process(self._proc, sig=signal.SIGTERM)
        self._proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# unbound's default local zones (unbound.conf(5), "local-zone"): the ones that
# would hide test data.  Listing one unbound does not know is harmless.
_DEFAULT_ZONES = (
    "localhost.", "127.in-addr.arpa.", "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "home.arpa.", "onion.", "test.", "invalid.",
    "10.in-addr.arpa.", "16.172.in-addr.arpa.", "168.192.in-addr.arpa.",
    "0.in-addr.arpa.", "254.169.in-addr.arpa.", "2.0.192.in-addr.arpa.",
    "100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa.", "255.255.255.255.in-addr.arpa.",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.", "a.e.f.ip6.arpa.",
    "b.e.f.ip6.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.",
)


class BlackholeDns:
    """UDP and TCP on 127.0.0.1:``port`` that take queries and never answer."""

    def __init__(self):
        self.port = free_port()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind(("127.0.0.1", self.port))
        # accepted connections stay in the backlog, unanswered
        self._tcp.listen(64)

    def start(self) -> "BlackholeDns":
        return self

    def stop(self) -> None:
        for sock in (self._udp, self._tcp):
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------
# SMTP sink

_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)


@dataclass
class SinkMessage:
    """One message as delivered: envelope and the exact bytes of DATA."""
    mail_from: str
    rcpts: list
    data: bytes
    helo: str = ""

    @property
    def headers(self):
        """The header section, parsed (``email.message.Message``, compat32)."""
        return _PARSER.parsebytes(self.data)

    def header_values(self, name: str) -> list:
        """Every value of header ``name``, unfolded, in order."""
        return [re.sub(r"\r?\n[ \t]+", " ", str(v)).strip()
                for v in (self.headers.get_all(name) or [])]

    @property
    def body(self) -> bytes:
        sep = self.data.find(b"\r\n\r\n")
        return b"" if sep < 0 else self.data[sep + 4:]


class Sink:
    """An SMTP server on 127.0.0.1 keeping every message it is given.

    Deliberately plain: no PIPELINING, no STARTTLS, no AUTH, so Postfix's smtp
    client speaks one command at a time.  ``reply_for_data`` can be set to an
    SMTP reply (e.g. ``"451 4.3.0 try later"``) to refuse messages.
    """

    def __init__(self, port: Optional[int] = None):
        self.port = port or free_port()
        self.messages: list = []
        self.reply_for_data: Optional[str] = None
        self._cond = threading.Condition()
        self._server: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._running = False

    def start(self) -> "Sink":
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self._server.listen(128)
        self._server.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._accept_loop, name="sink", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while self._running:
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(60)
        try:
            with conn, conn.makefile("rb") as rfile:
                self._converse(conn, rfile)
        except (OSError, ValueError):
            pass                          # the client went away: nothing to keep

    def _converse(self, conn, rfile) -> None:
        def say(text: str) -> None:
            conn.sendall(text.encode("ascii") + b"\r\n")

        say("220 sink.test.example ESMTP")
        helo, mail_from, rcpts = "", None, []
        while True:
            line = rfile.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd[:4].upper()
            if verb == "EHLO":
                helo = cmd[5:].strip()
                say("250-sink.test.example")
                say("250-8BITMIME")
                say("250-SMTPUTF8")
                say("250 SIZE 0")
            elif verb == "HELO":
                helo = cmd[5:].strip()
                say("250 sink.test.example")
            elif verb == "MAIL":
                mail_from, rcpts = _angle(cmd[10:]), []
                say("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(_angle(cmd[8:]))
                say("250 2.1.5 ok")
            elif verb == "DATA":
                if mail_from is None or not rcpts:
                    say("503 5.5.1 no recipients")
                    continue
                say("354 go ahead")
                data = _read_data(rfile)
                if self.reply_for_data:
                    say(self.reply_for_data)
                else:
                    with self._cond:
                        self.messages.append(SinkMessage(mail_from, list(rcpts), data, helo))
                        self._cond.notify_all()
                    say("250 2.0.0 kept")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                say("250 2.0.0 ok")
            elif verb == "NOOP":
                say("250 2.0.0 ok")
            elif verb == "QUIT":
                say("221 2.0.0 bye")
                return
            else:
                say("502 5.5.2 not implemented")

    def wait_for(self, count: int, timeout: float = 30.0) -> list:
        """Block until at least ``count`` messages arrived; the messages."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"sink got {len(self.messages)} of {count} "
                                       f"messages within {timeout:g}s")
                self._cond.wait(left)
            return list(self.messages)

    def find(self, needle: bytes) -> list:
        """Messages whose data contains ``needle`` (e.g. a unique Message-ID)."""
        with self._cond:
            return [m for m in self.messages if needle in m.data]

    def wait_for_match(self, needle: bytes, timeout: float = 30.0) -> SinkMessage:
        """Block until a message containing ``needle`` arrived; that message."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if needle in m.data]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"no message with {needle!r} reached the sink "
                                       f"within {timeout:g}s")
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def stop(self) -> None:
        self._running = False
        if self._server is not None:
            self._server.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _angle(text: str) -> str:
    text = text.strip()
    if text.startswith("<"):
        end = text.find(">")
        return text[1:end] if end > 0 else text[1:]
    return text.split()[0] if text else ""


def _read_data(rfile) -> bytes:
    lines = []
    while True:
        line = rfile.readline(1 << 20)
        if not line:
            raise ValueError("connection closed in DATA")
        if line in (b".\r\n", b".\n"):
            break
        if line.startswith(b"."):
            line = line[1:]
        lines.append(line)
    return b"".join(lines)


# --------------------------------------------------------------------------
# Postfix

# master.cf of the private instance: no chroot (paths are absolute and the
# milter socket lives outside any jail), smtpd on the chosen port.
_MASTER_CF = """\
{smtpd_listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def contrib_milter_settings(milter_socket: str) -> dict:
    """The settings of ``contrib/postfix/main.cf``, with the socket replaced.

    The private Postfix uses exactly these lines, so the snippet admins paste
    is the one the tests run.
    """
    settings = {}
    key = None
    for raw in CONTRIB_MAIN_CF.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            key = None if not raw.strip() else key
            continue
        if raw[0] in " \t" and key:
            settings[key] += " " + raw.strip()
            continue
        name, sep, value = raw.partition("=")
        if not sep:
            raise HarnessError(f"{CONTRIB_MAIN_CF}: not a setting: {raw!r}")
        key = name.strip()
        settings[key] = value.strip()
    for name in ("smtpd_milters", "non_smtpd_milters"):
        if name in settings:
            settings[name] = milter_socket
    return settings


def make_certificate(directory: Path, common_name: str) -> None:
    """A self-signed ``cert.pem`` and its ``key.pem`` (mode 0600) in
    ``directory``, for an MTA that offers STARTTLS (kept if there)."""
    if (directory / "cert.pem").exists():
        return
    directory.mkdir(exist_ok=True)
    done = subprocess.run(
        [shutil.which("openssl") or "/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048",
         "-nodes", "-days", "2", "-subj", f"/CN={common_name}",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise HarnessError(f"openssl could not make a test certificate: {done.stderr}")
    os.chmod(directory / "key.pem", 0o600)


class Postfix:
    """A private Postfix on 127.0.0.1:``smtp_port`` relaying all mail to a sink.

    ``milter_socket`` is a Postfix milter address (``unix:/path`` or
    ``inet:127.0.0.1:PORT``); None runs without a milter.  ``extra_main_cf``
    adds or overrides main.cf settings.  Its queue, data and config
    directories live under ``workdir``: the system Postfix is never touched.
    """

    def __init__(self, workdir, sink_port: int, milter_socket: Optional[str] = None,
                 extra_main_cf: Optional[dict] = None, smtp_port: Optional[int] = None):
        self.workdir = Path(workdir).resolve()
        self.sink_port = sink_port
        self.milter_socket = milter_socket
        self.smtp_port = smtp_port or free_port()
        self.config_dir = self.workdir / "etc"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "maillog"
        self.settings = self._base_settings()
        if milter_socket:
            self.settings.update(contrib_milter_settings(milter_socket))
        self.settings.update(extra_main_cf or {})
        self._started = False

    def _base_settings(self) -> dict:
        sink = f"[127.0.0.1]:{self.sink_port}"
        return {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": AUTHSERV_ID,
            "mydomain": "test.example",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            # XCLIENT ADDR=IPV6:... needs IPv6 enabled, even on loopback only
            "inet_protocols": "all",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "static:ALL",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "relayhost": sink,
            "transport_maps": f"static:smtp:{sink}",
            "smtp_tls_security_level": "none",
            # STARTTLS offered with a self-signed certificate made at start
            # (smtp_send(starttls=True)), so the milter can see {tls_version}
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self.workdir / "tls" / "cert.pem"),
            "smtpd_tls_key_file": str(self.workdir / "tls" / "key.pem"),
            "smtpd_tls_received_header": "yes",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.workdir),
            # the limit under test is mailwarden's, not Postfix's
            "message_size_limit": str(64 * 1024 * 1024),
            # deliver and retry at once: tests must not wait for backoff
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "in_flow_delay": "0",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtp_connection_cache_on_demand": "yes",
            "default_process_limit": "100",
            "biff": "no",
            "append_dot_mydomain": "no",
            "notify_classes": "",
            "milter_command_timeout": "30s",
            "milter_content_timeout": "60s",
        }

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {v}" for k, v in self.settings.items()]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n", encoding="ascii")
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(smtpd_listen=f"127.0.0.1:{self.smtp_port}"), encoding="ascii")

    def _prepare_dirs(self) -> None:
        import grp
        import pwd
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        _open_dirs_to_all(self.workdir)
        self.queue_dir.mkdir(exist_ok=True)
        os.chown(self.queue_dir, 0, 0)
        os.chmod(self.queue_dir, 0o755)
        self.data_dir.mkdir(exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, grp.getgrnam("postfix").gr_gid)
        os.chmod(self.data_dir, 0o700)
        make_certificate(self.workdir / "tls", AUTHSERV_ID)

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([_sbin("postfix"), "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise HarnessError(f"postfix {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stdout}{proc.stderr}\n--- maillog ---\n"
                               f"{self.log()[-3000:]}")
        return proc

    def start(self, timeout: float = 30.0) -> "Postfix":
        if os.geteuid() != 0:
            raise HarnessError("a private Postfix needs root (it runs as user postfix)")
        self._prepare_dirs()
        self._write_config()
        self._postfix("check")
        self._started = True
        try:
            self._postfix("start")
            wait_until(self._smtp_ready, timeout, f"Postfix smtpd on {self.smtp_port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _smtp_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2) as s:
                s.settimeout(5)
                greeting = s.recv(512)
                s.sendall(b"QUIT\r\n")
                return greeting.startswith(b"220")
        except OSError:
            return False

    def master_pid(self) -> Optional[int]:
        try:
            text = (self.queue_dir / "pid" / "master.pid").read_text().strip()
            pid = int(text)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def postconf(self, **settings) -> None:
        """Change main.cf settings (call :meth:`reload` to apply them)."""
        self.settings.update({k: str(v) for k, v in settings.items()})
        self._write_config()

    @contextlib.contextmanager
    def settings_changed(self, **settings):
        """main.cf ``settings`` in force (restarted) inside the block; the
        ones before, or none where there was none, after it."""
        before = {key: self.settings.get(key) for key in settings}
        self.postconf(**settings)
        self.restart()
        try:
            yield self
        finally:
            for key, value in before.items():
                if value is None:
                    self.settings.pop(key, None)
                else:
                    self.settings[key] = value
            self.postconf()
            self.restart()

    def reload(self) -> None:
        """``postfix reload``: smtpd processes already running may still take
        a connection or two with the old settings; :meth:`restart` does not."""
        self._postfix("reload")

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again: every new connection sees the current settings."""
        self.stop()
        self.start(timeout)

    def flush(self) -> None:
        """Ask the queue manager to try deferred mail now."""
        self._postfix("flush")

    def queue_files(self) -> list:
        """Queue files still in the incoming, active or deferred queues."""
        out = []
        for name in ("incoming", "active", "deferred", "hold", "maildrop"):
            base = self.queue_dir / name
            if base.exists():
                out += [p for p in base.rglob("*") if p.is_file()]
        return out

    def wait_queue_empty(self, timeout: float = 30.0) -> None:
        wait_until(lambda: not self.queue_files(), timeout, "the Postfix queue to empty",
                   interval=0.1)

    def sendmail(self, sender: str, rcpts: list, data: bytes) -> subprocess.CompletedProcess:
        """Submit through sendmail(1): the path of ``non_smtpd_milters``."""
        return subprocess.run([_sbin("sendmail"), "-C", str(self.config_dir), "-f", sender,
                               "--", *rcpts], input=data, capture_output=True, timeout=60)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _processes(self) -> list:
        """PIDs of processes started by this instance's master (and itself)."""
        master = self.master_pid()
        if master is None:
            return []
        pids = [master]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == master:
                pids.append(int(entry.name))
        return pids

    def stop(self, timeout: float = 15.0) -> None:
        if not self._started:
            return
        pids = self._processes()
        self._postfix("stop", check=False)
        try:
            wait_until(lambda: not any(_alive(p) for p in pids), timeout,
                       "Postfix processes to exit", interval=0.05)
        except HarnessError:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._started = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------
# mailwarden

class Mailwarden:
    """``mailwarden run`` with its own INI, listening on a UNIX socket.

    ``overrides`` is ``{section: {key: value}}`` on top of the test defaults
    (authserv-id ``mx.test.example``, DNS at 127.0.0.1:``dns_port``, debug
    log to stderr, which goes to ``workdir/mailwarden.log``).
    """

    def __init__(self, workdir, dns_port: int, overrides: Optional[dict] = None,
                 socket_path=None, program: Optional[list] = None):
        self.workdir = Path(workdir).resolve()
        # what runs as ``mailwarden`` (the bench runs a variant: bench/untuned.py)
        self.program = list(program) if program else [str(MAILWARDEN_BIN)]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dns_port = dns_port
        self.socket_path = Path(socket_path) if socket_path else self.workdir / "milter.sock"
        self.config_path = self.workdir / "mailwarden.ini"
        self.log_path = self.workdir / "mailwarden.log"
        self.overrides = overrides or {}
        self._proc: Optional[subprocess.Popen] = None
        self._log_offset = 0

    @property
    def milter_address(self) -> str:
        """The socket in Postfix notation: ``unix:/path``, or the ``inet:HOST:PORT``
        an override of ``[milter] socket`` asks for."""
        return self.overrides.get("milter", {}).get("socket") or f"unix:{self.socket_path}"

    def settings(self) -> dict:
        base = {
            # tests run as root and keep it (test_security drops privileges)
            "milter": {"socket": f"unix:{self.socket_path}", "log": "stderr",
                       "log_level": "debug", "socket_mode": "0666", "allow_root": "yes"},
            "authserv": {"id": AUTHSERV_ID},
            "dns": {"nameservers": "127.0.0.1", "port": str(self.dns_port),
                    "timeout": "1s"},
        }
        for section, values in self.overrides.items():
            base.setdefault(section, {}).update({k: str(v) for k, v in values.items()})
        return base

    def write_config(self) -> Path:
        lines = []
        for section, values in self.settings().items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
            lines.append("")
        self.config_path.write_text("\n".join(lines), encoding="utf-8")
        return self.config_path

    def start(self, timeout: float = 20.0) -> "Mailwarden":
        self.write_config()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        _open_dirs_to_all(self.socket_path.parent)
        if self.socket_path.exists():
            self.socket_path.unlink()
        log = open(self.log_path, "ab")
        self._log_offset = log.tell()
        try:
            self._proc = subprocess.Popen(
                [*self.program, "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(self.workdir))
        finally:
            log.close()
        try:
            wait_until(self._accepts, timeout, f"mailwarden on {self.milter_address}")
        except BaseException:
            self.stop()
            raise
        return self

    def _accepts(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"mailwarden exited with {self._proc.returncode}:\n"
                               f"{self.log_text()[-3000:]}")
        address = self.milter_address
        if address.startswith("inet:"):
            host, _, port = address[len("inet:"):].rpartition(":")
            return _port_open(int(port), host.strip("[]") or "127.0.0.1")
        if not self.socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(str(self.socket_path))
                return True
            except OSError:
                return False

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        # libmilter looks at SIGTERM only every few seconds: tests kill
        _stop_process(self._proc, sig=signal.SIGKILL)
        self._proc = None
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def restart(self, overrides: Optional[dict] = None) -> "Mailwarden":
        self.stop()
        if overrides is not None:
            self.overrides = overrides
        return self.start()

    def log_text(self, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        if since_start:
            data = data[self._log_offset:]
        return data.decode("utf-8", "replace")

    def scan(self, message: bytes, *, client_ip: str, helo: str = "", mail_from: str = "",
             rcpts: Iterable[str] = (), client_name: str = "", auth: str = "",
             esmtp_size: Optional[int] = None, extra_args: Iterable[str] = ()):
        """``mailwarden scan`` with this instance's INI; the parsed JSON."""
        import json
        path = self.workdir / "scan-input.eml"
        path.write_bytes(message)
        args = [str(MAILWARDEN_BIN), "scan", "-c", str(self.config_path),
                "--client-ip", client_ip, "--helo", helo, "--mail-from", mail_from]
        if client_name:
            args += ["--client-name", client_name]
        if auth:
            args += ["--auth", auth]
        if esmtp_size is not None:
            args += ["--esmtp-size", str(esmtp_size)]
        for rcpt in rcpts:
            args += ["--rcpt", rcpt]
        args += [*extra_args, str(path)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise HarnessError(f"mailwarden scan exited {proc.returncode}: {proc.stderr}")
        return json.loads(proc.stdout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------
# SMTP client

@dataclass
class SmtpResult:
    """How one transaction ended.

    ``stage`` is where it ended: connect, starttls, auth, xclient, helo, mail,
    rcpt, data or done; ``code``/``text`` the last reply (the DATA end reply
    when it went through); ``replies`` every ``(command, code, text)``.
    """
    code: int
    text: str
    stage: str
    replies: list = field(default_factory=list)
    accepted_rcpts: list = field(default_factory=list)
    # the TLS session as the client saw it: (cipher, version, bits), e.g.
    # ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256); None in cleartext
    tls: Optional[tuple] = None

    @property
    def accepted(self) -> bool:
        return self.stage == "done" and 200 <= self.code < 300

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code of the last reply, or ''."""
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        return m.group(1) if m else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text} (at {self.stage})"


def read_smtp_reply(rfile, lost=ConnectionError) -> tuple:
    """(code, text) of one SMTP reply, multi-line text joined by newlines;
    ``lost`` is raised when the server closes or answers nonsense."""
    lines = []
    while True:
        line = rfile.readline(8192)
        if not line:
            raise lost("connection closed by the server")
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit():
            raise lost(f"not an SMTP reply: {text!r}")
        lines.append(text[4:])
        if len(text) == 3 or text[3] != "-":
            return int(text[:3]), "\n".join(lines)


class _Conversation:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.replies: list = []

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def start_tls(self, server_name: str, context=None) -> None:
        self.rfile.close()
        context = context if context is not None else client_tls_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=None)
        self.rfile = self.sock.makefile("rb")

    def read_reply(self, command: str) -> tuple:
        reply = read_smtp_reply(self.rfile)
        self.replies.append((command, *reply))
        return reply

    def command(self, line: str) -> tuple:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self.read_reply(line.split(" ", 1)[0].upper())


def client_tls_context(*, minimum: Optional[str] = None, maximum: Optional[str] = None,
                       legacy: bool = False, cert: Optional[tuple] = None):
    """An SSL context for :func:`smtp_send`: the server's certificate is not
    verified; ``minimum``/``maximum`` name TLS versions (``"TLSv1_1"``,
    ``"TLSv1_2"``, ...: ``ssl.TLSVersion`` members); ``legacy`` allows what
    OpenSSL's security level 0 allows (TLS 1.0 and 1.1 need it, with a
    server that offers them); ``cert`` is a client certificate ``(key, cert)``."""
    import ssl
    import warnings
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if legacy:
        context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        # naming TLS 1.0 or 1.1 is deprecated: here it is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum:
            context.minimum_version = ssl.TLSVersion[minimum]
        if maximum:
            context.maximum_version = ssl.TLSVersion[maximum]
    if cert is not None:
        key, chain = cert
        context.load_cert_chain(str(chain), str(key))
    return context


def _xclient_value(value: str) -> str:
    # RFC xtext (Postfix XCLIENT_README): '+', '=' and controls as +HH
    out = []
    for ch in str(value):
        if ch in "+=" or ord(ch) < 33 or ord(ch) > 126:
            out.append("".join(f"+{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, CRLF.CRLF."""
    data = re.sub(rb"\r?\n|\r", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data + b".\r\n"


def smtp_send(port: int, *, xclient: Optional[dict] = None, helo: str = "client.test.example",
              mail_from: str, rcpts: Iterable[str], data: bytes,
              esmtp_size: Optional[int] = None, timeout: float = 30,
              host: str = "127.0.0.1", starttls: bool = False,
              source: Optional[str] = None, auth: Optional[tuple] = None,
              tls_context=None) -> SmtpResult:
    """One SMTP transaction; never raises for an SMTP refusal, only returns it.

    ``xclient`` (e.g. ``{"ADDR": "198.51.100.7", "NAME": "mail.sender.example",
    "HELO": "...", "LOGIN": "alice"}``) is sent right after EHLO; the server
    then greets anew and EHLO is repeated.  ``starttls`` starts TLS (the
    certificate is not verified) after the first EHLO, before XCLIENT, so
    the milter sees ``{tls_version}`` and ``{cipher}``; the stage is then
    "starttls" if that fails.  ``tls_context`` (see :func:`client_tls_context`)
    chooses versions, ciphers and a client certificate; the session the
    client got is the result's ``tls``.  Recipients refused one by one are
    recorded; DATA follows if at least one was accepted.  ``source`` binds
    the client socket to that local address (e.g. 127.0.0.5): how a client
    is presented to an MTA without XCLIENT (Sendmail).  ``auth`` is
    ``(login, password)`` for SMTP AUTH PLAIN after EHLO (and STARTTLS);
    the stage is then "auth" if it is refused.
    """
    rcpts = list(rcpts)
    try:
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
    except OSError as exc:
        return SmtpResult(0, f"connect failed: {exc}", "connect")
    conv = _Conversation(sock)

    def done(code, text, stage, accepted=()):
        # cipher()'s version is the one that defined the cipher suite (TLSv1.0
        # for ECDHE-RSA-AES256-SHA in a TLS 1.1 session): the session's is version()
        session = conv.sock.cipher() if hasattr(conv.sock, "cipher") else None
        tls = (session[0], conv.sock.version(), session[2]) if session else None
        return SmtpResult(code, text, stage, conv.replies, list(accepted), tls)

    stage = "connect"
    try:
        with sock:
            code, text = conv.read_reply("CONNECT")
            if code != 220:
                return done(code, text, stage)
            stage = "helo"
            code, text = conv.command(f"EHLO {helo}")
            if code != 250:
                return done(code, text, stage)
            if starttls:
                stage = "starttls"
                code, text = conv.command("STARTTLS")
                if code != 220:
                    return done(code, text, stage)
                conv.start_tls(host, tls_context)
                stage = "helo"
                code, text = conv.command(f"EHLO {helo}")
                if code != 250:
                    return done(code, text, stage)
            if auth:
                stage = "auth"
                token = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode("utf-8")).decode()
                code, text = conv.command(f"AUTH PLAIN {token}")
                if code != 235:
                    return done(code, text, stage)
            if xclient:
                stage = "xclient"
                attrs = " ".join(f"{k.upper()}={_xclient_value(v)}" for k, v in xclient.items())
                code, text = conv.command(f"XCLIENT {attrs}")
                if code != 220:
                    return done(code, text, stage)
                stage = "helo"
                code, text = conv.command(f"EHLO {helo}")
                if code != 250:
                    return done(code, text, stage)
            stage = "mail"
            mail = f"MAIL FROM:<{mail_from}>"
            if esmtp_size is not None:
                mail += f" SIZE={esmtp_size}"
            if re.search(rb"[\x80-\xff]", data):
                mail += " BODY=8BITMIME"
            code, text = conv.command(mail)
            if code != 250:
                return done(code, text, stage)
            stage = "rcpt"
            accepted = []
            for rcpt in rcpts:
                code, text = conv.command(f"RCPT TO:<{rcpt}>")
                if 200 <= code < 300:
                    accepted.append(rcpt)
            if not accepted:
                return done(code, text, stage)
            stage = "data"
            code, text = conv.command("DATA")
            if code != 354:
                return done(code, text, stage, accepted)
            conv.sock.sendall(dot_stuff(data))
            code, text = conv.read_reply("END-OF-DATA")
            if code >= 400:
                return done(code, text, stage, accepted)
            stage = "done"
            result = done(code, text, stage, accepted)
            try:
                conv.command("QUIT")
            except (OSError, ConnectionError):
                pass
            return result
    except (OSError, ConnectionError) as exc:
        return SmtpResult(0, f"{exc.__class__.__name__}: {exc}", stage, conv.replies)
    finally:
        conv.close()


_counter = iter(range(1, 1 << 62))
_counter_lock = threading.Lock()


def make_message(subject: str = "test", *, sender: str = "alice@sender.example",
                 to: str = "bob@rcpt.example", body: str = "Hello.\n",
                 extra_headers: Iterable[str] = ()) -> tuple:
    """A simple RFC 5322 message and its unique Message-ID: ``(bytes, msgid)``."""
    with _counter_lock:
        n = next(_counter)
    msgid = f"<e2e.{os.getpid()}.{n}.{time.monotonic_ns()}@sender.example>"
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
            "Date: Mon, 01 Jan 2024 00:00:00 +0000", f"Message-ID: {msgid}",
            *extra_headers]
    text = "\r\n".join(head) + "\r\n\r\n" + body.replace("\n", "\r\n")
    return text.encode("utf-8"), msgid


def client_ip(text: str) -> str:
    """``198.51.100.7`` or ``IPV6:2001:db8::25`` as a bare address."""
    return str(ipaddress.ip_address(re.sub(r"(?i)^ipv6:", "", text)))
