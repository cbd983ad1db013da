"""The well-known services that do not belong on a mail server, by port.

"Have a dedicated mail server and move other services like FTP to other
servers; remove unneeded functionality."  ``probe HOST`` (what answers from
the network) and ``audit-host`` (what listens on this machine) both judge
what they find with this one catalogue: a service's kind gives the level
and the advice of its finding.

============  =====  ================================================================
kind          level  services (TCP port; ``/udp`` where it also counts over UDP)
============  =====  ================================================================
cleartext     fail   ftp 21, telnet 23, rexec 512, rlogin 513, rsh 514
database      fail   mysql 3306, postgresql 5432, redis 6379, mongodb 27017,
                     memcached 11211 (and /udp), elasticsearch 9200
panel         fail   cpanel 2082/2083, whm 2086/2087, directadmin 2222, plesk 8443,
                     hestia 8083, cockpit 9090, webmin 10000, docker 2375/2376
files         fail   rsync 873, ftps 990, tftp 69/udp, nfs 2049, smb 445,
                     netbios 139 (137/138/udp)
management    fail   snmp 161 (and /udp), smux 199, rpcbind 111 (and /udp), x11 6000,
                     vnc 5900
web           warn   http 80, https 443, http-alt 8080
network       warn   dns 53 (and /udp), ntp 123/udp, syslog 514/udp, mdns 5353/udp,
                     ssdp 1900/udp, ldap 389
remote admin  ok     ssh 22
============  =====  ================================================================

A web server may serve what mail needs (webmail, the MTA-STS policy, ACME
challenges), and a resolver for the DNS lists belongs on the mail host,
on loopback: those are warnings, not failures.

:func:`grab` connects to one port and reads what the service says of
itself, asking as little as a client's first line (``HEAD /`` for HTTP,
``PING`` for Redis, ``version`` for memcached, the SSLRequest for
PostgreSQL): never a login, never a second command.  What it reads is
bounded (:data:`MAX_BANNER_BYTES`, :data:`BANNER_CHARS`, one wait of at
most :data:`BANNER_WAIT` seconds) and is data: it travels as a finding's
``value`` and reaches a terminal only through ``findings.printable``.
"""

from __future__ import annotations

import argparse
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from .findings import FAIL, OK, WARN

AREA = "services"

CLEARTEXT, DATABASE, PANEL, FILES, MANAGEMENT, WEB, NETWORK, REMOTE_ADMIN = (
    "cleartext", "database", "panel", "files", "management", "web", "network", "remote admin")

# kind -> (level, advice)
KINDS = {
    CLEARTEXT: (FAIL, "logins cross the network in clear; move it to another server or "
                      "remove it"),
    DATABASE: (FAIL, "a database reachable from the network; bind it to loopback or move "
                     "it to a server of its own"),
    PANEL: (FAIL, "an administration panel reachable from the network; reach it through "
                  "a VPN or an SSH tunnel, or remove it"),
    FILES: (FAIL, "file sharing on the mail host; move it to another server or remove it"),
    MANAGEMENT: (FAIL, "a management service reachable from the network; bind it to "
                       "loopback, filter it, or remove it"),
    WEB: (WARN, "a web server on the mail host: keep it only for what mail needs "
                "(webmail, the MTA-STS policy, ACME) and move the rest"),
    NETWORK: (WARN, "a network service on the mail host; a resolver for the DNS lists "
                    "belongs on loopback, anything else on another server"),
    REMOTE_ADMIN: (OK, "remote administration"),
}

# how a service is asked to say what it is
FIRST = "first"            # it speaks first: read
HTTP, HTTPS = "http", "https"
REDIS, MEMCACHED, POSTGRES, MYSQL, TELNET = "redis", "memcached", "postgres", "mysql", "telnet"
SILENT = "silent"          # it speaks only to a real client: connecting is all


@dataclass(frozen=True)
class KnownPort:
    name: str
    port: int
    kind: str
    what: str              # how the finding names it
    ask: str = FIRST
    tcp: bool = True
    udp: bool = False

    @property
    def level(self) -> str:
        return KINDS[self.kind][0]

    @property
    def advice(self) -> str:
        return KINDS[self.kind][1]


