"""dmarc: DMARC as RFC 9989 specifies it, on the SPF and DKIM results.

Records written for RFC 7489 keep working; where RFC 9989 changed the
outcome, the comment of ``policy.dmarc`` says what applied (see below).

It reads the results of the ``spf`` and ``dkim`` checks (never their
objects): the MAIL FROM identity's SPF result (the HELO identity for the
null sender, RFC 9989 §3.2.4) and every DKIM signature's result and ``d=``.

* The author domains (RFC 9989 §5.3.1 lets a receiver go on with several):
  every domain of every address in every From field, groups included, is
  evaluated and the strictest outcome applies (reject, then temperror,
  quarantine, fail, none, pass), so that two From fields, a list of
  addresses, a group or a field the parser chokes on cannot dodge a
  domain's policy.  A field the strict parser cannot read (too long, nested
  or grouped too deeply, unbalanced) is read leniently: each ``@domain``
  token names an author domain (see :func:`mailwarden.address.authors`).
  Authentication-Results gets one ``dmarc`` result, the strictest, with
  ``header.from`` the domain that decided; its reason names what was
  irregular and every author domain's result.  At most 10 author domains
  are evaluated.
* No author domain at all (no From, an empty group, no ``@domain``, more
  than 10 domains): ``permerror`` (``DMARC_BAD_FROM``), refused with ``550
  5.7.1`` unless ``reject_bad_from = no``.
* Policy discovery (RFC 9989 §4.10.1) by the DNS tree walk of
  :func:`mailwarden.orgdomain.tree_walk`, not the Public Suffix List:
  ``_dmarc.AUTHOR-DOMAIN``, then up the tree (at most eight names; past
  eight labels the walk jumps to the last seven), stopping at a record with
  ``psd=y`` or ``psd=n``.  The record applied is the author domain's own,
  else its organizational domain's, else that of the public suffix domain
  (``psd=y``) above it.  Every name the walk can read is asked for at once
  (one round trip); the answers are read in the walk's order, so a lookup
  that fails beyond where the walk stops changes nothing.  Several DMARC
  records at one name count as none; no record means ``dmarc=none``; a
  SERVFAIL or timeout the walk reads is ``temperror``.  The lookups count
  in the message's DNS budget and may use its decisive reserve.
* What is kept between messages (per engine): each tree walk by its
  starting name, at most WALK_CACHE_SIZE, until the first answer it read
  leaves the resolver's cache, never a walk a failed lookup cut short; the
  parsed records and the author domains of From fields by their text
  (pure parses, PARSE_CACHE_SIZE each, texts up to PARSE_CACHE_TEXT).
* Alignment: SPF and DKIM each strict (``s``: same domain) or relaxed
  (``r``: the same organizational domain, each found by its own tree walk,
  RFC 9989 §4.10.2).  The walks are made once per message.  An identifier
  that is neither the author's organizational domain nor under it cannot
  share it and costs no lookup; one whose walk fails is unknown, and a
  message whose only candidates are unknown is ``temperror``.
* The policy: ``p`` for the author domain's own record; for a subdomain of
  the policy domain, ``np`` when the author domain does not exist, else
  ``sp``, else ``p``.  Non-existence is RFC 9989's (§3.2.13, A.4): one
  query for the author domain (type A) answered NXDOMAIN; any record of any
  type makes it exist (NODATA), and a SERVFAIL or timeout there is
  ``temperror``.  Asked only when the record has ``np``.
* ``t=y`` (testing) applies the next weaker policy: reject -> quarantine
  -> none.  ``policy.dmarc`` is the policy after it (RFC 9989 §9.1).
* The transition from RFC 7489: ``pct``, ``rf`` and ``ri`` are historic
  (RFC 9989 §C.5.2) and sample nothing.  ``pct=0`` is what ``t=y`` replaces
  (Appendix A.6), so a record with ``pct=0`` and no ``t=`` is taken as
  ``t=y``; any other ``pct`` is ignored (the policy applies in full); a
  ``t=`` present wins over ``pct``.  The A-R comment says so when it applied
  (``pct=0 taken as t=y``, ``pct=50 ignored``, ``pct=0 ignored, t=n
  present``).  Unknown tags are ignored; ``psd`` and ``t`` values outside
  their syntax are read as their defaults (``u``, ``n``).
* A record without a valid ``p``, or with an ``sp`` or ``np`` that is not
  valid: with a syntactically valid ``rua`` URI it counts as ``p=none``;
  without, no DMARC processing (``dmarc=none``, RFC 9989 §4.10.1).
* Enforcement is local choice: a failing message whose policy is
  ``reject`` is refused (``550 5.7.1``), quarantined or only scored per
  ``on_reject``; ``quarantine`` per ``on_quarantine``.  Authenticated and
  trusted clients are not evaluated: their mail is ours, not inbound; nor
  are allow-listed clients, which the admin vouches for.
  When the result is ``fail`` only because an aligned SPF or DKIM
  identity had a temporary error, the result is ``temperror``.

Authentication-Results: ``dmarc=RESULT header.from=DOMAIN
policy.dmarc=POLICY (TAG=VALUE from _dmarc.NAME by tree walk[, t=y |
TRANSITION], dis=DISPOSITION)``: ``header.from`` and ``policy.dmarc`` as
RFC 9989 §9.1 registers them; the comment names the tag that applied
(``p``, ``sp`` or ``np``) and the name where the walk found the record.

Facts for reports (:class:`Facts`, one per evaluated author domain with a
policy; :meth:`History.record` gets them as ``facts=``):
``discovery_method`` (``treewalk``), ``record_name`` (``_dmarc.NAME``),
``policy_domain``, ``source`` (``author``, ``organizational``, ``psd``),
``organizational_domain``, ``psd`` (``y``, ``n``, ``u``), ``policy_tag``
(``p``, ``sp``, ``np``), ``requested``, ``testing`` (``t=y`` applied),
``policy`` (after ``t``), ``transition`` (how ``pct`` was taken, '' when
absent), ``historic`` (``pct``, ``rf``, ``ri`` present), ``walk`` (the
names asked).  The record itself (:class:`Record`) carries ``psd``, ``t``
(as applied), ``t_tag`` (as published), ``pct``, ``historic``,
``transition`` and ``assumed_none``.  The history rows get the facts their
schema has: ``discovery_method``, ``policy_tag``, ``testing`` (``t=`` as
published) and, for ``policy_test_mode``, the transition as its comment.  A message
whose failure is softened by ``t=y`` is recorded with the override
``policy_test_mode`` (RFC 9990's reason); nothing is ``sampled_out`` any
more.

History (``history``): each message with a pass or fail is recorded for
aggregate reports in the DMARC records of :mod:`mailwarden.dmarc_records`:
an SQLite file (WAL mode, one host) when ``history`` is a path, a Redis
server shared by several MX hosts when it is ``redis://HOST:PORT/DB`` (or
``rediss://``; timeouts, pool and key prefix from ``[state]``).  A write
error is logged, never fails the message.  Rows are deleted once
``mailwarden dmarc-report`` has put them in a report, and rows older than
``history_days`` whatever they are (a domain that asked for no reports, a
report never run): at most once an hour and at most ``PURGE_BATCH``
messages at a time, by the writer itself.

Local overrides (:meth:`DmarcCheck.local_override`): a failure whose
disposition would be reject or quarantine is lifted (disposition ``none``,
``DMARC_FAIL_OVERRIDDEN``, the result still ``fail``) when the ARC chain
passes from a sealer of ``[check.arc] trusted_sealers`` (the last of the
chain, ``ARC_PASS_TRUSTED``) whose ARC-Authentication-Results says
``dmarc=pass``, or a ``dkim=pass`` (``header.d``) or ``spf=pass``
(``smtp.mailfrom``) at or under the author's organizational domain
(``trusted_forwarder``); when the client is in ``override_networks`` or the
envelope sender domain in ``override_senders`` (``local_policy``); when the
message's one List-Id (the id inside ``<>``, lower case, at most
MAX_LIST_ID characters of ``a-z0-9._-``) is in ``override_list_ids``
(``mailing_list``).  Never for a From domain of ``[relay] local_domains``
unless ``override_local_domains``.  The ``policy.dmarc`` comment ends with
``overridden: WHY`` and the history row has the reason type and WHY as its
comment (``Facts.override_comment``).

Failure reports (RFC 9991, ``[dmarc_failure]``, off by default): each
evaluation of a domain whose record has ``ruf`` is offered to
:mod:`mailwarden.dmarc_failure`, which queues what its ``fo`` asks for and
sends it from a thread of its own, never in this callback.

INI keys (``[check.dmarc]``):
  enabled             yes
  tempfail_on_error   yes
  on_reject           reject      reject, quarantine or score
  on_quarantine       quarantine  quarantine or score
  reject_bad_from     yes         refuse a message with no author domain to evaluate
                                  (several domains are evaluated, never refused as such)
  history                         where evaluations are recorded: an SQLite file,
                                  or redis://HOST:PORT/DB shared by several MX hosts;
                                  empty: off
  history_days        14          days a row is kept at most (1 to 3650)
  override_networks               client networks whose failures are overridden
  override_senders                envelope sender domains (.example.org: and below)
  override_list_ids               List-Id values
  override_local_domains  no      overrides apply to our own From domains too
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Optional

from ..address import AddressProblem, authors, idna_to_ascii
from ..address import DomainSet
from ..options import (ValueProblem, Networks, opt, parse_bool, parse_choice, parse_domains,
                       parse_int, parse_list, parse_networks, parse_redis_url)
from ..dmarc_failure import outbox_for
from ..dmarc_records import Evaluation, RecordsError, is_redis, open_records
from ..dns import Status
from ..model import Action, Reply, Trust
from ..orgdomain import TreeWalk, dmarc_tags, is_dmarc_record, is_domain, tree_walk, walk_names
from ..ttlcache import TtlCache
from . import Check, CheckOptions

log = logging.getLogger("mailwarden.dmarc")

_POLICIES = ("none", "quarantine", "reject")
WALK_CACHE_SIZE = 4096          # tree walks kept per engine
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def parse_history(text: str) -> str:
    """``history``: an SQLite file, or a ``redis://``/``rediss://`` URL."""
    value = text.strip()
    if is_redis(value):
        value = parse_redis_url(value)
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ValueProblem("a redis:// history needs the Python package redis "
                               "(pip install 'mailwarden[redis]')") from None
    elif "://" in value:
        raise ValueProblem(f"expected an SQLite file or redis://HOST:PORT/DB, got {text!r}")
    return value


