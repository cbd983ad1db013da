"""Option values: the parsers of INI text, and the errors they raise.

Everything a configuration section needs to declare its keys, apart from the
loader: :func:`opt` (a field with its default and parser), the value
parsers (``parse_*``, each ``str -> value`` raising :class:`ValueProblem`
with a short reason), :class:`Networks`, the list-file readers, and
:class:`ConfigError`.  The core sections (:mod:`mailwarden.config`) and
every check's ``Options`` import them from here, so that the loader may
know the checks without the checks knowing the loader.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .address import AddressProblem, DomainSet, normalize_domain
from .model import unmapped

__all__ = [
    "ConfigError", "ValueProblem", "opt", "Networks",
    "parse_bool", "parse_int", "parse_float", "parse_size", "parse_seconds",
    "parse_list", "parse_choice", "parse_str", "parse_path", "parse_domains",
    "parse_network", "parse_networks", "parse_socket", "parse_mode",
    "parse_redis_url", "parse_listen", "parse_subset",
    "read_text_file", "read_list_file", "read_domain_file", "read_network_file",
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


def opt(default: Any, parse: Callable[[str], Any]) -> Any:
    """A config field: its default and the parser for the INI text."""
    return field(default=default, metadata={"parse": parse})


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


def parse_subset(known: tuple, what: str):
    """A parser of a list of words, each one of ``known`` (any case): the
    set of them, lower-cased; an unknown word is named with ``what``."""
    def parse(text: str) -> frozenset:
        words = frozenset(w.lower() for w in parse_list(text))
        unknown = words - set(known)
        if unknown:
            raise ValueProblem(f"unknown {what} {', '.join(sorted(unknown))} "
                               f"(known: {', '.join(known)})")
        return words
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
        address = unmapped(address)
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


def read_text_file(path: str) -> str:
    """A configuration file's text (UTF-8); ConfigError naming ``path``
    when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(path, None, None, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, None, None, f"not UTF-8 text: {exc.reason}") from None


def read_list_file(path: str, parse_item: Callable[[str], Any]) -> tuple:
    """One item per line, ``#`` starts a comment; each item through
    ``parse_item``.  Errors are located in the list file: ``path:line``."""
    items = []
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            items.append(parse_item(item))
        except ValueProblem as exc:
            raise ConfigError(path, lineno, None, None, str(exc)) from None
    return tuple(items)


def read_domain_file(path: str) -> tuple:
    """One domain per line (see :func:`read_list_file`)."""
    return read_list_file(path, _domain)


def domains_and_file(names: tuple, path: str, key: str, error) -> DomainSet:
    """The domains of a list key and of its ``*_file`` key (``key``, whose
    value is ``path``) as one :class:`DomainSet`, for an options class's
    ``resolve``.  A file that cannot be read is reported at ``key``; a bad
    line in it at ``path:line``."""
    if path:
        try:
            names = tuple(names) + read_domain_file(path)
        except ConfigError as exc:
            if exc.line is None:             # unreadable: point at our key
                raise error(key, exc.message + f": {path}") from None
            raise
    return DomainSet.of(names)


def parse_cpu_budget(text: str) -> float:
    """Seconds of CPU a check may spend on one message; more than 0."""
    seconds = parse_seconds(text)
    if seconds <= 0:
        raise ValueProblem("a CPU budget must be more than 0 (nothing would be checked)")
    return seconds


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


_REDIS_URL = re.compile(r"^(redis|rediss|unix)://\S+$")


def parse_redis_url(text: str) -> str:
    value = text.strip()
    if not _REDIS_URL.match(value):
        raise ValueProblem(f"expected redis://HOST:PORT/DB, rediss://... or unix:///path, got {text!r}")
    return value


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
