"""``mailwarden probe HOST``: talk to a running mail server as a client would.

What the settings say (``audit-postfix``) and what a server does can
differ: a master.cf override, a second MTA, Dovecot's own configuration.
This module connects to one host (resolved once; every connection goes to
that one address and nowhere else) and looks at:

* SMTP (port 25) and submission (587): STARTTLS offered; AUTH advertised
  only after it; the TLS version and cipher negotiated and whether TLS 1.0/1.1
  are still accepted; the certificate; relaying from the probe's address with
  the classic address tricks (RCPT TO only: no message is ever sent, and the
  addresses of ``--relay-target`` are never contacted); the reply to VRFY.
* IMAP (143) and POP3 (110): STARTTLS/STLS offered, LOGINDISABLED before it,
  USER refused before it; IMAPS (993) and POP3S (995) likewise for TLS and
  the certificate.
* Everything else that answers on the mail host: FTP, Telnet, web servers
  and administration panels, databases, rsync, SNMP over TCP and the rest
  of :mod:`mailwarden.audit.ports`' catalogue, each a finding with what the
  service said of itself.  These ports are tried in parallel, each once,
  asked at most one first line; ``others`` chooses them (None: all) and
  ``other_ports`` moves one (a port of 0 leaves it out).

A port given as 0 is not probed.  Findings follow ``audit``: a table or
JSON, exit 0 (nothing fails), 1 (something fails), 2 (the probe could not
be done: the host does not resolve, nothing answers, a session broke off).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import re
import secrets
import socket
import ssl
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import ports
from .findings import FAIL, OK, WARN, AuditError, Finding, printable, render

SMTP, SUBMISSION, IMAP, POP3, CERT = "smtp", "submission", "imap", "pop3", "tls"

DEFAULT_RELAY_TARGET = "other.example"
# RFC 5737 TEST-NET-3: an address literal that can never be ours
RELAY_LITERAL = "203.0.113.5"
CERT_WARN_DAYS = 14
MAX_LINE = 8192
MAX_REPLY_LINES = 200
LEGACY_PROTOCOLS = "TLSv1/TLSv1.1"


class ProbeError(Exception):
    """A session broke off (closed, timed out, spoke nonsense)."""


def relay_tricks(local: str, target: str = DEFAULT_RELAY_TARGET,
                 literal: str = RELAY_LITERAL) -> list:
    """``(name, address)`` for the classic relay tests: addresses that a
    careless MTA takes for local ones but routes to ``target``."""
    return [
        ("plain", f"user@{target}"),
        ("percent hack", f"user%{target}@{local}"),
        ("double @", f"user@{target}@{local}"),
        ("quoted local part", f'"user@{target}"@{local}'),
        ("source route", f"@{local}:user@{target}"),
        ("bang path", f"{target}!user@{local}"),
        ("trailing dot", f"user@{target}."),
        ("mixed case", f"User@{_mixed_case(target)}"),
        ("address literal", f"user@[{literal}]"),
    ]


def _mixed_case(name: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))


# --------------------------------------------------------------------------
# a line channel that can turn into TLS


class Channel:
    """A TCP connection read line by line; ``starttls`` wraps it in place."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def readline(self) -> str:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise ProbeError("line too long")
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise ProbeError("timed out waiting for the server") from None
            except (OSError, ssl.SSLError) as exc:
                raise ProbeError(f"connection broke: {exc}") from None
            if not data:
                raise ProbeError("connection closed by the server")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def send(self, line: str) -> None:
        try:
            self.sock.sendall(line.encode("utf-8") + b"\r\n")
        except (OSError, ssl.SSLError) as exc:
            raise ProbeError(f"connection broke: {exc}") from None

    def starttls(self, context: ssl.SSLContext, server_name: Optional[str]) -> None:
        if self.buf:
            # RFC 3207 section 5: data sent before the handshake must not be
            # taken as coming over TLS (the STARTTLS command injection flaw)
            raise ProbeError("the server sent data before the TLS handshake")
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_name)
        except (OSError, ssl.SSLError) as exc:
            raise TlsFailed(str(exc)) from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class TlsFailed(Exception):
    """The TLS handshake failed."""


@dataclass
class TlsInfo:
    version: str
    cipher: str
    der: Optional[bytes]


def _tls_info(channel: Channel) -> TlsInfo:
    sock = channel.sock
    cipher = sock.cipher()
    return TlsInfo(sock.version() or "?", cipher[0] if cipher else "?",
                   sock.getpeercert(binary_form=True))