@dataclass(frozen=True)
class DmarcOptions(CheckOptions):
    on_reject: str = opt("reject", parse_choice("reject", "quarantine", "score"))
    on_quarantine: str = opt("quarantine", parse_choice("quarantine", "score"))
    reject_bad_from: bool = opt(True, parse_bool)
    history: str = opt("", parse_history)
    history_days: int = opt(14, parse_int(1, 3650))
    override_networks: Networks = opt(Networks(), parse_networks)
    override_senders: tuple = opt((), parse_domains)
    override_list_ids: tuple = opt((), lambda text: tuple(
        _list_id(item) for item in parse_list(text)))
    override_local_domains: bool = opt(False, parse_bool)
    # override_senders as a DomainSet, by resolve(); not an INI key
    senders: DomainSet = field(default=DomainSet())

    def resolve(self, error):
        return dataclasses.replace(self, senders=DomainSet.of(self.override_senders))


MAX_LIST_ID = 255                   # RFC 2919: a list-id fits a domain name


def _list_id(text: str) -> str:
    """A List-Id as compared: the text between the last ``<`` and ``>``
    when there are brackets, lower case; '' when it is longer than
    MAX_LIST_ID or holds anything but a list-id's characters."""
    value = text.strip()
    if "<" in value:
        value = value.rpartition("<")[2]
        if not value.endswith(">"):
            return ""
        value = value[:-1]
    value = value.strip().lower()
    if not value or len(value) > MAX_LIST_ID or not re.fullmatch(r"[a-z0-9._-]+", value):
        return ""
    return value

