"""INI configuration: parsed once at start-up into frozen dataclasses.

Every section is a frozen dataclass whose fields carry their parser in the
field metadata (see :func:`opt`).  Unknown sections and keys, bad values and a
missing ``[authserv] id`` are refused with ``FILE:LINE: [section] key: what``.
Checks contribute their own ``[check.NAME]`` section through their ``Options``
dataclass, so a new check never edits this module.  A check whose items an
admin adds without code (one DNS list per zone, ...) declares an ``Item``
dataclass: each ``[check.NAME.ITEM]`` section is built from it, its keys
refused when unknown like any other, and handed to the check's options as
``subsections`` (item name -> Item instance; an Item field ``name`` without
a parser receives the NAME).  Symbols that such items make
are known through the check's ``symbols_for(options)``, so ``[scores]`` is
validated after every check section, wherever it stands in the file.
"""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .address import AddressProblem, DomainSet, normalize_domain

__all__ = [
    "ConfigError", "Config", "opt", "load", "loads",
    "parse_bool", "parse_int", "parse_float", "parse_size", "parse_seconds",
    "parse_list", "parse_networks", "parse_choice", "parse_socket", "Networks",
]


class ConfigError(Exception):
    """A configuration problem, located as precisely as we can."""

    def __init__(self, path: str, line: int | None, section: str | None,
                 key: str | None, message: str):
        self.path, self.line, self.section, self.key = path, line, section, key
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line if self.line else 0}:"
        if self.section is not None:
            where += f" [{self.section}]"
        if self.key is not None:
            where += f" {self.key}:"
        return f"{where} {self.message}"


class ValueProblem(ValueError):
    """Raised by a parser; the loader adds file, line, section and key."""


# --------------------------------------------------------------------------
# value parsers: str -> value, raise ValueProblem with a short reason

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueProblem(f"expected yes or no, got {text!r}")


