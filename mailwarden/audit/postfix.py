"""``mailwarden audit-postfix``: what Postfix must do that a milter cannot.

A milter sees a session only after Postfix has decided to offer STARTTLS,
AUTH, VRFY or relaying; those decisions live in main.cf and master.cf.  This
module reads the effective settings with ``postconf`` (every parameter,
defaults included, raw and ``$name``-expanded; master.cf entries with
``postconf -M`` and their ``-o`` overrides with ``postconf -P -x``) and turns
them into findings.  :func:`audit` is pure: a :class:`PostfixSettings` in,
findings out, so the rules are tested without a Postfix.

The settings of the public SMTP service (the first ``smtpd`` inet service not
on 587/465) are main.cf plus that service's ``-o`` overrides; submission
services are judged on their own merged settings.

ARC: when mailwarden's configuration seals (``[check.arc]`` enabled, ``seal``
not ``never``, ``keys`` set), the seal is mailwarden's last change at end of
message.  Postfix runs the milters in the order listed, so a milter listed
after mailwarden (in ``smtpd_milters``, a service's override of it, or
``non_smtpd_milters``) changes the message after it was sealed, and the
seal no longer verifies: a warning that names those milters.  Without
mailwarden in ``non_smtpd_milters``, locally submitted mail (sendmail(1))
leaves unsealed: a note, as that may be meant.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

from .findings import FAIL, OK, WARN, AuditError, Finding, printable, render

RELAY, TLS, LIMITS, DEFAULTS, MILTER = "relay", "tls", "limits", "defaults", "milter"

SUBMISSION_PORT, SUBMISSIONS_PORT = 587, 465
_PORT_NAMES = {"smtp": 25, "submission": SUBMISSION_PORT, "submissions": SUBMISSIONS_PORT,
               "smtps": SUBMISSIONS_PORT}

PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# RFC 8996 deprecates TLS 1.0 and 1.1; SSL is broken
OBSOLETE_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")

# The macros mailwarden's milter reads (see mailwarden/milter.py), and the
# milter_*_macros parameters where Postfix can send them in time: the AUTH
# and TLS details must be there by MAIL FROM, the queue id once it exists.
REQUIRED_MACROS = (
    # (macro, where to add it, where it may be)
    ("j", "milter_connect_macros",
     ("milter_connect_macros", "milter_helo_macros", "milter_mail_macros")),
    ("auth_type", "milter_mail_macros", ("milter_mail_macros",)),
    ("auth_authen", "milter_mail_macros", ("milter_mail_macros",)),
    ("tls_version", "milter_mail_macros", ("milter_helo_macros", "milter_mail_macros")),
    ("cipher", "milter_mail_macros", ("milter_helo_macros", "milter_mail_macros")),
    ("cipher_bits", "milter_mail_macros", ("milter_helo_macros", "milter_mail_macros")),
    ("i", "milter_end_of_data_macros",
     ("milter_end_of_header_macros", "milter_end_of_data_macros", "milter_data_macros")),
)

MIN_MESSAGE_SIZE = 1024 * 1024
MAX_MESSAGE_SIZE = 100 * 1024 * 1024
MAX_HARD_ERROR_LIMIT = 100


@dataclass(frozen=True)
class Service:
    """One master.cf entry; ``overrides`` are its ``-o`` settings, expanded."""
    name: str
    type: str
    private: str = "-"
    unpriv: str = "-"
    chroot: str = "-"
    wakeup: str = "-"
    maxproc: str = "-"
    command: str = ""
    overrides: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    @property
    def port(self) -> Optional[int]:
        """The TCP port of an inet service (``smtp``, ``587``, ``127.0.0.1:2525``)."""
        if self.type != "inet":
            return None
        text = self.name.rsplit(":", 1)[-1]
        if text.isdigit():
            return int(text)
        if text in _PORT_NAMES:
            return _PORT_NAMES[text]
        try:
            return socket.getservbyname(text, "tcp")
        except OSError:
            return None

    @property
    def is_smtpd(self) -> bool:
        return self.type == "inet" and self.command == "smtpd"


@dataclass(frozen=True)
class PostfixSettings:
    """Every main.cf parameter (``main`` expanded, ``raw`` as written) and
    the master.cf services."""
    main: dict
    raw: dict = field(default_factory=dict)
    services: tuple = ()
    config_dir: str = ""

    def service_settings(self, service: Optional[Service]) -> dict:
        merged = dict(self.main)
        if service is not None:
            merged.update(service.overrides)
        return merged

    def smtpd_services(self) -> list:
        return [s for s in self.services if s.is_smtpd]

    def mx_service(self) -> Optional[Service]:
        for service in self.smtpd_services():
            if service.port not in (SUBMISSION_PORT, SUBMISSIONS_PORT):
                return service
        return None


# --------------------------------------------------------------------------
# reading postconf


def _run_postconf(postconf: str, config_dir: Optional[str], *args: str) -> str:
    cmd = [postconf]
    if config_dir:
        cmd += ["-c", config_dir]
    cmd += list(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise AuditError(f"{postconf}: not found (is Postfix installed?)") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuditError(f"{' '.join(cmd)}: {exc}") from None
    if proc.returncode != 0:
        raise AuditError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def parse_parameters(text: str) -> dict:
    """``name = value`` lines (postconf output) into a dict."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return out


