"""dmarc: DMARC (RFC 7489) on the SPF and DKIM results, with ``np`` (DMARCbis).

It reads the results of the ``spf`` and ``dkim`` checks (never their
objects): the MAIL FROM identity's SPF result (the HELO identity for the
null sender, RFC 7489 §4.1) and every DKIM signature's result and ``d=``.

* The author domains (RFC 7489 §6.6.1, the same in DMARCbis): every domain
  of every address in every From field, groups included, is evaluated and
  the strictest outcome applies (reject, then temperror, quarantine, fail,
  none, pass), so that two From fields, a list of addresses, a group or a
  field the parser chokes on cannot dodge a domain's policy.  A field the
  strict parser cannot read (too long, nested or grouped too deeply,
  unbalanced) is read leniently: each ``@domain`` token names an author
  domain (see :func:`mailwarden.address.authors`).  Authentication-Results
  gets one ``dmarc`` result, the strictest, with ``header.from`` the domain
  that decided; its reason names what was irregular and every author
  domain's result.  At most 10 author domains are evaluated.
* No author domain at all (no From, an empty group, no ``@domain``, more
  than 10 domains): ``permerror`` (``DMARC_BAD_FROM``), refused with ``550
  5.7.1`` unless ``reject_bad_from = no``.
* Policy discovery (RFC 7489 §6.6.3): ``_dmarc.FROM-DOMAIN``, then
  ``_dmarc.ORGANIZATIONAL-DOMAIN``.  The organizational domain comes from
  :mod:`mailwarden.orgdomain`: the Public Suffix List (tldextract's bundled
  snapshot, never downloaded), its ICANN and private sections, so tenants
  of a private suffix (``a.eu.org``, ``b.eu.org``) are organizations of
  their own; a name under a TLD the list does not know takes the list's
  default rule ``*``, the last label is the suffix.  Several
  DMARC records, or none, mean ``dmarc=none``; a SERVFAIL or timeout is
  ``temperror``.
* Alignment: SPF and DKIM each strict (``s``: same domain) or relaxed
  (``r``: same organizational domain), per ``aspf`` and ``adkim``.
* The policy: ``p`` for the From domain itself; for a subdomain, ``np``
  when the From domain does not exist (NXDOMAIN for A, AAAA and MX), else
  ``sp``, else ``p``.  ``pct`` samples failing messages; one not sampled is
  treated one step milder (reject -> quarantine -> none, RFC 7489 §6.6.4).
* Enforcement is local choice: a failing message whose policy is
  ``reject`` is refused (``550 5.7.1``), quarantined or only scored per
  ``on_reject``; ``quarantine`` per ``on_quarantine``.  Authenticated and
  trusted clients are not evaluated: their mail is ours, not inbound; nor
  are allow-listed clients, which the admin vouches for.
  When the result is ``fail`` only because an aligned SPF or DKIM
  identity had a temporary error, the result is ``temperror``.

Authentication-Results: ``dmarc=RESULT header.from=DOMAIN
policy.dmarc=POLICY (p= sp= np= pct= dis=)``.

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
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Optional

from ..address import AddressProblem, authors, idna_to_ascii
from ..options import ValueProblem, opt, parse_bool, parse_choice, parse_int, parse_redis_url
from ..dmarc_failure import outbox_for
from ..dmarc_records import Evaluation, RecordsError, is_redis, open_records
from ..dns import Status
from ..model import Action, Reply, Trust
from ..orgdomain import is_dmarc_record, is_domain, organizational
from . import Check, CheckOptions

log = logging.getLogger("mailwarden.dmarc")

_POLICIES = ("none", "quarantine", "reject")
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


@dataclass(frozen=True)
class Record:
    """A DMARC policy record, defaults filled in (RFC 7489 §6.3)."""

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


def parse_record(domain: str, text: str) -> Optional[Record]:
    """The record, or None when it is no usable DMARC record."""
    if not is_dmarc_record(text):
        return None
    tags = {}
    for part in text.split(";")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    rua = tags.get("rua", "")
    p = tags.get("p", "").lower()
    sp = tags.get("sp", "").lower() or None
    if p not in _POLICIES or (sp is not None and sp not in _POLICIES):
        # RFC 7489 §6.6.3 step 6: with a usable rua, act as if p=none
        if not any(u.strip().lower().startswith("mailto:") for u in rua.split(",")):
            return None
        p, sp = "none", None
    np = tags.get("np", "").lower() or None
    if np not in _POLICIES:
        np = None
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return Record(domain=domain, p=p, sp=sp, np=np, pct=pct,
                  adkim=adkim if adkim in ("r", "s") else "r",
                  aspf=aspf if aspf in ("r", "s") else "r",
                  fo=tags.get("fo", "0"), rua=rua, ruf=tags.get("ruf", ""))


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
    requires = ("spf", "dkim")
    skip_for = frozenset({Trust.ALLOWLISTED, Trust.AUTHENTICATED, Trust.TRUSTED})
    fail_closed = True             # a crash tempfails, whatever temperror_action
    symbols = {
        "DMARC_PASS": 0.0,
        "DMARC_NONE": 0.0,
        "DMARC_FAIL_NONE": 0.5,
        "DMARC_FAIL_QUARANTINE": 4.0,
        "DMARC_FAIL_REJECT": 6.0,
        "DMARC_TEMPERROR": 0.0,
        "DMARC_BAD_FROM": 2.0,
    }

    def __init__(self, options, services):
        super().__init__(options, services)
        # tests replace it for deterministic pct sampling
        self.random = random.Random()
        self.history = (History(options.history, options.history_days,
                                state=getattr(getattr(services, "config", None), "state", None))
                        if options.history else None)
        # failure reports (RFC 9991): None unless [dmarc_failure] enabled
        self.failure = outbox_for(services)

    # -- organizational domain -------------------------------------------------

    def organizational(self, domain: str) -> str:
        return organizational(domain)

    def aligned(self, a: str, b: str, mode: str) -> bool:
        a, b = _normalize(a), _normalize(b)
        if mode == "s":
            return a == b
        return a == b or self.organizational(a) == self.organizational(b)

    # -- discovery -------------------------------------------------------------

    def _fetch(self, ctx, domain: str) -> Optional[Record]:
        answer = ctx.dns.query(f"_dmarc.{domain}", "TXT", decisive=True)
        if answer.temporary:
            raise _TempError(answer.describe())
        texts = [t for t in answer.records if is_dmarc_record(t)] if answer.ok else []
        if len(texts) != 1:
            return None
        return parse_record(domain, texts[0])

    def discover(self, ctx, domain: str) -> tuple:
        """(record, organizational domain); RFC 7489 §6.6.3."""
        org = self.organizational(domain)
        answer = ctx.dns.query(f"_dmarc.{domain}", "TXT", decisive=True)
        if answer.temporary:
            raise _TempError(answer.describe())
        texts = [t for t in answer.records if is_dmarc_record(t)] if answer.ok else []
        if len(texts) > 1:
            return None, org            # several records: no DMARC processing
        if texts:
            return parse_record(domain, texts[0]), org
        if org == domain:
            return None, org
        return self._fetch(ctx, org), org

    def _nonexistent(self, ctx, domain: str) -> bool:
        answers = ctx.dns.query_many([(domain, "A"), (domain, "AAAA"), (domain, "MX")],
                                     decisive=True)
        return all(a.status is Status.NXDOMAIN for a in answers)

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
        if len(domains) > 1:
            # start every policy lookup at once rather than one domain after another
            ctx.dns.query_many([(f"_dmarc.{d}", "TXT") for d in domains], decisive=True)
        rows: list = []                 # history, written once every lookup is done
        outcomes = [(domain, self._author(ctx, domain, rows)) for domain in domains]
        if self.history is not None:
            for row in rows:
                self.history.record(ctx, *row)
        if self.failure is not None and rows:
            # queued for the sender thread of mailwarden.dmarc_failure, never sent here
            self.failure.offer(ctx, rows, dict(outcomes), self.aligned)
        if len(outcomes) == 1 and not note:
            return outcomes[0][1]
        # RFC 7489 §6.6.1: every author domain is checked and the strictest
        # outcome applies; A-R carries that one, its header.from the domain
        # that decided, the others are named in its reason
        worst = max(outcomes, key=lambda o: _severity(o[1]))[1]
        parts = [worst.reason, note]
        if len(outcomes) > 1:
            parts.append("author domains " + ", ".join(f"{d}={r.result}" for d, r in outcomes))
        reason = "; ".join(p for p in parts if p)
        ctx.log.info("dmarc: %s", reason)
        return dataclasses.replace(worst, reason=reason)

    def _author(self, ctx, domain: str, rows: list):
        """The DMARC outcome for one author domain."""
        try:
            record, org = self.discover(ctx, domain)
        except _TempError as exc:
            return self.result("temperror", "DMARC_TEMPERROR", f"policy lookup: {exc}",
                               properties=(("header.from", domain),))
        if record is None:
            return self.result("none", "DMARC_NONE", "",
                               properties=(("header.from", domain),))
        try:
            return self._evaluate(ctx, domain, org, record, rows)
        except _TempError as exc:
            return self.result("temperror", "DMARC_TEMPERROR", str(exc),
                               properties=(("header.from", domain),))

    def _evaluate(self, ctx, domain: str, org: str, record: Record, rows: list):
        spf_identities = []             # (domain, result) of the MAIL FROM identity
        for r in ctx.results_of("spf"):
            if r.mailfrom:
                spf_identities.append((r.mailfrom.rpartition("@")[2], r.result))
        dkim_identities = []            # (d=, s=, result)
        for r in ctx.results_of("dkim"):
            if r.header_d:
                dkim_identities.append((r.header_d, r.header_s, r.result))

        spf_aligned = any(res == "pass" and self.aligned(d, domain, record.aspf)
                          for d, res in spf_identities)
        dkim_aligned = any(res == "pass" and self.aligned(d, domain, record.adkim)
                           for d, _s, res in dkim_identities)

        if record.domain == domain:
            policy, which = record.p, "p"
        elif record.np is not None and self._nonexistent(ctx, domain):
            policy, which = record.np, "np"
        elif record.sp is not None:
            policy, which = record.sp, "sp"
        else:
            policy, which = record.p, "p"

        override = ""
        if spf_aligned or dkim_aligned:
            result, disposition = "pass", "none"
        else:
            unsure = (any(res == "temperror" and self.aligned(d, domain, record.aspf)
                          for d, res in spf_identities)
                      or any(res == "temperror" and self.aligned(d, domain, record.adkim)
                             for d, _s, res in dkim_identities))
            if unsure:
                raise _TempError("an aligned SPF or DKIM identity had a temporary error")
            result, disposition = "fail", policy
            if policy != "none" and record.pct < 100 and \
                    not self.random.random() * 100 < record.pct:
                disposition, override = _MILDER[policy], "sampled_out"

        comment = ("" if which == "p" else f"by {which}: ") + (
            f"p={record.p} sp={record.sp or '-'} np={record.np or '-'} "
            f"pct={record.pct} dis={disposition}")
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
                quarantine = f"DMARC {which}={policy} of {domain}"
            elif disposition != "none":
                override = override or "local_policy"
            reason = f"not aligned with {domain}" + (" (sampled out by pct)"
                                                     if override == "sampled_out" else "")
            out = self.result("fail", "DMARC_FAIL_" + disposition.upper(), reason,
                              properties=props, reply=reply, quarantine=quarantine)
            if action == "score":
                disposition = "none"       # what was applied on DMARC's account
        rows.append((domain, record, result, disposition, override,
                     spf_aligned, dkim_aligned, spf_identities, dkim_identities))
        return out


# --------------------------------------------------------------------------
# history for aggregate reports (kept by mailwarden.dmarc_records)


class History:
    """The check's writer: one message's evaluation, from what the check
    knows, handed to the records ``[check.dmarc] history`` names."""

    def __init__(self, target: str, days: int = 14, state=None):
        self.path = target
        self.records = open_records(target, days, state=state)

    def record(self, ctx, domain, record: Record, result, disposition, override,
               spf_aligned, dkim_aligned, spf_identities, dkim_identities) -> None:
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
            spf=tuple((d, scope, r) for d, r in spf_identities))
        try:
            self.records.record(evaluation)
        except RecordsError as exc:
            ctx.log.warning("dmarc history %s", exc)

    def close(self) -> None:
        self.records.close()


CHECKS = (DmarcCheck,)