@dataclass(frozen=True)
class Record:
    """A DMARC policy record as RFC 9989 reads it, defaults filled in.

    ``domain``: where it was published (the policy domain).  ``t``: ``y``
    when the domain owner is testing (``t=y``, or ``pct=0`` without ``t=``,
    see :func:`parse_record`).  ``pct``: the RFC 7489 value as published
    (100 when absent); RFC 9989 removed the tag and it samples nothing.
    ``historic``: the removed tags (``pct``, ``rf``, ``ri``) the record
    still carries.  ``transition``: how ``pct`` was taken ('' when absent
    or 100).  ``assumed_none``: why ``p=none`` stands in for a missing or
    invalid policy ('' when the record has a valid one).
    """

    domain: str                   # where it was published
    p: str
    sp: Optional[str] = None
    np: Optional[str] = None
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    fo: str = "0"
    rua: str = ""
    ruf: str = ""
    psd: str = "u"
    t: str = "n"
    t_tag: str = ""               # t= as published (y or n), '' when absent or invalid
    historic: tuple = ()
    transition: str = ""
    assumed_none: str = ""

    @property
    def testing(self) -> bool:
        return self.t == "y"


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+")     # RFC 3986 scheme ":" and more
_HISTORIC = ("pct", "rf", "ri")                     # RFC 9989 §C.5.2: removed tags


def _has_report_uri(rua: str) -> bool:
    """RFC 9989 §4.10.1: ``rua`` holds at least one syntactically valid URI
    (an RFC 7489 size suffix ``!10m`` is obsolete syntax, allowed)."""
    return any(_URI.fullmatch(u.strip().split("!", 1)[0]) for u in rua.split(","))


# what is kept of pure parses (records, From fields): entries, and the
# longest text kept (a longer one is parsed each time: memory stays bounded)
PARSE_CACHE_SIZE = 1024
PARSE_CACHE_TEXT = 2048


def parse_record(domain: str, text: str) -> Optional[Record]:
    """See :func:`_parse_record`; records up to PARSE_CACHE_TEXT
    characters are kept (the last PARSE_CACHE_SIZE by name and text): the
    same records come back message after message, and a Record is
    immutable."""
    if len(text) + len(domain) <= PARSE_CACHE_TEXT:
        return _parse_record_kept(domain, text)
    return _parse_record(domain, text)