def parse_master(entries: str, overrides: str) -> tuple:
    """``postconf -M`` and ``postconf -P -x`` output into :class:`Service` s."""
    per_service: dict = {}
    for line in overrides.splitlines():
        name, sep, value = line.partition("=")
        parts = name.strip().split("/")
        if sep and len(parts) == 3:
            per_service.setdefault(f"{parts[0]}/{parts[1]}", {})[parts[2]] = value.strip()
    services = []
    for line in entries.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        key = f"{fields[0]}/{fields[1]}"
        services.append(Service(fields[0], fields[1], *fields[2:7],
                                command=os.path.basename(fields[7]),
                                overrides=per_service.get(key, {})))
    return tuple(services)


def read_postconf(config_dir: Optional[str] = None, postconf: Optional[str] = None) -> PostfixSettings:
    """The effective settings of the Postfix instance in ``config_dir``."""
    if postconf is None:
        postconf = shutil.which("postconf") or "/usr/sbin/postconf"
    if config_dir:
        config_dir = os.path.abspath(config_dir)
        if not os.path.isfile(os.path.join(config_dir, "main.cf")):
            raise AuditError(f"{config_dir}: no main.cf there")
    raw = parse_parameters(_run_postconf(postconf, config_dir))
    main = parse_parameters(_run_postconf(postconf, config_dir, "-x"))
    services = parse_master(_run_postconf(postconf, config_dir, "-M"),
                            _run_postconf(postconf, config_dir, "-P", "-x"))
    return PostfixSettings(main=main, raw=raw, services=services,
                           config_dir=config_dir or main.get("config_directory", ""))


# --------------------------------------------------------------------------
# value parsers


def split_list(value: str) -> list:
    """Postfix list syntax: separated by whitespace or commas; ``{...}`` is one item."""
    items, current, depth = [], [], 0
    for ch in value:
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        if depth == 0 and (ch in ", \t\r\n"):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        items.append("".join(current))
    return items


def yes(value: str) -> bool:
    return value.strip().lower() == "yes"