CATALOGUE = (
    KnownPort("ftp", 21, CLEARTEXT, "FTP"),
    KnownPort("ssh", 22, REMOTE_ADMIN, "SSH"),
    KnownPort("telnet", 23, CLEARTEXT, "Telnet", TELNET),
    KnownPort("dns", 53, NETWORK, "DNS", SILENT, udp=True),
    KnownPort("tftp", 69, FILES, "TFTP", tcp=False, udp=True),
    KnownPort("http", 80, WEB, "HTTP", HTTP),
    KnownPort("rpcbind", 111, MANAGEMENT, "rpcbind", SILENT, udp=True),
    KnownPort("ntp", 123, NETWORK, "NTP", tcp=False, udp=True),
    KnownPort("netbios-ns", 137, FILES, "NetBIOS", tcp=False, udp=True),
    KnownPort("netbios-dgm", 138, FILES, "NetBIOS", tcp=False, udp=True),
    KnownPort("netbios", 139, FILES, "NetBIOS session", SILENT),
    KnownPort("snmp", 161, MANAGEMENT, "SNMP", SILENT, udp=True),
    KnownPort("smux", 199, MANAGEMENT, "SNMP multiplexing (SMUX)", SILENT),
    KnownPort("ldap", 389, NETWORK, "LDAP", SILENT),
    KnownPort("https", 443, WEB, "HTTPS", HTTPS),
    KnownPort("smb", 445, FILES, "SMB", SILENT),
    KnownPort("rexec", 512, CLEARTEXT, "rexec", SILENT),
    KnownPort("rlogin", 513, CLEARTEXT, "rlogin", SILENT),
    KnownPort("rsh", 514, CLEARTEXT, "rsh", SILENT),
    KnownPort("syslog", 514, NETWORK, "syslog", tcp=False, udp=True),
    KnownPort("rsync", 873, FILES, "rsync"),
    KnownPort("ftps", 990, FILES, "FTPS", SILENT),
    KnownPort("ssdp", 1900, NETWORK, "SSDP", tcp=False, udp=True),
    KnownPort("nfs", 2049, FILES, "NFS", SILENT),
    KnownPort("cpanel", 2082, PANEL, "cPanel", HTTP),
    KnownPort("cpanel-tls", 2083, PANEL, "cPanel", HTTPS),
    KnownPort("whm", 2086, PANEL, "WHM", HTTP),
    KnownPort("whm-tls", 2087, PANEL, "WHM", HTTPS),
    KnownPort("directadmin", 2222, PANEL, "DirectAdmin", HTTP),
    KnownPort("docker", 2375, PANEL, "the Docker API (root on the host)", HTTP),
    KnownPort("docker-tls", 2376, PANEL, "the Docker API (root on the host)", HTTPS),
    KnownPort("mysql", 3306, DATABASE, "MySQL/MariaDB", MYSQL),
    KnownPort("postgresql", 5432, DATABASE, "PostgreSQL", POSTGRES),
    KnownPort("mdns", 5353, NETWORK, "mDNS", tcp=False, udp=True),
    KnownPort("vnc", 5900, MANAGEMENT, "VNC"),
    KnownPort("x11", 6000, MANAGEMENT, "X11", SILENT),
    KnownPort("redis", 6379, DATABASE, "Redis", REDIS),
    KnownPort("http-alt", 8080, WEB, "HTTP", HTTP),
    KnownPort("hestia", 8083, PANEL, "HestiaCP/VestaCP", HTTPS),
    KnownPort("plesk", 8443, PANEL, "Plesk (or another HTTPS service)", HTTPS),
    KnownPort("cockpit", 9090, PANEL, "Cockpit", HTTPS),
    KnownPort("elasticsearch", 9200, DATABASE, "Elasticsearch", HTTP),
    KnownPort("webmin", 10000, PANEL, "Webmin", HTTPS),
    KnownPort("memcached", 11211, DATABASE, "memcached", MEMCACHED, udp=True),
    KnownPort("mongodb", 27017, DATABASE, "MongoDB", SILENT),
)

BY_NAME = {k.name: k for k in CATALOGUE}
TCP_BY_PORT = {k.port: k for k in CATALOGUE if k.tcp}
UDP_BY_PORT = {k.port: k for k in CATALOGUE if k.udp}

