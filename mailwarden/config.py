"""INI configuration: parsed once at start-up into frozen dataclasses.

Every section is a frozen dataclass whose fields carry their parser in the
field metadata (see :func:`mailwarden.options.opt`, with the value parsers).
Unknown sections and keys, bad values and a missing ``[authserv] id`` are
refused with ``FILE:LINE: [section] key: what``.  Keys that are only wrong
together are checked by the section's own ``resolve(error)`` (see
:func:`_resolve`), core sections and checks alike.
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
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .address import DomainSet, analyze
from .orgdomain import is_domain
# the option parsers live apart so that checks can import them without
# importing this loader, which imports the check registry
from .options import (ConfigError, Networks, ValueProblem, opt, parse_bool, parse_choice,
                      parse_domains, parse_float, parse_int, parse_list, parse_mode,
                      parse_networks, parse_path, parse_listen, parse_redis_url,
                      parse_seconds, parse_size, parse_socket, parse_str, domains_and_file,
                      read_text_file)

# ConfigError is what load() raises; option parsers: mailwarden.options
__all__ = ["ConfigError", "Config", "load", "loads"]


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

    def resolve(self, error):
        if not self.id:
            raise error("id", "missing: the host name that Authentication-Results names")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*", self.id):
            raise error("id", f"not a host name: {self.id!r}")
        return self


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
        for server in self.nameservers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise error("nameservers", f"not an IP address: {server!r}") from None
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

    def resolve(self, error):
        if not self.add_header_score <= self.quarantine_score <= self.reject_score:
            raise error(None, "thresholds must satisfy "
                        "add_header_score <= quarantine_score <= reject_score")
        if not re.fullmatch(r"[!-9;-~]+", self.status_header):
            raise error("status_header", f"not a header field name: {self.status_header!r}")
        return self


@dataclass(frozen=True)
class RelayOptions:
    trusted_networks: Networks = opt(parse_networks("127.0.0.0/8 ::1/128"), parse_networks)
    # domains we receive mail for; ".example.org" also holds its subdomains
    local_domains: tuple = opt((), parse_domains)
    local_domains_file: str = opt("", parse_path)
    # both merged by resolve(); filled by the loader, never by the INI
    local: DomainSet = field(default=DomainSet())

    def resolve(self, error):
        return dataclasses.replace(self, local=domains_and_file(
            self.local_domains, self.local_domains_file, "local_domains_file", error))


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


@dataclass(frozen=True)
class MetricsOptions:
    """Prometheus metrics over HTTP; off unless ``listen`` is set."""

    listen: str = opt("", parse_listen)


@dataclass(frozen=True)
class DmarcReportOptions:
    """``mailwarden dmarc-report`` (RFC 9990 aggregate reports); the records
    come from ``[check.dmarc] history``."""

    # report_metadata: who we are (org_name, email) and the receiver domain
    # named in file names and the Subject (Submitter)
    org_name: str = opt("", parse_str)
    domain: str = opt("", parse_str)
    email: str = opt("", parse_str)
    # report_metadata/extra_contact_info (optional)
    extra_contact_info: str = opt("", parse_str)
    # the From of report mail; empty: email
    sender: str = opt("", parse_str)
    # the local MTA's sendmail(1) command line, arguments allowed
    sendmail: str = opt("/usr/sbin/sendmail", parse_str)
    # per run: reports written (policy domains; the others wait), report
    # mails sent, report mails to one destination domain (the rest waits)
    max_reports_per_run: int = opt(1000, parse_int(1, 10 ** 6))
    max_mails_per_run: int = opt(2000, parse_int(1, 10 ** 6))
    max_mails_per_domain: int = opt(200, parse_int(1, 10 ** 6))

    def resolve(self, error):
        # the receiver of RFC 9990's file names and Subject: a domain-name,
        # never a path
        if self.domain and not is_domain(self.domain):
            raise error("domain", f"not a host name: {self.domain!r} (it names the "
                                  "report files and the Subject's Submitter)")
        return self


def parse_report_sender(text: str) -> str:
    """The envelope sender of report mail: one plain address that every MTA
    reads the same way (no quotes, spaces, routes, percent hack or bang
    path, no address literal, no leading ``-`` that a sendmail could take
    for an option)."""
    value = parse_str(text)
    if not value:
        return value
    route = analyze(value)
    if (not route.ok or route.address != value or not value.isascii()
            or not value.isprintable() or any(c in value for c in ' "<>,;()\\')
            or value.startswith("-") or len(route.hops) != 1 or not route.local_part
            or "." not in route.domain or route.domain.startswith("[")):
        raise ValueProblem(f"not one plain address: {value!r}")
    return value


@dataclass(frozen=True)
class FailureOptions:
    """``[dmarc_failure]``: DMARC failure reports (RFC 9991), see
    :mod:`mailwarden.dmarc_failure`."""

    enabled: bool = opt(False, parse_bool)
    # From and envelope sender of the reports; required when enabled
    sender: str = opt("", parse_report_sender)
    # headers: the header section only; redacted: headers and a redacted body
    content: str = opt("headers", parse_choice("headers", "redacted"))
    # reports to one destination domain per rate_period, at most
    rate_limit: int = opt(10, parse_int(1, 10 ** 6))
    rate_period: float = opt(3600.0, parse_seconds)
    # reports waiting for the sender thread, at most
    queue_size: int = opt(100, parse_int(1, 100000))

    def resolve(self, error):
        if self.enabled and not self.sender:
            raise error("sender", "needed when enabled = yes: the From of failure reports")
        if self.rate_period < 1:
            raise error("rate_period", "must be at least 1s")
        return self


CORE_SECTIONS: Mapping[str, type] = MappingProxyType({
    "milter": MilterOptions,
    "authserv": AuthservOptions,
    "dns": DnsOptions,
    "policy": PolicyOptions,
    "relay": RelayOptions,
    "state": StateOptions,
    "metrics": MetricsOptions,
    "dmarc_report": DmarcReportOptions,
    "dmarc_failure": FailureOptions,
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
    dmarc_failure: FailureOptions = field(default_factory=FailureOptions)

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
            core[section] = _build(CORE_SECTIONS[section], values, path, section, where)
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
            core[section] = cls()
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

    # the core sections' keys checked together, last: a bad key anywhere is
    # named before a missing [authserv] id
    for section in CORE_SECTIONS:
        core[section] = _resolve(core[section], path, section, where)

    merged_scores = dict(known_symbols)
    merged_scores.update(scores)
    return Config(path=path, scores=MappingProxyType(merged_scores),
                  checks=MappingProxyType(checks), **core)


def load(path: str, registry: Mapping[str, type] | None = None) -> Config:
    return loads(read_text_file(path), path, registry)