def parse_int(value: str) -> Optional[int]:
    try:
        return int(value.strip())
    except ValueError:
        return None


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str) -> Optional[float]:
    """A Postfix time value (``1s``, ``500ms``, ``2m``; bare numbers are seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|[smhdw]?)\s*", value)
    if not m:
        return None
    number = float(m.group(1))
    if m.group(2) == "ms":
        return number / 1000
    return number * _TIME_UNITS.get(m.group(2) or "s", 1)


def enabled_protocols(value: str) -> set:
    """The protocols a ``smtpd_tls_protocols`` value leaves on (Postfix's
    tls_protocol_mask: names to include, ``!name`` to exclude, ``>=``/``<=``
    bounds; no include list means all)."""
    included, excluded = set(), set()
    low, high = 0, len(PROTOCOLS) - 1
    index = {p.lower(): i for i, p in enumerate(PROTOCOLS)}
    for token in re.split(r"[\s,:]+", value.strip()):
        if not token:
            continue
        if token.startswith(">=") or token.startswith("<="):
            i = index.get(token[2:].lower())
            if i is not None:
                if token[0] == ">":
                    low = max(low, i)
                else:
                    high = min(high, i)
        elif token.startswith("!"):
            i = index.get(token[1:].lower())
            if i is not None:
                excluded.add(PROTOCOLS[i])
        else:
            i = index.get(token.lower())
            if i is not None:
                included.add(PROTOCOLS[i])
    base = included or set(PROTOCOLS)
    return {p for p in base - excluded if low <= PROTOCOLS.index(p) <= high}


def restriction_outcome(value: str, rejects=("reject_unauth_destination", "reject")) -> tuple:
    """How a restriction list treats a client nothing else permits.

    ``("reject", word)`` when a reject in ``rejects`` is reached before an
    unconditional ``permit``; ``("defer", word)`` for the defer forms;
    ``("permit", "permit")`` or ``("none", "")`` otherwise.  ``warn_if_reject``
    turns the next restriction into a log line, so it does not count.
    """
    tokens = [t.lower() for t in split_list(value)]
    skip = False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token == "warn_if_reject":
            skip = True
        elif token in rejects:
            return "reject", token
        elif token in ("defer_unauth_destination", "defer"):
            return "defer", token
        elif token == "permit":
            return "permit", token
    return "none", ""


# RFC 1918, RFC 4193 (ULA) and link-local: networks an admin can own
# privately.  Python's is_private also counts the documentation ranges.
_PRIVATE = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "fc00::/7", "fe80::/10")]
_LOOPBACK = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128")]


def _network_kind(net) -> str:
    if net.version == 6 and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    if any(net.version == n.version and net.subnet_of(n) for n in _LOOPBACK):
        return "loopback"
    if any(net.version == n.version and net.subnet_of(n) for n in _PRIVATE):
        return "private"
    too_wide = 8 if net.version == 4 else 16
    return "huge" if net.prefixlen < too_wide else "public"


def judge_mynetworks(value: str) -> tuple:
    """``(level, [problem, ...])`` for a ``mynetworks`` value."""
    level, problems = OK, []
    for token in split_list(value):
        if token.startswith("!"):
            continue      # an exception only narrows the list
        text = token
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](/\d+)?", token)
        if m:
            text = m.group(1) + (m.group(2) or "")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(f"{token} (a name, file or table: check it lists only your hosts)")
            level = FAIL if level == FAIL else WARN
            continue
        kind = _network_kind(net)
        if kind == "huge":
            problems.append(f"{token} (a huge public range: an open relay)")
            level = FAIL
        elif kind == "public":
            problems.append(f"{token} (public addresses)")
            level = FAIL if level == FAIL else WARN
    return level, problems


def parse_milter_address(text: str) -> tuple:
    """A milter address in Postfix (``inet:HOST:PORT``) or libmilter
    (``inet:PORT@HOST``) notation as ``("unix", path)`` or ``("inet", host, port)``."""
    text = text.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind in ("unix", "local"):
        return ("unix", os.path.normpath(rest))
    if kind in ("inet", "inet6"):
        m = re.fullmatch(r"(\d+)@(.*)", rest)
        if m:
            host, port = m.group(2), m.group(1)
        else:
            host, _, port = rest.rpartition(":")
        return ("inet", host.strip("[]").lower() or "127.0.0.1", port)
    return ("other", text)


_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "localhost.localdomain"}
_ANY_HOST = {"0.0.0.0", "::", "*"}


def milter_matches(entry: str, ours: str, queue_directory: str = "") -> bool:
    """Is Postfix's milter ``entry`` the socket mailwarden listens on?"""
    theirs, mine = parse_milter_address(entry), parse_milter_address(ours)
    if theirs[0] != mine[0]:
        return False
    if theirs[0] == "unix":
        # a chrooted smtpd resolves the path under the queue directory
        jailed = os.path.normpath(queue_directory + "/" + theirs[1]) if queue_directory else None
        return mine[1] in (theirs[1], jailed)
    if theirs[0] == "inet":
        if theirs[2] != mine[2]:
            return False
        return (theirs[1] == mine[1] or mine[1] in _ANY_HOST
                or (theirs[1] in _LOCAL_NAMES and mine[1] in _LOCAL_NAMES))
    return theirs[1] == mine[1]


def parse_milters(value: str) -> list:
    """``smtpd_milters`` into ``[(address, {setting: value})]`` (Postfix 3.0
    allows ``{ address, name = value, ... }`` per milter)."""
    out = []
    for item in split_list(value):
        if item.startswith("{") and item.endswith("}"):
            parts = [p.strip() for p in item[1:-1].split(",")]
            settings = {}
            for part in parts[1:]:
                name, _, val = part.partition("=")
                settings[name.strip()] = val.strip()
            out.append((parts[0], settings))
        else:
            out.append((item, {}))
    return out