def parse_int(minimum: int | None = None, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueProblem(f"expected a whole number, got {text!r}") from None
        _bounds(value, minimum, maximum)
        return value
    return parse


def parse_float(minimum: float | None = None, maximum: float | None = None):
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueProblem(f"expected a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueProblem(f"expected a finite number, got {text!r}")
        _bounds(value, minimum, maximum)
        return value
    return parse


def _bounds(value, minimum, maximum) -> None:
    if minimum is not None and value < minimum:
        raise ValueProblem(f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueProblem(f"must be at most {maximum}, got {value}")


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)b?\s*$", re.I)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (binary multiples)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueProblem(f"expected a size such as 10M or 512K, got {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.I)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_seconds(text: str) -> float:
    """Seconds, with an optional ms, s, m, h or d suffix."""
    m = _DURATION.match(text)
    if not m:
        raise ValueProblem(f"expected a duration such as 5s, 250ms or 10m, got {text!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _DURATION_UNITS[unit]


def parse_list(text: str) -> tuple[str, ...]:
    """Items separated by commas and/or white space (also across lines)."""
    return tuple(item for item in re.split(r"[,\s]+", text.strip()) if item)


def parse_choice(*choices: str):
    def parse(text: str) -> str:
        low = text.strip().lower()
        if low not in choices:
            raise ValueProblem(f"expected one of {', '.join(choices)}, got {text!r}")
        return low
    return parse


def parse_str(text: str) -> str:
    return text.strip()


def parse_path(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class Networks:
    """A set of IPv4 and IPv6 networks with a fast membership test."""

    networks: tuple = ()

    def __contains__(self, address) -> bool:
        if address is None:
            return False
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __iter__(self):
        return iter(self.networks)

    def match(self, address):
        """The most specific network that holds ``address``, or None."""
        best = None
        for net in self.networks:
            if address.version == net.version and address in net:
                if best is None or net.prefixlen > best.prefixlen:
                    best = net
        return best


def _domain(text: str) -> str:
    name = text.strip()
    try:
        bare = normalize_domain(name[1:] if name.startswith(".") else name)
    except AddressProblem as exc:
        raise ValueProblem(str(exc)) from None
    if bare.startswith("["):
        raise ValueProblem(f"an address literal is not a domain: {text!r}")
    return "." + bare if name.startswith(".") else bare


def parse_domains(text: str) -> tuple:
    """Domain names; a leading dot means "and every subdomain"."""
    return tuple(_domain(item) for item in parse_list(text))


def read_list_file(path: str, parse_item: Callable[[str], Any]) -> tuple:
    """One item per line, ``#`` starts a comment; each item through
    ``parse_item``.  Errors are located in the list file: ``path:line``."""
    items = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                item = line.split("#", 1)[0].strip()
                if not item:
                    continue
                try:
                    items.append(parse_item(item))
                except ValueProblem as exc:
                    raise ConfigError(path, lineno, None, None, str(exc)) from None
    except OSError as exc:
        raise ConfigError(path, None, None, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, None, None, f"not UTF-8 text: {exc.reason}") from None
    return tuple(items)


def read_domain_file(path: str) -> tuple:
    """One domain per line (see :func:`read_list_file`)."""
    return read_list_file(path, _domain)


def parse_network(text: str):
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueProblem(f"not an IP address or CIDR network: {text!r}") from None


def parse_networks(text: str) -> Networks:
    return Networks(tuple(parse_network(item) for item in parse_list(text)))


def read_network_file(path: str) -> Networks:
    """One address or CIDR per line (see :func:`read_list_file`)."""
    return Networks(read_list_file(path, parse_network))


_SOCKET = re.compile(r"^(unix|local):(/.+)$|^(inet|inet6):(\d{1,5})(?:@(.+))?$|^(inet|inet6):(.+):(\d{1,5})$")


def parse_socket(text: str) -> str:
    """Postfix notation (``unix:/path``, ``inet:HOST:PORT``) or libmilter's
    (``inet:PORT@HOST``); returned in the libmilter form pymilter wants."""
    value = text.strip()
    m = _SOCKET.match(value)
    if not m:
        raise ValueProblem(
            f"expected unix:/path or inet:HOST:PORT, got {text!r}")
    if m.group(1):
        return f"unix:{m.group(2)}"
    if m.group(3):
        port, host = m.group(4), m.group(5)
        kind = m.group(3)
    else:
        kind, host, port = m.group(6), m.group(7).strip("[]"), m.group(8)
    if not 0 < int(port) < 65536:
        raise ValueProblem(f"port out of range in {text!r}")
    return f"{kind}:{port}@{host}" if host else f"{kind}:{port}"


def parse_mode(text: str) -> str:
    """A file mode in octal (``0660``); kept as text, checked here once."""
    value = text.strip()
    if not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueProblem(f"expected an octal mode such as 0660, got {text!r}")
    return value


def opt(default: Any, parse: Callable[[str], Any]) -> Any:
    """A config field: its default and the parser for the INI text."""
    return field(default=default, metadata={"parse": parse})


# --------------------------------------------------------------------------
# the core sections


@dataclass(frozen=True)
class MilterOptions:
    socket: str = opt("inet:8894@127.0.0.1", parse_socket)
    name: str = opt("mailwarden", parse_str)
    timeout: float = opt(600.0, parse_seconds)
    # on SIGTERM: new transactions are refused (451 4.3.2) and those in
    # flight get this long to finish before the milter stops
    stop_timeout: float = opt(30.0, parse_seconds)
    socket_mode: str = opt("0660", parse_mode)
    user: str = opt("", parse_str)
    group: str = opt("", parse_str)
    # started as root without a user to drop to, the milter refuses to run
    # unless this says yes: a parser bug must not hand an attacker root
    allow_root: bool = opt(False, parse_bool)
    spool_threshold: int = opt(1024 * 1024, parse_size)
    log: str = opt("syslog", parse_choice("syslog", "stderr"))
    log_format: str = opt("text", parse_choice("text", "json"))
    log_level: str = opt("info", parse_choice("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class AuthservOptions:
    id: str = opt("", parse_str)


@dataclass(frozen=True)
class DnsOptions:
    nameservers: tuple = opt((), parse_list)
    port: int = opt(53, parse_int(1, 65535))
    timeout: float = opt(2.0, parse_seconds)
    message_deadline: float = opt(10.0, parse_seconds)
    message_budget: int = opt(200, parse_int(1, 100000))
    cache_size: int = opt(20000, parse_int(0, 10_000_000))
    negative_ttl: float = opt(60.0, parse_seconds)
    max_ttl: float = opt(86400.0, parse_seconds)
    workers: int = opt(32, parse_int(1, 1024))
    queue_size: int = opt(1024, parse_int(16, 1_000_000))
    # lookups of message_budget only those that decide DMARC may use
    decisive_reserve: int = opt(25, parse_int(0, 100000))

    def resolve(self, error):
        if self.decisive_reserve >= self.message_budget:
            raise error("decisive_reserve",
                        f"must be less than message_budget ({self.message_budget})")
        return self


_TEMPERROR_ACTIONS = parse_choice("tempfail", "accept")


@dataclass(frozen=True)
class PolicyOptions:
    add_header_score: float = opt(5.0, parse_float())
    quarantine_score: float = opt(10.0, parse_float())
    reject_score: float = opt(15.0, parse_float())
    temperror_action: str = opt("tempfail", _TEMPERROR_ACTIONS)
    temperror_action_authenticated: str = opt("accept", _TEMPERROR_ACTIONS)
    temperror_action_trusted: str = opt("accept", _TEMPERROR_ACTIONS)
    dry_run: bool = opt(False, parse_bool)
    status_header: str = opt("X-Mailwarden-Status", parse_str)
    reject_text: str = opt("Message rejected by content policy", parse_str)
    # outbound (authenticated or trusted) mail that scores: "score" treats it
    # like any other; "hold" quarantines it instead (add_header, quarantine
    # and a score reject all become a hold), so an admin sees what a
    # compromised account tried to send and the spammer learns nothing
    outbound_action: str = opt("score", parse_choice("score", "hold"))


@dataclass(frozen=True)
class RelayOptions:
    trusted_networks: Networks = opt(parse_networks("127.0.0.0/8 ::1/128"), parse_networks)
    # domains we receive mail for; ".example.org" also holds its subdomains
    local_domains: tuple = opt((), parse_domains)
    local_domains_file: str = opt("", parse_path)
    # both merged by resolve(); filled by the loader, never by the INI
    local: DomainSet = field(default=DomainSet())

    def resolve(self, error):
        names = self.local_domains
        if self.local_domains_file:
            try:
                names = names + read_domain_file(self.local_domains_file)
            except ConfigError as exc:
                if exc.line is None:             # unreadable: point at our key
                    raise error("local_domains_file",
                                exc.message + f": {self.local_domains_file}") from None
                raise
        return dataclasses.replace(self, local=DomainSet.of(names))


_REDIS_URL = re.compile(r"^(redis|rediss|unix)://\S+$")


def parse_redis_url(text: str) -> str:
    value = text.strip()
    if not _REDIS_URL.match(value):
        raise ValueProblem(f"expected redis://HOST:PORT/DB, rediss://... or unix:///path, got {text!r}")
    return value


@dataclass(frozen=True)
class StateOptions:
    """Where limit counters live (see :mod:`mailwarden.state`)."""

    backend: str = opt("memory", parse_choice("memory", "redis"))
    url: str = opt("redis://127.0.0.1:6379/0", parse_redis_url)
    prefix: str = opt("mailwarden:", parse_str)
    pool_size: int = opt(16, parse_int(1, 1024))
    # connect and read timeout of one Redis call: limits fail open after it
    timeout: float = opt(0.25, parse_seconds)
    # how long a caller waits for a free pooled connection
    pool_timeout: float = opt(0.5, parse_seconds)
    # after a failure, Redis is not asked again for this long
    retry_interval: float = opt(5.0, parse_seconds)


def parse_listen(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) for an HTTP listener; empty: off.

    A port alone (``9851`` or ``:9851``) is loopback, ``127.0.0.1:9851``:
    every interface only when named (``0.0.0.0:9851``, ``[::]:9851``)."""
    value = text.strip()
    if not value:
        return ""
    if value.isdigit():
        value = ":" + value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueProblem(f"expected HOST:PORT such as 127.0.0.1:9851, got {text!r}")
    if not host:
        return f"127.0.0.1:{int(port)}"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueProblem(f"not an IP address: {host!r}") from None
    return value


@dataclass(frozen=True)
class MetricsOptions:
    """Prometheus metrics over HTTP; off unless ``listen`` is set."""

    listen: str = opt("", parse_listen)


@dataclass(frozen=True)
class DmarcReportOptions:
    """``mailwarden dmarc-report`` (RFC 7489 §7.2); the records come from
    ``[check.dmarc] history``."""

    # report_metadata: who we are (org_name, email) and the receiver domain
    # named in file names and the Subject (Submitter)
    org_name: str = opt("", parse_str)
    domain: str = opt("", parse_str)
    email: str = opt("", parse_str)
    # the From of report mail; empty: email
    sender: str = opt("", parse_str)
    # the local MTA's sendmail(1) command line, arguments allowed
    sendmail: str = opt("/usr/sbin/sendmail", parse_str)
    # per run: reports written (policy domains; the others wait), report
    # mails sent, report mails to one destination domain (the rest waits)
    max_reports_per_run: int = opt(1000, parse_int(1, 10 ** 6))
    max_mails_per_run: int = opt(2000, parse_int(1, 10 ** 6))
    max_mails_per_domain: int = opt(200, parse_int(1, 10 ** 6))


CORE_SECTIONS: Mapping[str, type] = MappingProxyType({
    "milter": MilterOptions,
    "authserv": AuthservOptions,
    "dns": DnsOptions,
    "policy": PolicyOptions,
    "relay": RelayOptions,
    "state": StateOptions,
    "metrics": MetricsOptions,
    "dmarc_report": DmarcReportOptions,
})


@dataclass(frozen=True)
class Config:
    path: str
    milter: MilterOptions
    authserv: AuthservOptions
    dns: DnsOptions
    policy: PolicyOptions
    relay: RelayOptions
    state: StateOptions
    scores: Mapping[str, float]
    checks: Mapping[str, Any]          # check name -> its Options instance
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    dmarc_report: DmarcReportOptions = field(default_factory=DmarcReportOptions)

    def check(self, name: str):
        return self.checks[name]


# --------------------------------------------------------------------------
# loading

_SECTION_LINE = re.compile(r"^\[([^\]]+)\]")
_KEY_LINE = re.compile(r"^([^\s#;=:][^=:]*?)\s*[=:]")


def _line_numbers(text: str) -> dict:
    """(section, key) -> line, and (section, None) -> line of its header."""
    where: dict = {}
    section = None
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _SECTION_LINE.match(line)
        if m:
            section = m.group(1).strip()
            where.setdefault((section, None), lineno)
            continue
        m = _KEY_LINE.match(line)
        if m and section is not None:
            where.setdefault((section, m.group(1).strip()), lineno)
    return where


def _build(cls, values: Mapping[str, str], path: str, section: str, where: dict,
           extra_keys: Mapping[str, Callable] = MappingProxyType({})):
    # a field without a parser (``subsections``) is filled by the loader, not the INI
    known = {f.name: f for f in dataclasses.fields(cls) if "parse" in f.metadata}
    kwargs = {}
    for key, text in values.items():
        line = where.get((section, key))
        if key in extra_keys:
            continue
        f = known.get(key)
        if f is None:
            raise ConfigError(path, line, section, key, "unknown key")
        try:
            kwargs[key] = f.metadata["parse"](text)
        except ValueProblem as exc:
            raise ConfigError(path, line, section, key, str(exc)) from None
    try:
        return cls(**kwargs)
    except ValueProblem as exc:      # a __post_init__ that checks keys together
        raise ConfigError(path, where.get((section, None)), section, None, str(exc)) from None


def _resolve(options, path: str, section: str, where: dict):
    """Let an Options object read its files and check its keys together.

    ``resolve(error)`` returns the final Options; ``error(key, message)``
    makes a ConfigError located at that key of this section.
    """
    resolve = getattr(options, "resolve", None)
    if resolve is None:
        return options

    def error(key, message):
        return ConfigError(path, where.get((section, key), where.get((section, None))),
                           section, key, message)
    return resolve(error)


def loads(text: str, path: str = "<string>", registry: Mapping[str, type] | None = None) -> Config:
    """Parse INI ``text``; ``registry`` maps check names to check classes."""
    if registry is None:
        from .checks import registry as check_registry
        registry = check_registry()
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       empty_lines_in_values=False,
                                       inline_comment_prefixes=None)
    parser.optionxform = str          # keep the case: score symbols are upper case
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(path, exc.lineno, exc.section, None, "section given twice") from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(path, exc.lineno, exc.section, exc.option, "key given twice") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(path, exc.lineno, None, None, "a key before any [section]") from None
    except configparser.ParsingError as exc:
        lineno, line = exc.errors[0] if exc.errors else (None, "")
        raise ConfigError(path, lineno, None, None, f"cannot parse line: {line!r}") from None

    where = _line_numbers(text)
    core: dict = {}
    checks: dict = {}
    scores: dict = {}
    check_values: dict = {}           # check name -> its [check.NAME] keys
    items: dict = {}                  # check name -> {item: Item instance}

    for section in parser.sections():
        values = dict(parser.items(section))
        if section in CORE_SECTIONS:
            core[section] = _resolve(_build(CORE_SECTIONS[section], values, path, section, where),
                                     path, section, where)
        elif section == "scores":
            continue                  # once every check section is known
        elif section.startswith("check."):
            name, dot, item = section[len("check."):].partition(".")
            check_cls = registry.get(name)
            if check_cls is None:
                raise ConfigError(path, where.get((section, None)), section, None,
                                  f"unknown check (known: {', '.join(sorted(registry))})")
            if not dot:
                check_values[name] = values
                continue
            item_cls = getattr(check_cls, "Item", None)
            if item_cls is None:
                raise ConfigError(path, where.get((section, None)), section, None,
                                  f"check {name} has no sub-sections")
            if not re.fullmatch(r"[A-Za-z0-9_\-]+", item):
                raise ConfigError(path, where.get((section, None)), section, None,
                                  "a sub-section name is letters, digits, '_' and '-'")
            built = _build(item_cls, values, path, section, where)
            if "name" in {f.name for f in dataclasses.fields(item_cls)} and "name" not in values:
                built = dataclasses.replace(built, name=item)     # an Item may want its NAME
            items.setdefault(name, {})[item] = _resolve(built, path, section, where)
        else:
            raise ConfigError(path, where.get((section, None)), section, None, "unknown section")

    for section, cls in CORE_SECTIONS.items():
        if section not in core:
            core[section] = _resolve(cls(), path, section, where)
    for name, check_cls in registry.items():
        section = f"check.{name}"
        options = _build(check_cls.Options, check_values.get(name, {}), path, section, where)
        if getattr(check_cls, "Item", None) is not None:
            options = dataclasses.replace(options,
                                          subsections=MappingProxyType(items.get(name, {})))
        checks[name] = _resolve(options, path, section, where)

    known_symbols = {}
    for name, check_cls in registry.items():
        known_symbols.update(check_cls.symbols_for(checks[name]))
    if parser.has_section("scores"):
        for key, text_value in parser.items("scores"):
            symbol = key.upper()
            line = where.get(("scores", key))
            if symbol not in known_symbols:
                raise ConfigError(path, line, "scores", key, "unknown symbol")
            try:
                scores[symbol] = parse_float()(text_value)
            except ValueProblem as exc:
                raise ConfigError(path, line, "scores", key, str(exc)) from None

    authserv_id = core["authserv"].id
    if not authserv_id:
        raise ConfigError(path, where.get(("authserv", "id"), where.get(("authserv", None))),
                          "authserv", "id", "missing: the host name that Authentication-Results names")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*", authserv_id):
        raise ConfigError(path, where.get(("authserv", "id")), "authserv", "id",
                          f"not a host name: {authserv_id!r}")
    pol = core["policy"]
    if not pol.add_header_score <= pol.quarantine_score <= pol.reject_score:
        raise ConfigError(path, where.get(("policy", None)), "policy", None,
                          "thresholds must satisfy add_header_score <= quarantine_score <= reject_score")
    if not re.fullmatch(r"[!-9;-~]+", pol.status_header):
        raise ConfigError(path, where.get(("policy", "status_header")), "policy",
                          "status_header", f"not a header field name: {pol.status_header!r}")
    for server in core["dns"].nameservers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ConfigError(path, where.get(("dns", "nameservers")), "dns", "nameservers",
                              f"not an IP address: {server!r}") from None

    merged_scores = dict(known_symbols)
    merged_scores.update(scores)
    return Config(path=path, scores=MappingProxyType(merged_scores),
                  checks=MappingProxyType(checks), **core)


def load(path: str, registry: Mapping[str, type] | None = None) -> Config:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(path, None, None, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, None, None, f"not UTF-8 text: {exc.reason}") from None
    return loads(text, path, registry)


def default_hostname() -> str:
    return socket.getfqdn()