def _parse_record(domain: str, text: str) -> Optional[Record]:
    """The record, or None when RFC 9989 applies no DMARC processing with it.

    * Tags outside RFC 9989's registry are ignored; a value outside its
      syntax is discarded in favour of the default (``psd``, ``t``,
      ``adkim``, ``aspf``).
    * No valid ``p``, or an ``sp`` or ``np`` that is not valid (§4.10.1):
      with a syntactically valid ``rua`` URI the record counts as ``p=none``
      (no ``sp``, no ``np``); without one, no DMARC processing (None).
    * The transition from RFC 7489: ``pct``, ``rf`` and ``ri`` are no
      longer part of the protocol (§C.5.2) and sample nothing.  ``t=y`` is
      what ``pct=0`` was used for (Appendix A.6), so a record with
      ``pct=0`` and no valid ``t=`` is taken as ``t=y``; any other ``pct``
      is ignored (the policy applies in full, as ``pct=100`` and ``t=n``
      meant), and a ``t=`` present always wins over ``pct``.
    """
    if not is_dmarc_record(text):
        return None
    tags = dmarc_tags(text)
    rua = tags.get("rua", "")
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or None
    np = tags.get("np", "").lower() or None
    assumed = ""
    if p not in _POLICIES or sp not in _POLICIES + (None,) or np not in _POLICIES + (None,):
        if not _has_report_uri(rua):
            return None
        bad = ("p" if p not in _POLICIES else "sp" if sp not in _POLICIES + (None,) else "np")
        assumed = f"no valid {bad}= and a rua=: taken as p=none"
        p, sp, np = "none", None, None
    psd = tags.get("psd", "u").lower()
    t = tags.get("t", "").lower()
    historic = tuple(tag for tag in _HISTORIC if tag in tags)
    pct, transition = 100, ""
    if "pct" in tags:
        try:
            pct = int(tags["pct"])
        except ValueError:
            pct = 100
        if not 0 <= pct <= 100:
            pct = 100
        if t in ("y", "n"):
            transition = f"pct={pct} ignored, t={t} present" if pct != 100 else ""
        elif pct == 0:
            t, transition = "y", "pct=0 taken as t=y"
        elif pct < 100:
            transition = f"pct={pct} ignored"
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return Record(domain=domain, p=p, sp=sp, np=np, pct=pct,
                  adkim=adkim if adkim in ("r", "s") else "r",
                  aspf=aspf if aspf in ("r", "s") else "r",
                  fo=tags.get("fo", "0"), rua=rua, ruf=tags.get("ruf", ""),
                  psd=psd if psd in ("y", "n", "u") else "u",
                  t="y" if t == "y" else "n", t_tag=tags.get("t", "").lower()
                  if tags.get("t", "").lower() in ("y", "n") else "", historic=historic,
                  transition=transition, assumed_none=assumed)


_parse_record_kept = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(_parse_record)


@dataclass(frozen=True)
class Facts:
    """What RFC 9989's evaluation of one author domain found: the facts an
    aggregate report (RFC 9990) or a failure report (RFC 9991) states.
    ``DmarcCheck.evaluate_author`` returns them next to the result; the
    history writer receives them (:meth:`History.record`, ``facts=``).

    ``discovery_method``: ``treewalk`` (RFC 9990's name; ``psl`` was RFC
    7489's method, never used here).  ``record_name``: ``_dmarc.NAME``
    where the policy record was found; ``policy_domain``: that NAME.
    ``source``: ``author``, ``organizational`` or ``psd`` (whose record it
    is).  ``organizational_domain``: the author domain's, by the tree walk
    ('' when a lookup above the domain's own record failed).  ``psd``:
    the policy record's ``psd`` (``y``, ``n``, ``u``).
    ``policy_tag``: ``p``, ``sp`` or ``np``, the tag that applied;
    ``requested``: its value.  ``testing``: ``t=y`` applied (or ``pct=0``
    taken as ``t=y``); ``policy``: the policy after ``t`` (what
    ``policy.dmarc`` says).  ``transition``: how an RFC 7489 ``pct`` was
    taken ('' when none).  ``historic``: removed tags the record carries.
    ``walk``: the names the tree walk asked for.
    """

    header_from: str
    record_name: str
    policy_domain: str
    source: str
    organizational_domain: str
    psd: str
    policy_tag: str
    requested: str
    testing: bool
    policy: str
    transition: str = ""
    historic: tuple = ()
    walk: tuple = ()
    discovery_method: str = "treewalk"
    override_comment: str = ""          # why a local override applied (history)

    def comment(self, disposition: str) -> str:
        """The A-R comment of ``policy.dmarc``: how the policy was found,
        which tag applied, and the transition rules that did."""
        parts = [f"{self.policy_tag}={self.requested} from {self.record_name} by tree walk"]
        if self.testing:
            parts.append(self.transition or "t=y")
        elif self.transition:
            parts.append(self.transition)
        parts.append(f"dis={disposition}")
        return ", ".join(parts)


class _TempError(Exception):
    pass