def macro_names(value: str) -> set:
    return {t.strip("{}") for t in value.split()}


# --------------------------------------------------------------------------
# the rules


def _relay(cfg: PostfixSettings, mx: dict) -> list:
    findings = []
    relay_list = mx.get("smtpd_relay_restrictions", "")
    rcpt_list = mx.get("smtpd_recipient_restrictions", "")
    relay_outcome, relay_word = restriction_outcome(relay_list)
    rcpt_outcome, rcpt_word = restriction_outcome(rcpt_list)
    if relay_outcome == "reject":
        findings.append(Finding(RELAY, OK, "smtpd_relay_restrictions",
                                f"unauthorised destinations end in {relay_word}", relay_list))
    elif rcpt_outcome == "reject":
        findings.append(Finding(RELAY, OK, "smtpd_recipient_restrictions",
                                f"unauthorised destinations end in {rcpt_word}", rcpt_list))
    elif "defer" in (relay_outcome, rcpt_outcome):
        subject = "smtpd_relay_restrictions" if relay_outcome == "defer" else "smtpd_recipient_restrictions"
        findings.append(Finding(
            RELAY, WARN, subject,
            "relaying is only deferred (4xx): end the list in reject_unauth_destination",
            relay_list if relay_outcome == "defer" else rcpt_list))
    else:
        why = ("an unconditional permit comes first" if "permit" in (relay_outcome, rcpt_outcome)
               else "neither list rejects unauthorised destinations")
        findings.append(Finding(
            RELAY, FAIL, "smtpd_relay_restrictions",
            f"open relay: {why}; use permit_mynetworks, permit_sasl_authenticated, "
            "reject_unauth_destination", relay_list or rcpt_list))

    relay_domains = mx.get("relay_domains", "")
    if any(t.lower() == "static:all" for t in split_list(relay_domains)):
        findings.append(Finding(RELAY, FAIL, "relay_domains",
                                "every domain is a relay destination: an open relay; "
                                "list only the domains you relay for", relay_domains))
    else:
        findings.append(Finding(RELAY, OK, "relay_domains", "only listed domains",
                                relay_domains))

    mynetworks = mx.get("mynetworks", "")
    level, problems = judge_mynetworks(mynetworks)
    if level == OK:
        findings.append(Finding(RELAY, OK, "mynetworks", "loopback and private ranges only",
                                mynetworks))
    else:
        findings.append(Finding(
            RELAY, level, "mynetworks",
            "clients here may relay without authentication: " + "; ".join(problems)
            + "; list only the hosts that need it", mynetworks))
    return findings


def _tls_level(settings: dict) -> str:
    level = settings.get("smtpd_tls_security_level", "").strip().lower()
    if level:
        return level
    # before Postfix 2.3 these two said the same
    if yes(settings.get("smtpd_enforce_tls", "no")):
        return "encrypt"
    if yes(settings.get("smtpd_use_tls", "no")):
        return "may"
    return "none"


def _certificate_files(settings: dict) -> list:
    files = split_list(settings.get("smtpd_tls_chain_files", ""))
    for name in ("smtpd_tls_cert_file", "smtpd_tls_eccert_file", "smtpd_tls_dcert_file"):
        if settings.get(name, "").strip():
            files.append(settings[name].strip())
    return files