# The mail's own ports: smtp, submissions, submission, pop3(s), imap(s),
# ManageSieve, LMTP
MAIL_PORTS = {25: "smtp", 465: "submissions", 587: "submission", 110: "pop3", 995: "pop3s",
              143: "imap", 993: "imaps", 4190: "sieve", 24: "lmtp"}

MAX_BANNER_BYTES = 2048
BANNER_CHARS = 160
BANNER_WAIT = 3.0


def choose(names: Optional[Iterable[str]] = None, moved: Optional[dict] = None) -> list:
    """The TCP entries to probe: ``names`` (None: all of them), each on its
    own port or the one ``moved`` gives it (0: left out)."""
    moved = moved or {}
    unknown = [n for n in list(moved) + list(names or ()) if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown service {unknown[0]!r}")
    wanted = [BY_NAME[n] for n in names] if names is not None else list(CATALOGUE)
    chosen = []
    for known in wanted:
        if not known.tcp:
            continue
        port = moved.get(known.name, known.port)
        if port:
            chosen.append(known if port == known.port else moved_to(known, port))
    return chosen


def moved_to(known: KnownPort, port: int) -> KnownPort:
    return KnownPort(known.name, port, known.kind, known.what, known.ask, known.tcp, known.udp)


# --------------------------------------------------------------------------
# what a service says of itself


def banner_text(raw: bytes) -> str:
    """The first line of ``raw``, decoded (bad UTF-8 replaced), at most
    :data:`BANNER_CHARS` characters.  Control characters stay as they are:
    they are escaped where text is shown (``findings.printable``, JSON)."""
    text = raw[:MAX_BANNER_BYTES].decode("utf-8", "replace")
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]
    line = next((line for line in lines if line), "")
    if len(line) > BANNER_CHARS:
        line = line[:BANNER_CHARS] + "..."
    return line


def _http(raw: bytes) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\n")
    status = banner_text(lines[0])
    server = next((line.split(b":", 1)[1] for line in lines[1:]
                   if line.lower().startswith(b"server:")), None)
    return status + (f"; Server: {banner_text(server)}" if server is not None else "")


def _mysql(raw: bytes) -> str:
    # a handshake: length (3), sequence (1), protocol 10, the version up to NUL;
    # or an error packet: 0xff, a code (2), the message
    if len(raw) > 5 and raw[4] == 10:
        version = raw[5:].split(b"\0", 1)[0]
        return f"handshake, version {banner_text(version)}"
    if len(raw) > 7 and raw[4] == 0xff:
        return f"error {int.from_bytes(raw[5:7], 'little')}: {banner_text(raw[7:].lstrip(b'#'))}"
    return banner_text(raw)


def _telnet(raw: bytes) -> str:
    # IAC (255) then a command, and an option after WILL/WONT/DO/DONT
    text, i, options = bytearray(), 0, 0
    while i < len(raw):
        if raw[i] == 255 and i + 1 < len(raw):
            i += 3 if 251 <= raw[i + 1] <= 254 else 2
            options += 1
            continue
        text.append(raw[i])
        i += 1
    said = banner_text(bytes(text))
    note = f"option negotiation ({options} command{'s' if options > 1 else ''})" \
        if options else ""
    return "; ".join(p for p in (note, said) if p)


def _postgres(raw: bytes) -> str:
    if raw[:1] == b"S":
        return "answers the SSLRequest: S (TLS offered)"
    if raw[:1] == b"N":
        return "answers the SSLRequest: N (no TLS)"
    return banner_text(raw)


_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


_HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")


def _host_header(server_name: Optional[str], address: str) -> str:
    # the name may come from an SMTP banner: only a plain host name is used
    if server_name and _HOST_NAME.match(server_name):
        return server_name
    return f"[{address}]" if ":" in address else address


def _question(ask: str, host: str) -> Optional[bytes]:
    if ask in (HTTP, HTTPS):
        return (f"HEAD / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mailwarden-probe\r\n"
                "Connection: close\r\n\r\n").encode("ascii")
    return {REDIS: b"PING\r\n", MEMCACHED: b"version\r\n",
            POSTGRES: _SSL_REQUEST}.get(ask)