def _normalize(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return idna_to_ascii(domain)
    except AddressProblem:
        return domain


# author domains evaluated per message at most; a From naming more is refused
# as a bad From (each costs up to five lookups)
MAX_AUTHOR_DOMAINS = 10


def from_domains(values: list) -> tuple:
    """See :func:`_from_domains`; fields of up to PARSE_CACHE_TEXT
    characters in all are kept (the last PARSE_CACHE_SIZE): the answer
    depends on their text alone."""
    values = tuple(values)
    if sum(map(len, values)) <= PARSE_CACHE_TEXT:
        return _from_domains_kept(values)
    return _from_domains(values)


def _from_domains(values: tuple) -> tuple:
    """(domains, note, problem) of the RFC5322.From field(s).

    ``domains``: every author domain DMARC evaluates (RFC 7489 §6.6.1: each
    one, the strictest policy applies), read leniently where the field
    cannot be parsed (see :func:`mailwarden.address.authors`); empty, with
    ``problem`` saying why, when none can be found.  ``note``: what is
    irregular about the field(s) ('' for one From with one address).
    """
    found = authors(values)
    note = found.irregular()
    if not found.fields:
        return (), note, "no From header field"
    if found.overflow or len(found.domains) > MAX_AUTHOR_DOMAINS:
        return (), note, f"more than {MAX_AUTHOR_DOMAINS} author domains in From"
    domains = tuple(d for d in found.domains if is_domain(d, underscore=True, multi_label=True))
    if not domains:
        if found.domains:
            return (), note, f"From domain {found.domains[0]!r} is not a domain name"
        return (), note, found.unreadable or "no author domain in From"
    return domains, note, ""


_from_domains_kept = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(_from_domains)


def _severity(r) -> int:
    """How strict one author domain's outcome is: the strictest decides."""
    if r.reply is not None and r.reply.action == Action.REJECT:
        return 6
    if r.result == "temperror":
        return 5
    if r.quarantine:
        return 4
    if r.result == "fail":
        return 2 if r.symbol == "DMARC_FAIL_NONE" else 3
    return 1 if r.result == "none" else 0


class DmarcCheck(Check):
    name = "dmarc"
    replayable = True              # pure but for its lookups (see checks/__init__)
    method = "dmarc"
    Options = DmarcOptions
    requires = ("spf", "dkim", "arc")
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.AUTHENTICATED, Trust.TRUSTED})
    fail_closed = True             # a crash tempfails, whatever temperror_action
    symbols = {
        "DMARC_PASS": 0.0,
        "DMARC_NONE": 0.0,
        "DMARC_FAIL_NONE": 0.5,
        "DMARC_FAIL_OVERRIDDEN": 0.5,
        "DMARC_FAIL_QUARANTINE": 4.0,
        "DMARC_FAIL_REJECT": 6.0,
        "DMARC_TEMPERROR": 0.0,
        "DMARC_BAD_FROM": 2.0,
    }

    def __init__(self, options, services):
        super().__init__(options, services)
        self.history = (History(options.history, options.history_days,
                                state=getattr(getattr(services, "config", None), "state", None))
                        if options.history else None)
        # failure reports (RFC 9991): None unless [dmarc_failure] enabled
        self.failure = outbox_for(services)
        # tree walks by starting name, until the first answer they read expires
        self.walks = TtlCache(WALK_CACHE_SIZE)

    # -- the tree walk (RFC 9989 §4.10) ------------------------------------------

    @staticmethod
    def _txt(ctx, qname: str, failures: dict, expires: Optional[list] = None):
        """The TXT strings at ``qname``; None, its reason kept in
        ``failures``, when the lookup failed.  ``expires[0]``: lowered to
        when this answer leaves the resolver's cache."""
        answer = ctx.dns.query(qname, "TXT", decisive=True)
        if answer.temporary:
            failures[qname[len("_dmarc."):]] = answer.describe()
            return None
        if expires is not None:
            expires[0] = min(expires[0], ctx.dns.resolver.expiry(qname, "TXT", answer))
        return list(answer.records) if answer.ok else []

    @staticmethod
    def prefetch(ctx, domains) -> None:
        """Start the lookups of every name the walks of ``domains`` can
        read, at once: they do not depend on each other, only on which
        answers the walk goes on to read."""
        names = dict.fromkeys(n for d in domains for n in walk_names(d))
        if names:
            ctx.dns.query_many([(f"_dmarc.{n}", "TXT") for n in names], decisive=True)

    def walk(self, ctx, domain: str, walks: dict) -> TreeWalk:
        """The tree walk from ``domain``, once per message (``walks``).
        ``walks[None]``: name -> why its lookup failed."""
        domain = _normalize(domain)
        if domain not in walks:
            now = ctx.dns.clock()
            walk = self.walks.get(domain, now)
            if walk is None:
                self.prefetch(ctx, (domain,))
                failures = walks.setdefault(None, {})
                expires = [float("inf")]
                walk = tree_walk(domain,
                                 lambda qname: self._txt(ctx, qname, failures, expires))
                if not walk.failed and expires[0] != float("inf"):
                    self.walks.put(domain, walk, expires[0], now)
            walks[domain] = walk
        return walks[domain]

    def organizational(self, ctx, domain: str, walks: dict) -> str:
        """The organizational domain of ``domain`` by its tree walk;
        :class:`_TempError` when a lookup the walk needed failed."""
        walk = self.walk(ctx, domain, walks)
        if walk.failed:
            raise _TempError(f"_dmarc.{walk.failed}: {walks[None].get(walk.failed, 'failed')}")
        return walk.organizational

    def aligned(self, ctx, identifier: str, author: str, mode: str, walks: dict):
        """True, False, or None when a lookup it needed failed.

        Strict: the same name.  Relaxed (RFC 9989 §4.10.2): the same
        organizational domain, each by its tree walk; an identifier that is
        not the author's organizational domain or under it cannot have the
        same one (an organizational domain is always the name itself or a
        parent), so it costs no walk.
        """
        identifier, author = _normalize(identifier), _normalize(author)
        if identifier == author:
            return True
        if mode == "s":
            return False
        try:
            org = self.organizational(ctx, author, walks)
            if identifier != org and not identifier.endswith("." + org):
                return False
            return self.organizational(ctx, identifier, walks) == org
        except _TempError:
            return None

    def _nonexistent(self, ctx, domain: str) -> bool:
        """RFC 9989 §3.2.13 and A.4: a name does not exist when a query for
        it gets NXDOMAIN (any record of any type makes it exist; RFC 8020:
        NXDOMAIN covers every type).  One query, of type A."""
        answer = ctx.dns.query(domain, "A", decisive=True)
        if answer.temporary:
            raise _TempError(f"existence of {domain}: {answer.describe()}")
        return answer.status is Status.NXDOMAIN

    # -- the check -------------------------------------------------------------

    def on_eom(self, ctx):
        domains, note, problem = from_domains(ctx.msg.header_texts("From"))
        if not domains:
            reply = None
            if self.options.reject_bad_from:
                reply = Reply(Action.REJECT, 550, "5.7.1",
                              "Message needs a From header field with an author domain")
            ctx.log.info("dmarc: no author domain to evaluate: %s%s", problem,
                         f" ({note})" if note else "")
            return self.result("permerror", "DMARC_BAD_FROM", problem, reply=reply)
        # every name the author domains' walks can read, at once (those not kept)
        now = ctx.dns.clock()
        self.prefetch(ctx, [n for n in map(_normalize, domains)
                            if self.walks.get(n, now) is None])
        walks: dict = {}                # the message's tree walks, by starting name
        rows: list = []                 # history, written once every lookup is done
        outcomes = [(domain, self.evaluate_author(ctx, domain, walks, rows)[0])
                    for domain in domains]
        if self.history is not None:
            for row in rows:
                self.history.record(ctx, *row[:-1], facts=row[-1])
        if self.failure is not None and rows:
            # queued for the sender thread of mailwarden.dmarc_failure, never sent here
            self.failure.offer(ctx, rows, dict(outcomes),
                               lambda a, b, mode: bool(self.aligned(ctx, a, b, mode, walks)))
        if len(outcomes) == 1 and not note:
            return outcomes[0][1]
        # RFC 9989 §5.3.1 allows going on with several author domains: every
        # one is checked and the strictest outcome applies; A-R carries that
        # one, its header.from the domain that decided, the others are named
        # in its reason
        worst = max(outcomes, key=lambda o: _severity(o[1]))[1]
        parts = [worst.reason, note]
        if len(outcomes) > 1:
            parts.append("author domains " + ", ".join(f"{d}={r.result}" for d, r in outcomes))
        reason = "; ".join(p for p in parts if p)
        ctx.log.info("dmarc: %s", reason)
        return dataclasses.replace(worst, reason=reason)

    def evaluate_author(self, ctx, domain: str, walks: dict, rows: list) -> tuple:
        """(result, facts) for one author domain; facts None when no
        policy applied (none, temperror)."""
        domain = _normalize(domain)
        walk = self.walk(ctx, domain, walks)
        if walk.failed and not walk.policy_record:
            why = walks[None].get(walk.failed, "failed")
            return self.result("temperror", "DMARC_TEMPERROR",
                               f"policy lookup: _dmarc.{walk.failed}: {why}",
                               properties=(("header.from", domain),)), None
        record = (parse_record(walk.policy_domain, walk.policy_record)
                  if walk.policy_record else None)
        if record is None:
            reason = ""
            if walk.policy_record:
                reason = (f"_dmarc.{walk.policy_domain} has no valid policy and no rua=: "
                          "no DMARC processing")
            return self.result("none", "DMARC_NONE", reason,
                               properties=(("header.from", domain),)), None
        try:
            return self._evaluate(ctx, domain, walk, record, walks, rows)
        except _TempError as exc:
            return self.result("temperror", "DMARC_TEMPERROR", str(exc),
                               properties=(("header.from", domain),)), None

    def _evaluate(self, ctx, domain: str, walk: TreeWalk, record: Record, walks: dict,
                  rows: list) -> tuple:
        spf_identities = []             # (domain, result) of the MAIL FROM identity
        for r in ctx.results_of("spf"):
            if r.mailfrom:
                spf_identities.append((r.mailfrom.rpartition("@")[2], r.result))
        dkim_identities = []            # (d=, s=, result)
        for r in ctx.results_of("dkim"):
            if r.header_d:
                dkim_identities.append((r.header_d, r.header_s, r.result))

        # RFC 9989 §4.10.2: only authenticated identifiers (a pass) are
        # aligned; one whose lookup had a temporary error is unknown
        spf_align = [self.aligned(ctx, d, domain, record.aspf, walks)
                     for d, res in spf_identities if res == "pass"]
        dkim_align = [self.aligned(ctx, d, domain, record.adkim, walks)
                      for d, _s, res in dkim_identities if res == "pass"]
        spf_aligned, dkim_aligned = True in spf_align, True in dkim_align

        if walk.source == "author":
            tag = "p"
        elif record.np is not None and self._nonexistent(ctx, domain):
            tag = "np"
        elif record.sp is not None:
            tag = "sp"
        else:
            tag = "p"
        requested = {"p": record.p, "sp": record.sp, "np": record.np}[tag]
        # t=y: the next weaker policy (RFC 9989 §4.7)
        policy = _MILDER[requested] if record.testing else requested
        facts = Facts(header_from=domain, record_name=f"_dmarc.{walk.policy_domain}",
                      policy_domain=walk.policy_domain, source=walk.source,
                      organizational_domain=walk.organizational, psd=record.psd,
                      policy_tag=tag, requested=requested, testing=record.testing,
                      policy=policy, transition=record.transition,
                      historic=record.historic, walk=walk.asked)

        override = ""
        if spf_aligned or dkim_aligned:
            result, disposition = "pass", "none"
        else:
            unsure = (None in spf_align or None in dkim_align
                      or any(res == "temperror" and self._maybe_aligned(d, walk, record.aspf)
                             for d, res in spf_identities)
                      or any(res == "temperror" and self._maybe_aligned(d, walk, record.adkim)
                             for d, _s, res in dkim_identities))
            if unsure:
                raise _TempError("an aligned SPF or DKIM identity had a temporary error")
            result, disposition = "fail", policy
            if record.testing and requested != "none":
                override = "policy_test_mode"

        overridden = None
        if result == "fail" and disposition != "none":
            overridden = self.local_override(ctx, domain, facts.organizational_domain or domain)
        if overridden:
            override, why = overridden
            disposition = "none"
            facts = dataclasses.replace(facts, override_comment=why)
        comment = facts.comment(disposition) + (f", overridden: {facts.override_comment}"
                                                if overridden else "")
        props = (("header.from", domain), ("policy.dmarc", policy, comment))
        if result == "pass":
            out = self.result("pass", "DMARC_PASS", properties=props)
        else:
            reply, quarantine = None, ""
            action = {"reject": self.options.on_reject,
                      "quarantine": self.options.on_quarantine}.get(disposition, "score")
            if action == "reject":
                reply = Reply(Action.REJECT, 550, "5.7.1",
                              f"Message rejected: it fails the DMARC policy of {domain}")
            elif action == "quarantine":
                quarantine = f"DMARC {tag}={policy} of {domain}"
            elif disposition != "none":
                override = override or "local_policy"
            reason = f"not aligned with {domain}" + (" (testing: t=y)" if record.testing
                                                     and requested != "none" else "")
            if overridden:
                reason += f"; overridden: {facts.override_comment}"
            symbol = "DMARC_FAIL_OVERRIDDEN" if overridden else "DMARC_FAIL_" + disposition.upper()
            out = self.result("fail", symbol, reason,
                              properties=props, reply=reply, quarantine=quarantine)
            if action == "score":
                disposition = "none"       # what was applied on DMARC's account
        rows.append((domain, record, result, disposition, override,
                     spf_aligned, dkim_aligned, spf_identities, dkim_identities, facts))
        return out, facts

    def local_override(self, ctx, domain: str, org: str):
        """(RFC 9990 reason type, comment) when a local override lifts the
        failing DMARC policy of ``domain`` (its organizational domain
        ``org``), else None.  First the trusted ARC sealer, then
        ``override_networks``, ``override_senders``, ``override_list_ids``.
        Never for a From domain of ours unless ``override_local_domains``."""
        options = self.options
        config = getattr(self.services, "config", None)
        local = config.relay.local if config is not None else DomainSet()
        if domain in local and not options.override_local_domains:
            return None
        sealer = _trusted_sealer(ctx, org)
        if sealer:
            return "trusted_forwarder", f"trusted ARC sealer {sealer}"
        ip = ctx.conn.client_ip
        if ip is not None and ip in options.override_networks:
            return "local_policy", f"client {ip} in override_networks"
        sender = ctx.msg.mail_from or ""
        sender_domain = _normalize(sender.rpartition("@")[2]) if "@" in sender else ""
        if sender_domain and sender_domain in options.senders:
            return "local_policy", f"envelope sender domain {sender_domain} in override_senders"
        if options.override_list_ids:
            values = ctx.msg.header_texts("List-Id")
            # one List-Id field (RFC 2919); several are the sender's confusion
            if len(values) == 1 and len(values[0]) <= 4 * MAX_LIST_ID:
                list_id = _list_id(values[0])
                if list_id and list_id in options.override_list_ids:
                    return "mailing_list", f"List-Id {list_id} in override_list_ids"
        return None

    @staticmethod
    def _maybe_aligned(identifier: str, walk: TreeWalk, mode: str) -> bool:
        """Whether an identifier whose check had a temporary error could have
        aligned: strict, the same name; relaxed, a name at or under the
        author's organizational domain (its walk is not worth the lookups:
        the identifier was not authenticated anyway)."""
        identifier = _normalize(identifier)
        if identifier == walk.domain:
            return True
        org = walk.organizational
        if mode == "r" and not org:
            return True                 # the organizational domain is not known
        return mode == "r" and (identifier == org or identifier.endswith("." + org))