def _tls(cfg: PostfixSettings, mx: dict) -> list:
    findings = []
    level = _tls_level(mx)
    certs = _certificate_files(mx)
    missing = [f for f in certs if not os.access(f, os.R_OK)]
    if level not in ("may", "encrypt", "dane", "verify", "secure"):
        findings.append(Finding(TLS, FAIL, "smtpd_tls_security_level",
                                "no STARTTLS: set it to may (port 25) with a certificate",
                                level))
    elif not certs:
        findings.append(Finding(TLS, FAIL, "smtpd_tls_security_level",
                                "no certificate (smtpd_tls_chain_files or smtpd_tls_cert_file): "
                                "smtpd turns TLS off", level))
    elif missing:
        findings.append(Finding(TLS, FAIL, "smtpd_tls_security_level",
                                "certificate file missing or unreadable: " + ", ".join(missing),
                                level))
    else:
        findings.append(Finding(TLS, OK, "smtpd_tls_security_level",
                                "STARTTLS with a certificate", f"{level}, {', '.join(certs)}"))

    auth_only = mx.get("smtpd_tls_auth_only", "no")
    if yes(auth_only):
        findings.append(Finding(TLS, OK, "smtpd_tls_auth_only", "AUTH only over TLS", auth_only))
    elif yes(mx.get("smtpd_sasl_auth_enable", "no")):
        findings.append(Finding(TLS, FAIL, "smtpd_tls_auth_only",
                                "AUTH is offered before STARTTLS: passwords in clear; set yes",
                                auth_only))
    else:
        findings.append(Finding(TLS, WARN, "smtpd_tls_auth_only",
                                "SASL is off here, but a service that turns it on offers AUTH "
                                "in clear; set yes", auth_only))

    for name in ("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols"):
        value = mx.get(name, "")
        bad = [p for p in OBSOLETE_PROTOCOLS if p in enabled_protocols(value)]
        if bad:
            findings.append(Finding(TLS, FAIL, name,
                                    f"allows {', '.join(bad)}: use >=TLSv1.2", value))
        else:
            findings.append(Finding(TLS, OK, name, "TLSv1.2 or later only", value))

    findings += _submission(cfg)
    return findings


def _submission(cfg: PostfixSettings) -> list:
    findings = []
    services = [s for s in cfg.smtpd_services() if s.port in (SUBMISSION_PORT, SUBMISSIONS_PORT)]
    for service in services:
        settings = cfg.service_settings(service)
        problems = []
        if service.port == SUBMISSIONS_PORT:
            if not yes(settings.get("smtpd_tls_wrappermode", "no")):
                problems.append("smtpd_tls_wrappermode=yes missing (port 465 is TLS from the start)")
        elif _tls_level(settings) != "encrypt":
            problems.append(f"smtpd_tls_security_level={_tls_level(settings)} (needs encrypt)")
        if not yes(settings.get("smtpd_sasl_auth_enable", "no")):
            problems.append("smtpd_sasl_auth_enable is not yes")
        what = "submissions (465)" if service.port == SUBMISSIONS_PORT else "submission (587)"
        value = ", ".join(f"{k}={v}" for k, v in sorted(service.overrides.items())
                          if k.startswith(("smtpd_tls", "smtpd_sasl")))
        if problems:
            findings.append(Finding(TLS, FAIL, f"master.cf {service.key}",
                                    f"{what} must require TLS and SASL: " + "; ".join(problems),
                                    value))
        else:
            findings.append(Finding(TLS, OK, f"master.cf {service.key}",
                                    f"{what} requires TLS and SASL", value))
    if not services:
        mx_service = cfg.mx_service()
        if yes(cfg.service_settings(mx_service).get("smtpd_sasl_auth_enable", "no")):
            findings.append(Finding(TLS, WARN, "master.cf submission",
                                    "no submission (587) or submissions (465) service: users "
                                    "authenticate on port 25; add one with TLS and SASL"))
        else:
            findings.append(Finding(TLS, OK, "master.cf submission",
                                    "no submission service (SASL is off: relay only)"))
    return findings