def describe(ask: str, raw: bytes) -> str:
    """What ``raw``, read from a service asked as ``ask``, says of it."""
    if not raw:
        return ""
    return {HTTP: _http, HTTPS: _http, MYSQL: _mysql, TELNET: _telnet,
            POSTGRES: _postgres}.get(ask, banner_text)(raw)


@dataclass(frozen=True)
class Answer:
    known: KnownPort
    answered: bool
    banner: str = ""
    note: str = ""          # how the exchange went, when not as planned


def _read(sock: socket.socket, ask: str, deadline: float) -> bytes:
    buf = b""
    while len(buf) < MAX_BANNER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(MAX_BANNER_BYTES - len(buf))
        except (socket.timeout, ssl.SSLError, OSError):
            break
        if not data:
            break
        buf += data
        # a web server's headers may come in pieces; every other first
        # answer is one short segment
        if ask not in (HTTP, HTTPS) or b"\r\n\r\n" in buf:
            break
    return buf


def grab(family: int, address: str, known: KnownPort, timeout: float,
         source: Optional[str] = None, server_name: Optional[str] = None,
         tls_context: Optional[ssl.SSLContext] = None) -> Answer:
    """Connect to ``known.port`` on ``address`` once and read what answers.

    ``timeout`` bounds the connection and the TLS handshake; the reading
    waits at most ``min(timeout, BANNER_WAIT)``.  A bind to ``source`` that
    fails raises OSError (the caller's to report)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        try:
            sock.connect((address, known.port))
        except OSError:            # refused, unreachable, filtered
            return Answer(known, False)
        note = ""
        host = _host_header(server_name, address)
        if known.ask == HTTPS:
            try:
                sock = (tls_context or _insecure_context()).wrap_socket(
                    sock, server_hostname=host if host == server_name else None)
            except (OSError, ssl.SSLError) as exc:
                return Answer(known, True, "", f"TLS handshake failed: {exc}")
        question = _question(known.ask, host)
        if question is not None:
            try:
                sock.sendall(question)
            except (OSError, ssl.SSLError) as exc:
                return Answer(known, True, "", f"closed before the question: {exc}")
        wait = min(timeout, BANNER_WAIT)
        raw = b"" if known.ask == SILENT else _read(sock, known.ask, time.monotonic() + wait)
        if not raw and known.ask != SILENT:
            note = f"said nothing within {wait:g} s"
        return Answer(known, True, describe(known.ask, raw), note)
    finally:
        sock.close()


def _insecure_context() -> ssl.SSLContext:
    # what answers is the finding; a bad certificate must not hide it
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def judge_answer(answer: Answer) -> tuple:
    """``(level, message, value)`` of a service that answered."""
    known = answer.known
    message = f"{known.what} answers: {known.advice}"
    if known.ask == REDIS and answer.banner.startswith("+PONG"):
        message = f"{known.what} answers without a password: {known.advice}"
    if answer.note:
        message += f" ({answer.note})"
    return known.level, message, answer.banner


# --------------------------------------------------------------------------
# the command-line option both commands take


def parse_other_port(text: str) -> tuple:
    """``--other-port NAME=PORT``: ``(name, port)``."""
    name, sep, number = text.partition("=")
    if not sep or name not in BY_NAME:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PORT with NAME one of {', '.join(BY_NAME)}, got {text!r}")
    if not number.isdigit() or not 0 <= int(number) < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {number!r}")
    return name, int(number)


def levels_help(udp: bool = True) -> str:
    """The kinds of the catalogue, their level and their services (with
    the UDP-only ones or not): for a command's --help."""
    lines = []
    for kind, (level, _) in KINDS.items():
        names = ", ".join(f"{k.name} {k.port}{'' if k.tcp else '/udp'}"
                          for k in CATALOGUE if k.kind == kind and (k.tcp or udp))
        lines.append(f"{kind} ({level}): {names}")
    return "; ".join(lines)


def add_other_port_argument(parser, what: str) -> None:
    parser.add_argument("--other-port", type=parse_other_port, action="append", default=[],
                        metavar="NAME=PORT",
                        help=f"{what} service NAME on PORT instead of its usual one "
                             "(repeatable; e.g. ftp=2121)")