def _trusted_sealer(ctx, org: str) -> str:
    """The sealer that handed us the message (the last of a passing ARC
    chain) when ``[check.arc] trusted_sealers`` has it (the arc check's
    ``ARC_PASS_TRUSTED``) and its ARC-Authentication-Results says the
    message passed there: ``dmarc=pass``, or a ``dkim=pass`` whose
    ``header.d`` or an ``spf=pass`` whose ``smtp.mailfrom`` is at or under
    the author's organizational domain ``org``; else ''."""
    for arc in ctx.results_of("arc"):
        if not arc.arc_valid or arc.symbol != "ARC_PASS_TRUSTED" or not arc.arc_hops:
            continue
        hop = arc.arc_hops[-1]
        if (hop.instance != len(arc.arc_chain) or hop.sealer != arc.arc_chain[-1]
                or not is_domain(hop.sealer)):
            continue
        if hop.result_of("dmarc") == "pass" or _hop_aligned(hop, org):
            return hop.sealer
    return ""


def _hop_aligned(hop, org: str) -> bool:
    """A dkim or spf pass at ``hop`` for ``org`` or a name under it."""
    return any(d == org or d.endswith("." + org)
               for method in ("dkim", "spf") for d in hop.passed_domains(method))


# --------------------------------------------------------------------------
# history for aggregate reports (kept by mailwarden.dmarc_records)