def _limits(cfg: PostfixSettings, mx: dict) -> list:
    findings = []
    value = mx.get("message_size_limit", "")
    size = parse_int(value)
    if size is None or size <= 0:
        findings.append(Finding(LIMITS, FAIL, "message_size_limit",
                                "no size limit: set one (e.g. 26214400, 25 MB)", value))
    elif size > MAX_MESSAGE_SIZE:
        findings.append(Finding(LIMITS, WARN, "message_size_limit",
                                f"over {MAX_MESSAGE_SIZE // (1024 * 1024)} MB: a few such "
                                "messages fill a queue", value))
    elif size < MIN_MESSAGE_SIZE:
        findings.append(Finding(LIMITS, WARN, "message_size_limit",
                                "under 1 MB: ordinary attachments bounce", value))
    else:
        findings.append(Finding(LIMITS, OK, "message_size_limit", "set", value))

    anvil = any(s.command == "anvil" for s in cfg.services)
    findings.append(Finding(LIMITS, OK, "master.cf anvil", "anvil runs: client limits apply")
                    if anvil else
                    Finding(LIMITS, FAIL, "master.cf anvil",
                            "no anvil service: the smtpd_client_* limits do nothing; "
                            "add 'anvil unix - - n - 1 anvil'"))

    for name, advice in (
            ("smtpd_client_connection_count_limit", "concurrent sessions per client"),
            ("smtpd_client_connection_rate_limit", "connections per client per anvil_rate_time_unit"),
            ("smtpd_client_message_rate_limit", "messages per client per anvil_rate_time_unit"),
            ("smtpd_client_auth_rate_limit", "AUTH attempts per client per anvil_rate_time_unit")):
        value = mx.get(name, "")
        number = parse_int(value)
        if number is None or number <= 0:
            findings.append(Finding(LIMITS, WARN, name,
                                    f"not set (0 is unlimited): limit {advice}", value))
        else:
            findings.append(Finding(LIMITS, OK, name, "set", value))

    soft_value = mx.get("smtpd_soft_error_limit", "")
    hard_value = mx.get("smtpd_hard_error_limit", "")
    soft, hard = parse_int(soft_value), parse_int(hard_value)
    if hard is None or hard <= 0 or hard > MAX_HARD_ERROR_LIMIT:
        findings.append(Finding(LIMITS, WARN, "smtpd_hard_error_limit",
                                f"should be 1..{MAX_HARD_ERROR_LIMIT} so that a client probing "
                                "addresses is cut off (default 20)", hard_value))
    else:
        findings.append(Finding(LIMITS, OK, "smtpd_hard_error_limit", "set", hard_value))
    if soft is None or soft <= 0 or (hard is not None and hard > 0 and soft >= hard):
        findings.append(Finding(LIMITS, WARN, "smtpd_soft_error_limit",
                                "should be set and below smtpd_hard_error_limit (default 10)",
                                soft_value))
    else:
        findings.append(Finding(LIMITS, OK, "smtpd_soft_error_limit", "set", soft_value))
    sleep_value = mx.get("smtpd_error_sleep_time", "")
    sleep = parse_time(sleep_value)
    if sleep is None or sleep <= 0:
        findings.append(Finding(LIMITS, WARN, "smtpd_error_sleep_time",
                                "no delay after errors: set 1s or more", sleep_value))
    else:
        findings.append(Finding(LIMITS, OK, "smtpd_error_sleep_time", "set", sleep_value))
    return findings


def _defaults(cfg: PostfixSettings, mx: dict) -> list:
    findings = []
    value = mx.get("disable_vrfy_command", "no")
    findings.append(Finding(DEFAULTS, OK, "disable_vrfy_command", "VRFY is off", value)
                    if yes(value) else
                    Finding(DEFAULTS, WARN, "disable_vrfy_command",
                            "VRFY lets anyone test which addresses exist; set yes", value))
    value = mx.get("smtpd_helo_required", "no")
    findings.append(Finding(DEFAULTS, OK, "smtpd_helo_required", "HELO/EHLO required", value)
                    if yes(value) else
                    Finding(DEFAULTS, WARN, "smtpd_helo_required",
                            "clients may skip HELO/EHLO; set yes", value))
    value = mx.get("smtpd_etrn_restrictions", "")
    outcome, _ = restriction_outcome(value, rejects=("reject",))
    findings.append(Finding(DEFAULTS, OK, "smtpd_etrn_restrictions", "ETRN is restricted", value)
                    if outcome == "reject" else
                    Finding(DEFAULTS, WARN, "smtpd_etrn_restrictions",
                            "any client may ask for queue runs with ETRN; "
                            "set permit_mynetworks, reject", value))
    banner = mx.get("smtpd_banner", "")
    raw_banner = cfg.raw.get("smtpd_banner", banner)
    version = mx.get("mail_version", "")
    if re.search(r"\$\{?mail_version\b", raw_banner) or (version and version in banner):
        findings.append(Finding(DEFAULTS, WARN, "smtpd_banner",
                                "tells the software version: use $myhostname ESMTP", banner))
    else:
        findings.append(Finding(DEFAULTS, OK, "smtpd_banner", "no software version", banner))
    return findings


def arc_sealing(config) -> Optional[str]:
    """The ``[check.arc] seal`` mode of a loaded mailwarden configuration
    when it seals anything (enabled, not ``never``, a key); else None."""
    options = (getattr(config, "checks", None) or {}).get("arc")
    if options is None or not getattr(options, "enabled", False):
        return None
    seal = getattr(options, "seal", "never")
    if seal == "never" or not getattr(options, "keys", ()):
        return None
    return seal