def _tls_version(open_, port: int, context, implicit: bool) -> Optional[str]:
    """The TLS version a fresh IMAP/POP3 session with ``context`` gets, or None."""
    opened = open_(port, context, implicit)
    if opened is None:
        return None
    channel, _, tls = opened
    version = channel.sock.version() if tls else None
    channel.close()
    return version


# --------------------------------------------------------------------------
# certificates


def _cert_names(cert) -> list:
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
        addresses = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        if names or addresses:
            return list(names) + addresses
    except x509.ExtensionNotFound:
        pass
    # RFC 6125: the CN only counts when there is no subjectAltName
    return [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def name_matches(name: str, patterns: list) -> bool:
    """RFC 6125 matching: case-insensitive, a wildcard only as the whole
    left-most label and for exactly one label."""
    name = name.rstrip(".").lower()
    for pattern in patterns:
        pattern = str(pattern).rstrip(".").lower()
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name:
            if name.split(".", 1)[1] == pattern[2:] and pattern.count(".") >= 2:
                return True
    return False


def _not_after(cert) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def _not_before(cert) -> datetime.datetime:
    value = getattr(cert, "not_valid_before_utc", None)
    if value is None:
        value = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
    return value


def _self_signed(cert) -> bool:
    if cert.issuer != cert.subject:
        return False
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def judge_certificate(der: Optional[bytes], name: Optional[str],
                      now: Optional[datetime.datetime] = None) -> tuple:
    """``(level, message, value)`` for a server certificate."""
    from cryptography import x509
    if not der:
        return FAIL, "no certificate sent", ""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return FAIL, f"unreadable certificate: {exc}", ""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    names = _cert_names(cert)
    expires = _not_after(cert)
    value = f"{', '.join(map(str, names)) or cert.subject.rfc4514_string()}; " \
            f"expires {expires:%Y-%m-%d}; issuer {cert.issuer.rfc4514_string()}"
    fails, warns, oks = [], [], []
    if expires <= now:
        fails.append(f"expired on {expires:%Y-%m-%d}")
    elif _not_before(cert) > now:
        fails.append(f"not valid before {_not_before(cert):%Y-%m-%d}")
    elif expires - now < datetime.timedelta(days=CERT_WARN_DAYS):
        warns.append(f"expires in {(expires - now).days} days")
    else:
        oks.append(f"valid for {(expires - now).days} more days")
    if name is None:
        warns.append("name not checked (give --name)")
    elif name_matches(name, names):
        oks.append(f"matches {name}")
    else:
        fails.append(f"does not match {name}")
    if _self_signed(cert):
        warns.append("self-signed: clients cannot verify it")
    else:
        oks.append("not self-signed")
    level = FAIL if fails else WARN if warns else OK
    return level, "; ".join(fails + warns + oks), value


# --------------------------------------------------------------------------
# SMTP


@dataclass
class Reply:
    code: int
    lines: list

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def smtp_reply(channel: Channel) -> Reply:
    lines = []
    for _ in range(MAX_REPLY_LINES):
        line = channel.readline()
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
            raise ProbeError(f"not an SMTP reply: {line[:80]!r}")
        lines.append(line[4:])
        if len(line) == 3 or line[3] == " ":
            return Reply(int(line[:3]), lines)
    raise ProbeError("SMTP reply too long")


def smtp_command(channel: Channel, line: str) -> Reply:
    channel.send(line)
    return smtp_reply(channel)


def ehlo_keywords(reply: Reply) -> dict:
    """EHLO extension keywords (upper case) and their parameters."""
    out = {}
    for line in reply.lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword = words[0].upper()
        if keyword.startswith("AUTH="):
            # the pre-RFC 4954 form some servers add for old clients
            out.setdefault("AUTH", " ".join([keyword[5:]] + words[1:]))
            continue
        out[keyword] = " ".join(words[1:])
    return out


# --------------------------------------------------------------------------
# the probe


@dataclass
class ProbeOptions:
    host: str
    smtp_port: int = 25
    submission_port: int = 587
    imap_port: int = 143
    pop3_port: int = 110
    imaps_port: int = 993
    pop3s_port: int = 995
    local_domain: Optional[str] = None
    relay_target: str = DEFAULT_RELAY_TARGET
    name: Optional[str] = None
    helo: Optional[str] = None
    source: Optional[str] = None
    timeout: float = 10.0
    # the other services (names of ports.CATALOGUE; None: all) and their
    # ports where they are not the usual ones (0: left out)
    others: Optional[tuple] = None
    other_ports: dict = field(default_factory=dict)


# connections open at once while the other services are tried
MAX_PARALLEL = 32


class Probe:
    """One run of the probe; :meth:`run` returns ``(findings, errors)``."""

    def __init__(self, options: ProbeOptions):
        self.options = options
        self.findings: list = []
        self.errors: list = []
        self.address: Optional[tuple] = None
        self.answered = 0
        self.banner_name: Optional[str] = None
        self.from_own_address = False

    # -- plumbing -----------------------------------------------------------

    def add(self, area: str, level: str, subject: str, message: str, value: str = "") -> None:
        self.findings.append(Finding(area, level, subject, message, value))

    def _resolve(self) -> None:
        host = self.options.host.strip("[]")
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise AuditError(f"{self.options.host}: cannot resolve: {exc.strerror}") from None
        if not infos:
            raise AuditError(f"{self.options.host}: no address")
        family, _, _, _, sockaddr = infos[0]
        self.address = (family, sockaddr[0])

    def connect(self, port: int) -> Optional[Channel]:
        """A channel to the one address, or None when nothing listens."""
        family, addr = self.address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.options.timeout)
        if self.options.source:
            try:
                sock.bind((self.options.source, 0))
            except OSError as exc:
                sock.close()
                raise AuditError(f"cannot connect from {self.options.source}: "
                                 f"{exc.strerror}") from None
        try:
            sock.connect((addr, port))
        except OSError:        # refused, unreachable, timed out
            sock.close()
            return None
        self.answered += 1
        # Dovecot counts a client on the server's own address as secure and
        # then allows cleartext logins whatever disable_plaintext_auth says
        self.from_own_address = sock.getsockname()[0] == sock.getpeername()[0]
        return Channel(sock)

    @property
    def name(self) -> Optional[str]:
        """The name certificates must carry."""
        if self.options.name:
            return self.options.name
        try:
            ipaddress.ip_address(self.options.host.strip("[]"))
        except ValueError:
            return self.options.host
        return self.banner_name

    def _sni(self) -> Optional[str]:
        return self.name

    @staticmethod
    def _context(legacy: bool = False) -> ssl.SSLContext:
        # look at whatever the server presents: judging it is our job,
        # so the handshake itself must not refuse a bad certificate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if legacy:
            # offering the deprecated protocols is the point here
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1
                context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("ALL:@SECLEVEL=0")
        return context

    def _helo_name(self, channel: Channel) -> str:
        if self.options.helo:
            return self.options.helo
        local = channel.sock.getsockname()[0]
        address = ipaddress.ip_address(local)
        return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"

    def _session_error(self, label: str, exc: Exception) -> None:
        self.errors.append(f"{label}: {exc}")

    def _tls_findings(self, area: str, label: str, info: TlsInfo,
                      reopen: Callable[[ssl.SSLContext], Optional[bool]]) -> None:
        legacy = self._legacy_accepted(reopen)
        value = f"{info.version} {info.cipher}"
        if info.version in ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1"):
            self.add(area, FAIL, f"{label} TLS", "obsolete protocol negotiated (RFC 8996): "
                     "allow TLSv1.2 and later only", value)
        elif legacy:
            self.add(area, FAIL, f"{label} TLS", f"still accepts {legacy} (RFC 8996): "
                     "allow TLSv1.2 and later only", value)
        elif legacy is None:
            self.add(area, OK, f"{label} TLS", "TLSv1.2 or later "
                     "(older protocols not tried: this OpenSSL cannot offer them)", value)
        else:
            self.add(area, OK, f"{label} TLS", f"TLSv1.2 or later; {LEGACY_PROTOCOLS} refused",
                     value)
        level, message, cert_value = judge_certificate(info.der, self.name)
        self.add(CERT, level, f"{label} certificate", message, cert_value)

    def _legacy_accepted(self, reopen) -> Optional[str]:
        """The old protocol the server still takes, "" if none, None if the
        probe cannot offer one."""
        try:
            context = self._context(legacy=True)
        except (ssl.SSLError, ValueError):
            return None
        try:
            version = reopen(context)
        except TlsFailed as exc:
            if "no protocols available" in str(exc) or "NO_PROTOCOLS_AVAILABLE" in str(exc):
                return None
            return ""
        except ProbeError:
            return ""
        return version or ""

    # -- SMTP ---------------------------------------------------------------

    def _smtp_open(self, port: int, tls_context: Optional[ssl.SSLContext] = None):
        """Greeting and EHLO, then STARTTLS and EHLO again when a context is
        given and STARTTLS is offered: ``(channel, greeting, ehlo, tls)``."""
        channel = self.connect(port)
        if channel is None:
            return None
        try:
            greeting = smtp_reply(channel)
            if greeting.code != 220:
                return channel, greeting, None, False
            ehlo = smtp_command(channel, f"EHLO {self._helo_name(channel)}")
            if ehlo.code != 250 or tls_context is None or "STARTTLS" not in ehlo_keywords(ehlo):
                return channel, greeting, ehlo, False
            reply = smtp_command(channel, "STARTTLS")
            if reply.code != 220:
                raise TlsFailed(f"STARTTLS answered {reply.code} {reply.text}")
            channel.starttls(tls_context, self._sni())
            ehlo = smtp_command(channel, f"EHLO {self._helo_name(channel)}")
            return channel, greeting, ehlo, True
        except (ProbeError, TlsFailed):
            channel.close()
            raise

    def _quit(self, channel: Channel) -> None:
        try:
            smtp_command(channel, "QUIT")
        except ProbeError:
            pass
        channel.close()

    def probe_smtp(self, port: int, area: str) -> None:
        label = f"{area}:{port}"
        try:
            opened = self._smtp_open(port)
        except ProbeError as exc:
            self._session_error(label, exc)
            return
        if opened is None:
            self.add(area, WARN if area == SMTP else OK, label,
                     "nothing listens here" + (" (no mail can arrive)" if area == SMTP else ""))
            return
        channel, greeting, ehlo, _ = opened
        if greeting.code != 220 or ehlo is None or ehlo.code != 250:
            bad = ehlo if greeting.code == 220 else greeting
            self.add(area, FAIL, label, "the session could not start", f"{bad.code} {bad.text}")
            self._quit(channel)
            return
        words = greeting.text.split()
        if words and self.banner_name is None and "." in words[0]:
            self.banner_name = words[0].rstrip(".")
        self._banner_finding(area, label, greeting)
        plain_keywords = ehlo_keywords(ehlo)
        try:
            if area == SMTP:
                self._vrfy(channel, label)
        except ProbeError as exc:
            self._session_error(label, exc)
        finally:
            self._quit(channel)

        auth_plain = plain_keywords.get("AUTH")
        starttls = "STARTTLS" in plain_keywords
        if not starttls:
            self.add(area, FAIL, f"{label} STARTTLS", "not offered: mail and passwords cross "
                     "the network in clear")
        auth_tls = None
        tls_session = False
        if starttls:
            try:
                opened = self._smtp_open(port, self._context())
            except TlsFailed as exc:
                self.add(area, FAIL, f"{label} STARTTLS", "offered, but the handshake failed",
                         str(exc))
                opened = None
            except ProbeError as exc:
                self._session_error(label, exc)
                opened = None
            if opened is not None:
                channel, _, ehlo, tls_session = opened
                if tls_session:
                    self.add(area, OK, f"{label} STARTTLS", "offered")
                    info = _tls_info(channel)
                    auth_tls = ehlo_keywords(ehlo).get("AUTH") if ehlo.code == 250 else None
                    self._quit(channel)
                    self._tls_findings(area, label, info,
                                       lambda ctx: self._smtp_reopen(port, ctx))
                else:
                    self._quit(channel)

        if auth_plain is not None:
            self.add(area, FAIL, f"{label} AUTH", "offered before STARTTLS: passwords in clear; "
                     "offer AUTH only over TLS", auth_plain)
        elif auth_tls is not None:
            self.add(area, OK, f"{label} AUTH", "offered only after STARTTLS", auth_tls)
        elif area == SUBMISSION and tls_session:
            self.add(area, WARN, f"{label} AUTH", "not offered even over TLS: users cannot "
                     "authenticate on submission")
        else:
            self.add(area, OK, f"{label} AUTH", "not offered")

        self._relay(port, area, label, tls_session)

    def _smtp_reopen(self, port: int, context: ssl.SSLContext) -> Optional[str]:
        opened = self._smtp_open(port, context)
        if opened is None:
            return None
        channel, _, _, tls = opened
        version = channel.sock.version() if tls else None
        self._quit(channel)
        return version

    def _banner_finding(self, area: str, label: str, greeting: Reply) -> None:
        words = greeting.lines[0].split()
        rest = " ".join(words[1:])
        if re.search(r"\b\d+\.\d+(?:\.\d+)*\b", rest):
            self.add(area, WARN, f"{label} banner", "tells the software version: "
                     "an attacker's first lookup; say less", greeting.lines[0])
        else:
            self.add(area, OK, f"{label} banner", "no software version", greeting.lines[0])

    def _vrfy(self, channel: Channel, label: str) -> None:
        known = smtp_command(channel, "VRFY postmaster")
        unknown_user = f"mailwarden-probe-{secrets.token_hex(4)}"
        unknown = smtp_command(channel, f"VRFY {unknown_user}")
        value = f"postmaster: {known.code}; {unknown_user}: {unknown.code} {unknown.text}"
        if known.code in (250, 251) or known.code != unknown.code:
            self.add(SMTP, WARN, f"{label} VRFY", "tells existing addresses from unknown ones: "
                     "disable it (Postfix: disable_vrfy_command = yes)", value)
        elif known.code in (500, 502):
            self.add(SMTP, OK, f"{label} VRFY", "disabled", value)
        else:
            self.add(SMTP, OK, f"{label} VRFY", "gives the same answer for every address",
                     value)

    def _local_domain(self) -> Optional[str]:
        if self.options.local_domain:
            return self.options.local_domain
        if self.banner_name:
            return self.banner_name
        try:
            ipaddress.ip_address(self.options.host.strip("[]"))
        except ValueError:
            return self.options.host
        return None

    def _relay(self, port: int, area: str, label: str, use_tls: bool) -> None:
        local = self._local_domain()
        tricks = relay_tricks(local or "localhost", self.options.relay_target)
        if area == SUBMISSION:
            tricks = tricks[:1]       # without AUTH the plain case says it all
        elif local is None:
            tricks = [t for t in tricks if "localhost" not in t[1]]
        sender = f"mailwarden-probe@{self.options.relay_target}"
        pending = list(tricks)
        # a server may hang up after too many errors: go on in a new session,
        # as often as there are tests left at most
        for _ in range(len(tricks)):
            if not pending:
                break
            try:
                opened = self._smtp_open(port, self._context() if use_tls else None)
            except (ProbeError, TlsFailed) as exc:
                self._session_error(f"{label} relay", exc)
                return
            if opened is None:
                self._session_error(f"{label} relay", "the port no longer answers")
                return
            channel = opened[0]
            before = len(pending)
            try:
                mail = smtp_command(channel, f"MAIL FROM:<{sender}>")
                if mail.code != 250:
                    if area == SUBMISSION and 500 <= mail.code < 600:
                        self.add(area, OK, f"{label} relay",
                                 "MAIL FROM refused without AUTH", f"{mail.code} {mail.text}")
                    else:
                        self.add(area, WARN, f"{label} relay", "not tested: MAIL FROM refused",
                                 f"{mail.code} {mail.text}")
                    self._quit(channel)
                    return
                while pending:
                    name, address = pending[0]
                    reply = smtp_command(channel, f"RCPT TO:<{address}>")
                    pending.pop(0)
                    self._relay_finding(area, label, name, address, reply)
                    if reply.code == 421:
                        break
                smtp_command(channel, "RSET")
            except ProbeError as exc:
                channel.close()
                if len(pending) == before:
                    self._session_error(f"{label} relay", exc)
                    return
                continue
            self._quit(channel)
        for name, address in pending:
            self._session_error(f"{label} relay", f"{name} ({address}) not tested")

    def _relay_finding(self, area, label, name, address, reply: Reply) -> None:
        value = f"{reply.code} {reply.text}"
        subject = f"{label} relay {name}"
        if 200 <= reply.code < 300:
            self.add(area, FAIL, subject, f"RCPT TO:<{address}> accepted from the probe's "
                     "address: an open relay", value)
        elif 400 <= reply.code < 500:
            self.add(area, WARN, subject, f"RCPT TO:<{address}> only deferred: "
                     "refuse it (5xx)", value)
        else:
            self.add(area, OK, subject, f"RCPT TO:<{address}> refused", value)

    def _own_address_note(self) -> str:
        if not self.from_own_address:
            return ""
        return (" (the probe connects from the server's own address, which Dovecot counts "
                "as secure: probe from elsewhere or with --source)")

    # -- IMAP ---------------------------------------------------------------

    def _imap_command(self, channel: Channel, tag: str, command: str) -> tuple:
        channel.send(f"{tag} {command}")
        untagged = []
        for _ in range(MAX_REPLY_LINES):
            line = channel.readline()
            if line.startswith(tag + " "):
                return line[len(tag) + 1:], untagged
            untagged.append(line)
        raise ProbeError("IMAP reply too long")

    @staticmethod
    def _imap_caps(lines: list) -> set:
        caps = set()
        for line in lines:
            m = re.search(r"(?i)(?:^\* |\[)CAPABILITY ([^\]]*)", line)
            if m:
                caps.update(w.upper() for w in m.group(1).split())
        return caps

    def _imap_open(self, port: int, tls_context: Optional[ssl.SSLContext] = None,
                   implicit: bool = False):
        channel = self.connect(port)
        if channel is None:
            return None
        try:
            if implicit:
                channel.starttls(tls_context, self._sni())
            greeting = channel.readline()
            if not greeting.startswith("* OK") and not greeting.startswith("* PREAUTH"):
                raise ProbeError(f"not an IMAP greeting: {greeting[:80]!r}")
            status, lines = self._imap_command(channel, "a1", "CAPABILITY")
            caps = self._imap_caps(lines)
            if tls_context is not None and not implicit and "STARTTLS" in caps:
                status, _ = self._imap_command(channel, "a2", "STARTTLS")
                if not status.upper().startswith("OK"):
                    raise TlsFailed(f"STARTTLS answered {status}")
                channel.starttls(tls_context, self._sni())
                return channel, caps, True
            return channel, caps, implicit
        except (ProbeError, TlsFailed):
            channel.close()
            raise

    def _imap_logout(self, channel: Channel) -> None:
        try:
            self._imap_command(channel, "z9", "LOGOUT")
        except ProbeError:
            pass
        channel.close()

    def probe_imap(self, port: int, imaps_port: int, imaps_open: bool) -> None:
        label = f"imap:{port}"
        try:
            opened = self._imap_open(port)
        except ProbeError as exc:
            self._session_error(label, exc)
            return
        if opened is None:
            self.add(IMAP, OK, label, "nothing listens here"
                     + (" (IMAPS only)" if imaps_open else ""))
            return
        channel, caps, _ = opened
        self._imap_logout(channel)
        login_off = "LOGINDISABLED" in caps
        auth = sorted(c for c in caps if c.startswith("AUTH="))
        if login_off:
            self.add(IMAP, OK, f"{label} cleartext login", "LOGINDISABLED before STARTTLS",
                     " ".join(sorted(caps)))
        else:
            self.add(IMAP, FAIL, f"{label} cleartext login",
                     "LOGIN works before STARTTLS: passwords in clear (Dovecot: "
                     "disable_plaintext_auth = yes)" + self._own_address_note(),
                     " ".join(auth) or "LOGIN")
        if "STARTTLS" not in caps:
            if login_off and imaps_open:
                self.add(IMAP, OK, f"{label} STARTTLS", f"not offered; IMAPS on {imaps_port}")
            else:
                self.add(IMAP, FAIL, f"{label} STARTTLS", "not offered: offer STARTTLS or "
                         "serve IMAPS only")
            return
        self._upgraded(IMAP, label, f"{label} STARTTLS", port, self._imap_open,
                       self._imap_logout)

    def probe_imaps(self, port: int) -> bool:
        """IMAP over TLS; whether it answered."""
        return self._implicit_tls(IMAP, f"imaps:{port}", port, self._imap_open,
                                  self._imap_logout)

    # -- POP3 ---------------------------------------------------------------

    @staticmethod
    def _pop3_command(channel: Channel, line: str) -> str:
        channel.send(line)
        return channel.readline()

    @staticmethod
    def _pop3_multiline(channel: Channel) -> list:
        lines = []
        for _ in range(MAX_REPLY_LINES):
            line = channel.readline()
            if line == ".":
                return lines
            lines.append(line[1:] if line.startswith("..") else line)
        raise ProbeError("POP3 reply too long")

    def _pop3_open(self, port: int, tls_context: Optional[ssl.SSLContext] = None,
                   implicit: bool = False):
        channel = self.connect(port)
        if channel is None:
            return None
        try:
            if implicit:
                channel.starttls(tls_context, self._sni())
            greeting = channel.readline()
            if not greeting.startswith("+OK"):
                raise ProbeError(f"not a POP3 greeting: {greeting[:80]!r}")
            reply = self._pop3_command(channel, "CAPA")
            caps = set()
            if reply.startswith("+OK"):
                caps = {line.split()[0].upper() for line in self._pop3_multiline(channel)
                        if line.split()}
            if tls_context is not None and not implicit and "STLS" in caps:
                reply = self._pop3_command(channel, "STLS")
                if not reply.startswith("+OK"):
                    raise TlsFailed(f"STLS answered {reply}")
                channel.starttls(tls_context, self._sni())
                return channel, caps, True
            return channel, caps, implicit
        except (ProbeError, TlsFailed):
            channel.close()
            raise

    def _pop3_quit(self, channel: Channel) -> None:
        try:
            self._pop3_command(channel, "QUIT")
        except ProbeError:
            pass
        channel.close()

    def probe_pop3(self, port: int, pop3s_port: int, pop3s_open: bool) -> None:
        label = f"pop3:{port}"
        try:
            opened = self._pop3_open(port)
            if opened is None:
                self.add(POP3, OK, label, "nothing listens here"
                         + (" (POP3S only)" if pop3s_open else ""))
                return
            channel, caps, _ = opened
            # USER alone carries no password: it shows whether USER/PASS
            # would be taken before TLS without sending one
            reply = self._pop3_command(channel, "USER mailwarden-probe")
            self._pop3_quit(channel)
        except ProbeError as exc:
            self._session_error(label, exc)
            return
        if reply.startswith("+OK"):
            self.add(POP3, FAIL, f"{label} cleartext login", "USER/PASS accepted before STLS: "
                     "passwords in clear (Dovecot: disable_plaintext_auth = yes)"
                     + self._own_address_note(), reply)
        else:
            self.add(POP3, OK, f"{label} cleartext login", "USER refused before STLS", reply)
        if "STLS" not in caps:
            if pop3s_open and not reply.startswith("+OK"):
                self.add(POP3, OK, f"{label} STLS", f"not offered; POP3S on {pop3s_port}")
            else:
                self.add(POP3, FAIL, f"{label} STLS", "not offered: offer STLS or serve "
                         "POP3S only", " ".join(sorted(caps)))
            return
        self._upgraded(POP3, label, f"{label} STLS", port, self._pop3_open,
                       self._pop3_quit)

    def probe_pop3s(self, port: int) -> bool:
        """POP3 over TLS; whether it answered."""
        return self._implicit_tls(POP3, f"pop3s:{port}", port, self._pop3_open,
                                  self._pop3_quit)

    # -- IMAP and POP3 alike ------------------------------------------------

    def _upgraded(self, area: str, label: str, subject: str, port: int,
                  open_, close) -> None:
        """The findings of a STARTTLS/STLS upgrade the server offered."""
        try:
            opened = open_(port, self._context())
        except TlsFailed as exc:
            self.add(area, FAIL, subject, "offered, but the handshake failed", str(exc))
            return
        except ProbeError as exc:
            self._session_error(label, exc)
            return
        if opened is None:
            self._session_error(label, "the port no longer answers")
            return
        channel, _, _ = opened
        info = _tls_info(channel)
        close(channel)
        self.add(area, OK, subject, "offered")
        self._tls_findings(area, label, info,
                           lambda ctx: _tls_version(open_, port, ctx, False))

    def _implicit_tls(self, area: str, label: str, port: int, open_, close) -> bool:
        """The findings of a TLS-only port (IMAPS, POP3S); whether it answered."""
        try:
            opened = open_(port, self._context(), implicit=True)
        except TlsFailed as exc:
            self.add(area, FAIL, label, "the TLS handshake failed", str(exc))
            return True
        except ProbeError as exc:
            self._session_error(label, exc)
            return True
        if opened is None:
            self.add(area, OK, label, "nothing listens here")
            return False
        channel, _, _ = opened
        info = _tls_info(channel)
        close(channel)
        self._tls_findings(area, label, info,
                           lambda ctx: _tls_version(open_, port, ctx, True))
        return True

    # -- the other services -------------------------------------------------

    def probe_others(self) -> None:
        """One finding for each other service that answers, or one saying
        that none does."""
        o = self.options
        chosen = ports.choose(o.others, o.other_ports)
        if not chosen:
            return
        family, addr = self.address
        context = self._context()
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(chosen))) as pool:
            futures = [pool.submit(ports.grab, family, addr, known, o.timeout, o.source,
                                   self._sni(), context) for known in chosen]
            answers = []
            for future in futures:
                try:
                    answers.append(future.result())
                except OSError as exc:      # the bind to --source
                    raise AuditError(f"cannot connect from {o.source}: "
                                     f"{exc.strerror or exc}") from None
        answered = [a for a in answers if a.answered]
        self.answered += len(answered)
        for answer in answered:
            level, message, value = ports.judge_answer(answer)
            self.add(ports.AREA, level, f"{answer.known.name}:{answer.known.port}",
                     message, value)
        if not answered:
            self.add(ports.AREA, OK, "other services",
                     f"none of {len(chosen)} other well-known services answers",
                     " ".join(str(k.port) for k in chosen))

    # -- all ----------------------------------------------------------------

    def run(self) -> tuple:
        o = self.options
        self._resolve()
        if o.smtp_port:
            self.probe_smtp(o.smtp_port, SMTP)
        if o.submission_port:
            self.probe_smtp(o.submission_port, SUBMISSION)
        imaps_open = self.probe_imaps(o.imaps_port) if o.imaps_port else False
        if o.imap_port:
            self.probe_imap(o.imap_port, o.imaps_port, imaps_open)
        pop3s_open = self.probe_pop3s(o.pop3s_port) if o.pop3s_port else False
        if o.pop3_port:
            self.probe_pop3(o.pop3_port, o.pop3s_port, pop3s_open)
        self.probe_others()
        if self.answered == 0:
            tried = [str(p) for p in (o.smtp_port, o.submission_port, o.imap_port,
                                      o.pop3_port, o.imaps_port, o.pop3s_port) if p]
            others = len(ports.choose(o.others, o.other_ports))
            if others:
                tried.append(f"{others} other well-known port{'s' if others > 1 else ''}")
            raise AuditError(f"{o.host} ({self.address[1]}): nothing answers on ports "
                             f"{', '.join(tried)}")
        return self.findings, self.errors