class History:
    """The check's writer: one message's evaluation, from what the check
    knows, handed to the records ``[check.dmarc] history`` names."""

    def __init__(self, target: str, days: int = 14, state=None):
        self.path = target
        self.records = open_records(target, days, state=state)

    def record(self, ctx, domain, record: Record, result, disposition, override,
               spf_aligned, dkim_aligned, spf_identities, dkim_identities,
               facts: Optional[Facts] = None) -> None:
        """``facts``: RFC 9989's facts of the evaluation (see :class:`Facts`).
        The records take ``discovery_method``, ``policy_tag``, the record's
        ``t=`` as published (``testing``) and, when ``t=y`` softened the
        policy because of ``pct=0``, that transition as the override's
        comment; the other facts are not in their schema."""
        msg = ctx.msg
        sender = msg.mail_from
        rcpt = msg.rcpts[0] if msg.rcpts else ""
        scope = "mfrom" if sender else "helo"
        evaluation = Evaluation(
            received=int(ctx.now()), queue_id=msg.queue_id or "",
            source_ip=str(ctx.conn.client_ip or ""), header_from=domain,
            envelope_from=sender.rpartition("@")[2].lower() if sender else "",
            envelope_to=rcpt.rpartition("@")[2].lower(), policy_domain=record.domain,
            p=record.p, sp=record.sp, np=record.np, pct=record.pct, adkim=record.adkim,
            aspf=record.aspf, fo=record.fo, rua=record.rua, result=result,
            dkim_aligned=bool(dkim_aligned), spf_aligned=bool(spf_aligned),
            disposition=disposition, override=override,
            dkim=tuple((d, s, r) for d, s, r in dkim_identities),
            spf=tuple((d, scope, r) for d, r in spf_identities),
            discovery_method=facts.discovery_method if facts else "",
            testing=record.t_tag or "n", policy_tag=facts.policy_tag if facts else "",
            override_comment=(facts.transition if facts and override == "policy_test_mode"
                              else facts.override_comment if facts else ""))
        try:
            self.records.record(evaluation)
        except RecordsError as exc:
            ctx.log.warning("dmarc history %s", exc)

    def close(self) -> None:
        self.records.close()


CHECKS = (DmarcCheck,)