def _seal_order(subject: str, value: str, milter_address: str, queue_dir: str,
                arc_seal: str) -> Optional[Finding]:
    """Where mailwarden stands in one milter list, for its ARC seal: None
    when it is not in the list."""
    entries = [m[0] for m in parse_milters(value)]
    position = next((i for i, m in enumerate(entries)
                     if milter_matches(m, milter_address, queue_dir)), None)
    if position is None:
        return None
    later = entries[position + 1:]
    if later:
        return Finding(MILTER, WARN, subject,
                       f"mailwarden seals ARC ([check.arc] seal = {arc_seal}) but "
                       f"{len(later)} milter{'s' if len(later) > 1 else ''} after it may "
                       "change the message once sealed, and a changed message fails the "
                       "seal: list mailwarden last", ", ".join(later))
    return Finding(MILTER, OK, subject, "mailwarden is the last milter: its ARC seal "
                   "covers every change made to the message", value)


def _arc(cfg: PostfixSettings, mx: dict, milter_address: Optional[str],
         arc_seal: Optional[str]) -> list:
    if arc_seal is None or milter_address is None:
        return []
    findings = []
    queue_dir = mx.get("queue_directory", "")
    found = _seal_order("smtpd_milters", mx.get("smtpd_milters", ""), milter_address,
                        queue_dir, arc_seal)
    if found is not None:
        findings.append(found)
    mx_service = cfg.mx_service()
    for service in cfg.smtpd_services():
        # the public service's own override is in ``mx`` already
        if service != mx_service and "smtpd_milters" in service.overrides:
            found = _seal_order(f"master.cf {service.key}", service.overrides["smtpd_milters"],
                                milter_address, queue_dir, arc_seal)
            if found is not None:
                findings.append(found)
    # the cleanup of sendmail(1) and pickup reads main.cf, not a smtpd's -o
    value = cfg.main.get("non_smtpd_milters", "")
    found = _seal_order("non_smtpd_milters", value, milter_address, queue_dir, arc_seal)
    if found is None:
        findings.append(Finding(MILTER, OK, "non_smtpd_milters",
                                "note: mailwarden is not listed, so locally submitted mail "
                                "(sendmail(1), and list or forward software that submits "
                                "that way) leaves without an ARC seal; add its socket if "
                                "that mail should be sealed", value))
    else:
        findings.append(found)
    return findings


def _milter(cfg: PostfixSettings, mx: dict, milter_address: Optional[str]) -> list:
    findings = []
    value = mx.get("smtpd_milters", "")
    milters = parse_milters(value)
    queue_dir = mx.get("queue_directory", "")
    ours = None
    if not milters:
        findings.append(Finding(MILTER, FAIL, "smtpd_milters",
                                "no milter: mailwarden never sees SMTP mail; add its socket",
                                value))
    elif milter_address is None:
        findings.append(Finding(MILTER, WARN, "smtpd_milters",
                                "cannot tell which entry is mailwarden: give --milter or "
                                "a mailwarden config", value))
        ours = milters[0] if len(milters) == 1 else None
    else:
        ours = next((m for m in milters if milter_matches(m[0], milter_address, queue_dir)), None)
        if ours is None:
            findings.append(Finding(MILTER, FAIL, "smtpd_milters",
                                    f"mailwarden ({milter_address}) is not listed", value))
        else:
            findings.append(Finding(MILTER, OK, "smtpd_milters", "mailwarden is listed", value))
    # submission services often set their own smtpd_milters
    if milter_address is not None:
        for service in cfg.smtpd_services():
            if "smtpd_milters" not in service.overrides:
                continue
            entries = parse_milters(service.overrides["smtpd_milters"])
            if not any(milter_matches(m[0], milter_address, queue_dir) for m in entries):
                findings.append(Finding(MILTER, WARN, f"master.cf {service.key}",
                                        "overrides smtpd_milters without mailwarden: mail "
                                        "received there is not checked",
                                        service.overrides["smtpd_milters"]))

    action = mx.get("milter_default_action", "")
    subject = "milter_default_action"
    if ours is not None and "default_action" in ours[1]:
        action, subject = ours[1]["default_action"], "smtpd_milters default_action"
    if action == "tempfail":
        findings.append(Finding(MILTER, OK, subject, "mail waits while mailwarden is down",
                                action))
    elif action == "accept":
        findings.append(Finding(MILTER, FAIL, subject,
                                "fails open: mail passes unchecked while mailwarden is down; "
                                "set tempfail", action))
    else:
        findings.append(Finding(MILTER, WARN, subject,
                                "set tempfail: senders retry while mailwarden is down", action))

    value = mx.get("milter_protocol", "")
    findings.append(Finding(MILTER, OK, "milter_protocol", "version 6", value)
                    if value.strip() == "6" else
                    Finding(MILTER, WARN, "milter_protocol",
                            "set 6: older versions lack the negotiation mailwarden uses", value))

    missing: dict = {}
    for macro, param, params in REQUIRED_MACROS:
        if not any(macro in macro_names(mx.get(p, "")) for p in params):
            missing.setdefault(param, []).append(macro)
    if not missing:
        findings.append(Finding(MILTER, OK, "milter_*_macros",
                                "every macro mailwarden reads is sent"))
    for param, macros in missing.items():
        names = " ".join(m if len(m) == 1 else "{" + m + "}" for m in macros)
        if value.strip() == "6":
            # mailwarden names its macros at negotiation (SETSYMLIST), and
            # Postfix then sends those whatever main.cf lists
            findings.append(Finding(MILTER, OK, param,
                                    f"{names} not listed: mailwarden asks for them itself "
                                    "(milter protocol 6)", mx.get(param, "")))
        else:
            findings.append(Finding(MILTER, WARN, param,
                                    f"mailwarden needs {names} here (see "
                                    "contrib/postfix/main.cf)", mx.get(param, "")))
    return findings