def cmd_probe(args) -> int:
    options = ProbeOptions(
        host=args.host, smtp_port=args.smtp_port, submission_port=args.submission_port,
        imap_port=args.imap_port, pop3_port=args.pop3_port, imaps_port=args.imaps_port,
        pop3s_port=args.pop3s_port, local_domain=args.local_domain,
        relay_target=args.relay_target, name=args.name, helo=args.helo, source=args.source,
        timeout=args.timeout, others=args.others, other_ports=dict(args.other_port))
    try:
        findings, errors = Probe(options).run()
    except AuditError as exc:
        print(f"mailwarden: probe: {printable(exc)}", file=sys.stderr)
        return 2
    return render(f"probe {args.host}", findings, args.json, errors=errors)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value < 65536:
        raise ValueError(text)
    return value


def parse_others(text: str) -> Optional[tuple]:
    """``--others``: ``all`` (None), ``none`` (()) or names of the catalogue."""
    if text == "all":
        return None
    if text == "none":
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in ports.BY_NAME:
            raise argparse.ArgumentTypeError(
                f"unknown service {name!r} (known: {', '.join(ports.BY_NAME)})")
    return names


OTHERS_HELP = ("the other services tried (names of the list above, comma-separated), "
               "in parallel, each asked one first line at most: all (the default) or none")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="connect to a mail server as a client and check TLS, AUTH, relaying, "
                      "and which other services answer on it",
        description="Connects to HOST only: SMTP and submission (STARTTLS, AUTH after it, "
                    "TLS versions, certificate, VRFY, relay tricks), IMAP and POP3 (STARTTLS, "
                    "cleartext logins), then the other well-known services, each that "
                    "answers a finding with its first line, its level by kind: "
                    + ports.levels_help(udp=False) + ". Exit 0: nothing fails; 1: a finding fails; 2: the host does not "
                      "resolve, nothing answers, or a session broke off.")
    p.add_argument("host", help="the server to probe (the only host ever contacted)")
    for name, default in (("smtp", 25), ("submission", 587), ("imap", 143), ("pop3", 110),
                          ("imaps", 993), ("pop3s", 995)):
        p.add_argument(f"--{name}-port", type=_port, default=default,
                       help=f"default {default}; 0 skips it")
    p.add_argument("--local-domain", default=None,
                   help="a domain the server receives mail for, used in the relay tricks "
                        "(default: the host name in the SMTP banner)")
    p.add_argument("--relay-target", default=DEFAULT_RELAY_TARGET,
                   help="a foreign domain for the relay tests; only written in RCPT TO, "
                        f"never contacted (default {DEFAULT_RELAY_TARGET})")
    p.add_argument("--name", default=None,
                   help="the name certificates must match (default: HOST, or the SMTP "
                        "banner's host name when HOST is an address)")
    p.add_argument("--helo", default=None,
                   help="the EHLO name (default: the probe's own address literal)")
    p.add_argument("--source", default=None,
                   help="the local address to connect from (default: the system's choice)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for any answer (default 10; a service's first "
                        f"line is awaited {ports.BANNER_WAIT:g} s at most)")
    p.add_argument("--others", type=parse_others, default=None, metavar="LIST",
                   help=OTHERS_HELP)
    ports.add_other_port_argument(p, "probe")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_probe)
