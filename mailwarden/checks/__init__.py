"""The check interface, and the registry of every check mailwarden has.

A check is a small class in ``checks/NAME.py``:

* ``name``: its ``[check.NAME]`` section and the ``check`` of its results;
* ``Options``: a frozen dataclass (subclass of :class:`CheckOptions`) whose
  fields are its INI keys, each with its default and parser;
* ``symbols``: every symbol it can emit, with its default weight, so that
  ``[scores]`` can be validated at start-up and tuned without code;
* ``Item`` (optional): a frozen dataclass for ``[check.NAME.ITEM]``
  sub-sections, for things an admin adds without code (one per DNS list);
  the loader builds each, refusing unknown keys, and hands them over as
  ``options.subsections`` (item name -> Item);
* ``symbols_for(options)`` (optional classmethod): the symbols of a
  configured check, when items make their own (a list's codes); by default
  ``symbols`` plus the error symbol.  ``[scores]`` is validated against it;
* ``requires``: checks whose results it reads; the engine runs those first
  and refuses a cycle at start-up;
* ``skip_for``: client tags for which it does not run at all
  (``allowlisted``, ``authenticated``, ``trusted``);
* one method per SMTP stage it needs: ``on_connect``, ``on_helo``,
  ``on_mail``, ``on_rcpt``, ``on_body``, ``on_eom``, each taking the
  engine's :class:`~mailwarden.engine.Context` and returning a
  :class:`~mailwarden.model.Result`, several, or None;
* ``runs_at(stage)`` (optional): False for a stage where the check, so
  configured, has nothing to do (a method that would only return None):
  the engine then leaves it out of that stage;
* ``replayable``: True if a stage method may be abandoned at any DNS
  lookup and run again from the start: before its last lookup it does
  nothing (counting, storing, logging) that must not happen twice.  The
  engine then first runs it on cached answers alone, in the calling thread,
  and only hands it to a thread when a lookup must go to the network;
* ``cache_key(ctx)`` (optional): a hashable value that, with the stage and
  the DNS answers, fully determines the stage method's results (the client
  address, the HELO name, ...), or None.  The engine then keeps the
  results (``engine.ResultCache``) and gives them again, without calling
  the check, to a later connection or message with the same key while the
  DNS answers they came from are still cached; temporary results are never
  kept.  Only for a check whose stage methods do nothing but look up and
  compute: no counting, no logging, nothing read that the key leaves out;
  ``cacheable(results)`` (optional) may refuse to keep particular results;
* ``on_leave(ctx, message, authres_value)`` (optional): the last step
  before an accepted message leaves; ``message()`` gives its bytes with
  every other change made (our A-R, DKIM signatures, removals), made only
  when asked; returns (name, value) header fields to put on top of all
  (ARC sealing).  A crash adds nothing and is logged;
* ``on_close(conn)`` (optional): the SMTP connection ended; drop what the
  check holds for it elsewhere (a concurrency slot).  Errors are logged.
* ``fail_closed``: True for a policy check (relay, submission, dmarc): if
  it crashes, the message is tempfailed whatever ``[policy]
  temperror_action*`` and ``tempfail_on_error`` say, so that input which
  breaks it on purpose cannot open a door.

Checks keep no per-request state on ``self``: one instance serves every
connection and every thread.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Mapping, Optional

from ..options import opt, parse_bool, parse_subset
from ..model import Result, Stage, Trust

# Each module defines CHECKS = (SomeCheck, ...). Order here is only the
# tie-break for checks that do not depend on each other.
CHECK_MODULES = (
    "iplist",
    "iprev",
    "size",
    "uribl",
    "relay",
    "submission",
    "dkim_sign",
    "auth",
    "spf",
    "dkim",
    "dmarc",
    "arc",
    "limits",
    "helo",
    "dnsbl",
    "tls",
)


CLIENT_TAGS = tuple(sorted(Trust))      # the words skip_for and [limits] exempt take
parse_client_tags = parse_subset(CLIENT_TAGS, "client tag")


@dataclass(frozen=True)
class CheckOptions:
    enabled: bool = opt(True, parse_bool)
    # a temperror of this check may tempfail the message (per [policy]
    # temperror_action*); "no" records the temperror and accepts
    tempfail_on_error: bool = opt(True, parse_bool)
    # client tags for which the check does not run, replacing the check's own
    # skip_for: e.g. "allowlisted" alone makes a content check run on
    # authenticated and trusted (outbound) mail too; empty: run for everyone
    skip_for: Optional[frozenset] = opt(None, parse_client_tags)
    # [check.NAME.ITEM] sections of a check with an Item class; not an INI key
    subsections: Mapping = field(default_factory=lambda: MappingProxyType({}))


class Check:
    name: ClassVar[str] = ""
    method: ClassVar[str | None] = None      # RFC 8601 method, if any
    Options: ClassVar[type] = CheckOptions
    symbols: ClassVar[Mapping[str, float]] = {}
    requires: ClassVar[tuple] = ()
    skip_for: ClassVar[frozenset] = frozenset()
    replayable: ClassVar[bool] = False
    fail_closed: ClassVar[bool] = False

    def __init__(self, options, services):
        self.options = options
        self.services = services
        self.known_symbols = type(self).symbols_for(options)

    def skips(self) -> frozenset:
        """Client tags this check does not run for: the INI's, else its own."""
        configured = self.options.skip_for
        return type(self).skip_for if configured is None else configured

    @classmethod
    def error_symbol(cls) -> str:
        return f"{cls.name.upper()}_ERROR"

    @classmethod
    def all_symbols(cls) -> dict:
        symbols = dict(cls.symbols)
        symbols.setdefault(cls.error_symbol(), 0.0)
        return symbols

    @classmethod
    def symbols_for(cls, options) -> dict:
        """Every symbol this check, so configured, can emit -> default weight."""
        return cls.all_symbols()

    @classmethod
    def stages(cls) -> tuple:
        return tuple(stage for stage in Stage
                     if callable(getattr(cls, stage.method, None)))

    def runs_at(self, stage: Stage) -> bool:
        """False for a stage whose method, with these options, would
        always return nothing: the engine then does not call it there."""
        return True

    def result(self, result: str, symbol: str | None = None, reason: str = "", **kw) -> Result:
        """A Result of this check, with its method and temperror choice filled in."""
        if symbol is not None and symbol not in self.known_symbols:
            raise ValueError(f"{self.name}: undeclared symbol {symbol}")
        kw.setdefault("method", self.method)
        kw.setdefault("tempfail", self.options.tempfail_on_error)
        kw["check"], kw["result"], kw["symbol"], kw["reason"] = self.name, result, symbol, reason
        return Result.make(kw)


_registry: dict | None = None


def registry() -> Mapping[str, type]:
    """name -> check class, importing the check modules on first use."""
    global _registry
    if _registry is None:
        found = {}
        for module_name in CHECK_MODULES:
            module = importlib.import_module(f"{__name__}.{module_name}")
            for cls in module.CHECKS:
                if cls.name in found:
                    raise RuntimeError(f"two checks are called {cls.name}")
                found[cls.name] = cls
        _registry = found
    return _registry