def audit(cfg: PostfixSettings, milter_address: Optional[str] = None,
          arc_seal: Optional[str] = None) -> list:
    """Every finding for the Postfix settings ``cfg``.

    ``milter_address`` is the socket mailwarden listens on (Postfix or
    libmilter notation); without it the milter entry is not identified.
    ``arc_seal`` is mailwarden's ``[check.arc] seal`` mode when it seals
    (:func:`arc_sealing`); None leaves the milter order for ARC unjudged.
    """
    mx = cfg.service_settings(cfg.mx_service())
    return (_relay(cfg, mx) + _tls(cfg, mx) + _limits(cfg, mx) + _defaults(cfg, mx)
            + _milter(cfg, mx, milter_address) + _arc(cfg, mx, milter_address, arc_seal))


# --------------------------------------------------------------------------
# command


def _mailwarden(args) -> tuple:
    """(mailwarden's socket, its ARC seal mode or None): ``--milter`` names
    the socket; the configuration (``-c``, else the default file unless
    ``--milter`` was given) gives the socket and the sealing."""
    from ..config import ConfigError, load
    path = args.config
    if path is None:
        from ..command import DEFAULT_CONFIG
        if args.milter or not os.path.exists(DEFAULT_CONFIG):
            return args.milter, None
        path = DEFAULT_CONFIG
    try:
        config = load(path)
    except ConfigError as exc:
        raise AuditError(str(exc)) from None
    return args.milter or config.milter.socket, arc_sealing(config)


def cmd_audit_postfix(args) -> int:
    try:
        cfg = read_postconf(args.config_dir, args.postconf)
        findings = audit(cfg, *_mailwarden(args))
    except AuditError as exc:
        print(f"mailwarden: audit-postfix: {printable(exc)}", file=sys.stderr)
        return 2
    title = f"Postfix in {cfg.config_dir or '/etc/postfix'}"
    return render(title, findings, args.json)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audit-postfix", help="check Postfix's own settings (relay, TLS, limits, milter, "
                              "the milter order for ARC sealing)")
    p.add_argument("--config-dir", default=None,
                   help="Postfix configuration directory (default: postconf's own)")
    p.add_argument("--milter", default=None,
                   help="mailwarden's socket as Postfix names it (default: [milter] socket "
                        "of the mailwarden config)")
    p.add_argument("-c", "--config", default=None,
                   help="mailwarden configuration to take the socket and the ARC sealing "
                        "([check.arc] seal and keys: mailwarden must be the last milter) "
                        "from (default /etc/mailwarden/mailwarden.ini when it exists and "
                        "--milter is not given)")
    p.add_argument("--postconf", default=None, help="the postconf program (default: from PATH)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_audit_postfix)
