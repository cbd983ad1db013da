"""DMARC failure reports (RFC 9991), off unless ``[dmarc_failure] enabled = yes``.

When the dmarc check has evaluated an author domain whose policy record
asks for failure reports (a ``ruf=`` tag), it offers what it found here
(:meth:`Outbox.offer`, one call from ``checks/dmarc.py``).  What is sent:

* **When** (the record's ``fo=``, RFC 9989 §4.7; the whole tag is ignored
  without ``ruf``): ``0`` (the default, also when neither ``0`` nor ``1``
  is given) reports a message that fails DMARC, ``1`` one where SPF or DKIM
  did not give an aligned pass (a DMARC pass included); ``d`` adds a DKIM
  failure report (``Auth-Failure: signature``, RFC 6591) for a signature
  that failed, aligned or not; ``s`` an SPF failure report (``Auth-Failure:
  spf``) for an SPF ``fail``.  Reports go to the ``ruf`` addresses in every
  case (RFC 9991 §3).  A record with ``psd=y`` is never asked (RFC 9991
  §2).  Authenticated, trusted and allow-listed clients are never
  evaluated by the dmarc check, so never reported.
* **Where**: each ``mailto:`` URI of ``ruf`` (parsed and held to one
  strict address by :func:`mailwarden.dmarc_report.check_rua`, at most
  five, ``!size`` honoured), each one tried (RFC 9991 §2); one outside the
  policy domain's organizational domain only when it passes external
  destination verification (:func:`mailwarden.dmarc_report.authorized`:
  ``<policy-domain>._report._dmarc.<destination-domain>`` holds a
  ``v=DMARC1`` record, RFC 9990 §4 with ``ruf`` for ``rua``).
* **What** (RFC 9991 §4, RFC 6591, RFC 5965): ``multipart/report;
  report-type=feedback-report`` with a human-readable ``text/plain`` part,
  the ``message/feedback-report`` part (``Feedback-Type: auth-failure``,
  ``Version: 1``, ``User-Agent``, ``Auth-Failure`` (``dmarc``,
  ``signature`` or ``spf``), ``Authentication-Results`` (ours, as the
  Authentication-Results builder writes it), ``Identity-Alignment``,
  ``Original-Mail-From``, ``Arrival-Date``, ``Source-IP``,
  ``Reported-Domain`` (the author domain), ``Reporting-MTA``,
  ``Original-Envelope-Id`` when the client gave an ESMTP ``ENVID`` (our
  queue id is named in the text part),
  ``Delivery-Result`` when DMARC's own disposition decided it (``reject``
  or, for a quarantine, ``spam``), ``DKIM-Domain``/``-Identity``/
  ``-Selector`` for a failed DKIM signature of an aligned domain (or any,
  for ``Auth-Failure: signature``), ``SPF-DNS`` for a failed aligned SPF
  identity), and the message, redacted (below).  The Subject is ``FW:``
  and the message's own Subject, as RFC 9991's example shows (``FW: DMARC
  failure report for DOMAIN`` when it has none).  The report's envelope
  sender and From are ``[dmarc_failure] sender``; it carries
  ``Auto-Submitted: auto-generated`` (RFC 3834).
* **Redaction** (RFC 9991 §7, RFC 6590), per ``content``:
  ``headers`` (the default) sends the header section only, as
  ``text/rfc822-headers``; ``redacted`` sends ``message/rfc822``: the same
  header section (its ``Content-*`` and ``MIME-Version`` fields replaced)
  and a ``text/plain`` body that stands for the original one: each text
  part (``text/plain``, ``text/html`` with its tags removed) at most
  8 KiB, 32 KiB in all, from the first 256 KiB of the body, and one line
  ``[ part removed: TYPE, N bytes ]`` for every other part (attachments
  are never sent).  In both, the local part of every address
  (``local@domain``) is replaced by a pseudonym, the same one for the same
  local part within this process (an HMAC with a key made at start-up),
  except in ``Message-ID``, ``In-Reply-To`` and ``References``, which a
  domain owner needs to find the message; the original mail from is
  redacted alike, in ``Original-Mail-From`` and in the
  ``Authentication-Results`` field.  In a redacted body
  ``http``/``https``/``ftp`` URLs are defanged (``hxxp``, ``hxxps``,
  ``fxp``), as RFC 9991 §7.3 advises.
  The recipients (``Original-Rcpt-To``) are never reported.
* **Never a report about a report** (RFC 9991 §5.1 warns of report
  loops): no report for a message with the null reverse path (a bounce or
  another report), a ``multipart/report`` (ARF, DSN, MDN of any kind), an
  ``Auto-Submitted`` field other than ``no`` (RFC 3834), an aggregate
  report (Subject ``Report Domain: ...``, RFC 9990), one whose envelope
  sender is our own ``sender``, or one sent to one of the record's own
  ``ruf``/``rua`` addresses.  Our own reports are ``multipart/report``
  with ``Auto-Submitted``, so another mailwarden never reports them; the
  ``sender`` domain should pass DMARC itself (RFC 9991 §5.1).
* **Rate limit**: at most ``rate_limit`` reports to one destination
  domain per ``rate_period``, counted in the limits state store
  (``[state]``: per host, or shared by several MX hosts through Redis);
  the rest is dropped, never sent later (RFC 9991 §2, §8.1).  A store failure
  withholds the report.

**Never in the milter callback**: :meth:`Outbox.offer` only decides
whether a report is wanted and copies what it needs (the header fields,
and for ``redacted`` the first 256 KiB of the body) into a bounded
in-memory queue (``queue_size``); one background thread, started on
demand and gone after a minute without work, does the DNS checks, the
rate limit, builds the report and hands it to the local MTA with
``[dmarc_report] sendmail`` (``sendmail -i -f SENDER -- ADDRESS``, the
runner of :mod:`mailwarden.dmarc_report`).  A full queue drops the
report.  Reports are best effort: those queued when the milter stops are
lost, a sendmail failure is not retried.

Everything a sender controls reaches the report as data: field values
lose their control characters and are bounded, header fields of the
reported message stay continuation lines of their field, the MIME
boundaries are chosen by the email package so that no content can close
a part.

Every report not sent is counted in ``mailwarden_dmarc_failure_reports_total
{outcome}`` (:mod:`mailwarden.metrics`): ``sent``, ``failed`` (sendmail),
``rate_limited``, ``queue_full``, ``unauthorized`` (external destination
not verified), ``dns_error``, ``too_big`` (over ``!size``),
``state_error``, ``report_loop`` (a report about a report, withheld),
``error``.

INI keys (``[dmarc_failure]``, parsed by :class:`mailwarden.config.FailureOptions`):
  enabled       no        send failure reports at all
  sender                  From and envelope sender of the reports (required when enabled)
  content       headers   headers: the header section only; redacted: headers and a
                          redacted body (see above)
  rate_limit    10        reports to one destination domain per rate_period (1 to 10^6)
  rate_period   1h        the rate window (at least 1s)
  queue_size    100       reports waiting for the sender thread at most (1 to 100000)
The sendmail command line is ``[dmarc_report] sendmail``.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import hashlib
import hmac
import logging
import os
import queue
import re
import shlex
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import __version__, authresults
from .dmarc_report import Destination, authorized, check_rua, run_sendmail
from .state import StateError

log = logging.getLogger("mailwarden.dmarc_failure")

USER_AGENT = f"mailwarden/{__version__}"
BODY_READ = 256 * 1024          # body bytes copied at most for ``content = redacted``
PART_TEXT = 8 * 1024            # characters of one text part kept
BODY_TEXT = 32 * 1024           # characters of the redacted body in all
MAX_FIELD = 300                 # characters of a sender-controlled report field value
MAX_SUBJECT = 200
MAX_HEADERS = 200               # header fields of the reported message kept
MAX_HEADER_VALUE = 4000         # characters of one of them
IDLE = 60.0                     # seconds the sender thread waits for work before it ends

OUTCOMES = ("sent", "failed", "rate_limited", "queue_full", "unauthorized", "dns_error",
            "too_big", "state_error", "report_loop", "error")


# --------------------------------------------------------------------------
# counts, read by mailwarden.metrics


class Tally:
    """Reports by outcome, for the whole process (several engines share it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._counts)


TALLY = Tally()


# --------------------------------------------------------------------------
# what a report needs, copied in the milter callback


@dataclass(frozen=True)
class Incident:
    """One report to make: everything copied out of the message."""

    auth_failure: str               # dmarc, signature or spf
    policy_domain: str
    header_from: str
    destinations: tuple             # Destination
    identity_alignment: str
    dkim: tuple                     # (d, s, i) of the signatures to name
    spf_domain: str                 # SPF identity whose record SPF-DNS shows, or ""
    authentication_results: str
    delivery_result: str
    mail_from: str
    source_ip: str
    arrival: float
    queue_id: str                   # ours, named in the text part
    envelope_id: str                # the client's ESMTP ENVID (RFC 3461), or ""
    headers: tuple                  # (name, raw value bytes)
    body: bytes                     # the first BODY_READ bytes, or b"" (content = headers)
    body_size: int


def fo_options(fo: str) -> set:
    """The ``fo`` values (RFC 9989 §4.7): ``0`` when neither 0 nor 1 is given."""
    opts = {p.strip().lower() for p in (fo or "").split(":") if p.strip()}
    opts &= {"0", "1", "d", "s"}
    if not opts & {"0", "1"}:
        opts.add("0")
    return opts


def kinds_wanted(fo: str, result: str, spf_aligned_pass: bool, dkim_aligned_pass: bool,
                 dkim_failed: bool, spf_failed: bool) -> list:
    """The ``Auth-Failure`` kinds of reports ``fo`` asks for this outcome."""
    opts = fo_options(fo)
    kinds = []
    if "1" in opts:
        if not (spf_aligned_pass and dkim_aligned_pass):
            kinds.append("dmarc")
    elif result == "fail":
        kinds.append("dmarc")
    if "d" in opts and dkim_failed:
        kinds.append("signature")
    if "s" in opts and spf_failed:
        kinds.append("spf")
    return kinds


_DKIM_FAILED = ("fail", "permerror")


def report_loop(msg, sender: str, destinations: list) -> str:
    """Why a message must not be reported (it is, or may be, a report), or ''."""
    if not msg.mail_from:
        return "null reverse path"
    if msg.mail_from.lower() == sender.lower():
        return "sent from our report address"
    wanted = {d.address.lower() for d in destinations}
    if any(r.strip("<>").lower() in wanted for r in msg.rcpts):
        return "sent to a report address"
    ctype = msg.header_texts("Content-Type")
    if ctype and ctype[0].lower().startswith("multipart/report"):
        return "a multipart/report"
    for value in msg.header_texts("Auto-Submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "Auto-Submitted"
    subject = msg.header_texts("Subject")
    if subject and subject[0].lower().startswith("report domain:"):
        return "an aggregate report"
    return ""


# --------------------------------------------------------------------------
# the outbox


class Outbox:
    """The bounded queue and its sender thread; one per dmarc check."""

    def __init__(self, options, services, sendmail: str = "/usr/sbin/sendmail",
                 runner: Optional[Callable] = None, tally: Tally = TALLY,
                 idle: float = IDLE):
        self.options = options
        self.services = services
        self.sendmail = sendmail
        self.runner = runner or run_sendmail
        self.tally = tally
        self.idle = idle
        self.queue: queue.Queue = queue.Queue(maxsize=options.queue_size)
        self.key = os.urandom(16)                   # pseudonyms of local parts
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    # -- in the milter callback: cheap, never blocks ---------------------------

    def offer(self, ctx, rows: list, outcomes: dict, aligned: Callable) -> int:
        """Queue the reports the records of ``rows`` ask for; how many.

        ``rows``: the dmarc check's evaluations (its history rows),
        ``outcomes``: author domain -> its Result, ``aligned(a, b, mode)``:
        the check's own alignment test."""
        queued = 0
        for row in rows:
            (domain, record, result, _disposition, _override, spf_aligned, dkim_aligned,
             spf_identities, _dkim_identities) = row[:9]
            if not getattr(record, "ruf", "") or getattr(record, "psd", "") == "y":
                continue
            destinations = check_rua(record.ruf)[0]
            if not destinations:
                continue
            queued += self._offer_one(ctx, domain, record, result, spf_aligned, dkim_aligned,
                                      spf_identities, destinations, outcomes.get(domain),
                                      aligned)
        return queued

    def _offer_one(self, ctx, domain, record, result, spf_aligned, dkim_aligned,
                   spf_identities, destinations, outcome, check) -> int:
        dkim = [(r.header_d, r.header_s, r.header_i or f"@{r.header_d}", r.result)
                for r in ctx.results_of("dkim") if r.header_d]
        dkim_failed_aligned = [(d, s, i) for d, s, i, res in dkim if res in _DKIM_FAILED
                               and check(d, domain, record.adkim)]
        dkim_failed_any = [(d, s, i) for d, s, i, res in dkim if res in _DKIM_FAILED]
        spf_failed_aligned = [d for d, res in spf_identities
                              if res != "pass" and check(d, domain, record.aspf)]
        spf_failed = any(res == "fail" for _d, res in spf_identities)
        kinds = kinds_wanted(record.fo, result, bool(spf_aligned), bool(dkim_aligned),
                             bool(dkim_failed_any), spf_failed)
        if not kinds:
            return 0
        others = destinations + check_rua(getattr(record, "rua", ""))[0]
        why = report_loop(ctx.msg, self.options.sender, others)
        if why:
            ctx.log.info("dmarc failure report for %s withheld: %s", domain, why)
            for _kind in kinds:
                self.tally.add("report_loop")
            return 0
        msg = ctx.msg
        results = [r for r in ctx.results if r.check in ("spf", "dkim")]
        if outcome is not None:
            results.append(outcome)
        authserv = self.services.config.authserv.id
        ar = authresults.build(authserv, results).replace(authresults.FOLD, " ")
        delivery = ""
        if outcome is not None and outcome.reply is not None and outcome.reply.action == "reject":
            delivery = "reject"
        elif outcome is not None and outcome.quarantine:
            delivery = "spam"
        body, body_size = b"", msg.body.size if msg.body is not None else 0
        if self.options.content == "redacted" and msg.body is not None:
            body = _head_of(msg.body, BODY_READ)
        alignment = ",".join(m for m, failed in (("dkim", dkim_failed_aligned),
                                                  ("spf", spf_failed_aligned)) if failed)
        queued = 0
        for kind in kinds:
            if kind == "signature":
                named = dkim_failed_any
            elif kind == "dmarc":
                named = dkim_failed_aligned
            else:
                named = []
            spf_domain = ""
            if kind == "spf":
                spf_domain = next((d for d, res in spf_identities if res == "fail"), "")
            elif spf_failed_aligned:
                spf_domain = spf_failed_aligned[0]
            incident = Incident(
                auth_failure=kind, policy_domain=record.domain, header_from=domain,
                destinations=tuple(destinations), identity_alignment=alignment or "none",
                dkim=tuple(named[:5]), spf_domain=spf_domain, authentication_results=ar,
                delivery_result=delivery, mail_from=msg.mail_from,
                source_ip=str(ctx.conn.client_ip or ""), arrival=ctx.now(),
                queue_id=msg.queue_id or "", envelope_id=str(msg.mail_params.get("ENVID", "")),
                headers=tuple(msg.headers[:MAX_HEADERS]),
                body=body, body_size=body_size)
            try:
                self.queue.put_nowait(incident)
            except queue.Full:
                ctx.log.warning("dmarc failure report for %s dropped: the queue is full (%d)",
                                domain, self.options.queue_size)
                self.tally.add("queue_full")
                continue
            queued += 1
        if queued:
            self._ensure_worker()
        return queued

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._work, name="mailwarden-dmarc-ruf",
                                            daemon=True)
            self._thread.start()

    # -- the sender thread ------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                incident = self.queue.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    # offer() may have queued one after the timeout: stay for it
                    if self.queue.empty():
                        self._thread = None
                        return
                continue
            try:
                self.process(incident)
            except Exception as exc:    # noqa: BLE001 - the thread must outlive any report
                log.error("dmarc failure report for %s: %s: %s", incident.header_from,
                          exc.__class__.__name__, exc, exc_info=True)
                self.tally.add("error")
            finally:
                self.queue.task_done()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty and the last report handled (tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def process(self, incident: Incident) -> list:
        """Send one incident to each destination; (address, outcome) each."""
        out = []
        for dest in incident.destinations:
            outcome = self._send_one(incident, dest)
            self.tally.add(outcome.split(" ", 1)[0].rstrip(":"))
            level = logging.INFO if outcome.startswith("sent") else logging.WARNING
            log.log(level, "%s: dmarc failure report (%s) for %s to %s: %s",
                    incident.queue_id or "-", incident.auth_failure, incident.header_from,
                    dest.address, outcome)
            out.append((dest.address, outcome))
        return out

    def _send_one(self, incident: Incident, dest: Destination) -> str:
        resolver = self.services.resolver
        try:
            ok, why = authorized(resolver, incident.policy_domain, dest)
        except (ValueError, UnicodeError) as exc:
            ok, why = False, f"external destination not authorized: {exc}"
        if not ok:
            return ("dns_error: " if why.endswith("try again later") else "unauthorized: ") + why
        now = self.services.clock()
        try:
            count = self.services.state.take(f"dmarc-failure:{dest.domain}", 1,
                                             self.options.rate_limit, self.options.rate_period,
                                             now)
        except StateError as exc:
            return f"state_error: {exc}"
        if not count.allowed:
            return (f"rate_limited: {self.options.rate_limit} reports to {dest.domain} "
                    f"per {self.options.rate_period:g}s")
        spf_dns = _spf_dns(resolver, incident.spf_domain) if incident.spf_domain else ""
        data = build_report(self.options, incident, dest, now=now, key=self.key,
                            reporting_mta=self.services.config.authserv.id, spf_dns=spf_dns)
        if dest.max_size is not None and len(data) > dest.max_size:
            return f"too_big: {len(data)} bytes is over its !{dest.max_size} limit"
        argv = [*shlex.split(self.sendmail), "-i", "-f", self.options.sender, "--",
                dest.address]
        try:
            status, errors = self.runner(argv, data)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"failed: {_clean(str(exc), 200)}"
        if status != 0:
            return f"failed: sendmail exited {status}: {_clean(errors.strip(), 200)}"
        return f"sent ({len(data)} bytes)"


def _head_of(body, most: int) -> bytes:
    out = bytearray()
    for block in body.chunks():
        out += block[:most - len(out)]
        if len(out) >= most:
            break
    return bytes(out)


def _spf_dns(resolver, domain: str) -> str:
    """``SPF-DNS`` (RFC 6591 §3.2): ``txt : DOMAIN : "record"``, or ''."""
    try:
        answer = resolver.query(domain, "TXT")
    except (ValueError, UnicodeError):
        return ""
    if not answer.ok:
        return ""
    spf = [t for t in answer.records if t.lower().startswith("v=spf1")]
    if len(spf) != 1:
        return ""
    return f"txt : {_clean(domain, 253)} : {authresults.quoted(_clean(spf[0], 450))}"


# --------------------------------------------------------------------------
# the report


_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAME = re.compile(r"[!-9;-~]{1,76}")
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
# a local part, after an Authentication-Results property name kept as it is
# (``smtp.mailfrom=``: "=" and "." are atext, the name would be taken for one)
_LOCAL_PART = re.compile(r"(?<![" + _ATEXT + r".])"
                         r"((?:(?:smtp|header|body|policy)\.[A-Za-z0-9_-]+=)?)"
                         rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*|\"[^\"\r\n]{{0,64}}\")"
                         r"@(?=[A-Za-z0-9\[])", re.I)
_URL = re.compile(r"\b(http|https|ftp)(?=://)", re.I)
_DEFANG = {"http": "hxxp", "https": "hxxps", "ftp": "fxp"}
_NOT_REDACTED = {"message-id", "in-reply-to", "references"}
_REPLACED = {"content-type", "content-transfer-encoding", "mime-version", "content-disposition"}
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _clean(text, most: int = MAX_FIELD) -> str:
    """One line of text: control characters (tabs aside) become ``?``."""
    return _UNSAFE.sub("?", str(text)).replace("\t", " ")[:most]


def pseudonym(key: bytes, local: str) -> str:
    digest = hmac.new(key, local.lower().encode("utf-8", "surrogateescape"),
                      hashlib.sha256).digest()
    return base64.b32encode(digest[:5]).decode("ascii").lower()


def redact_addresses(text: str, key: bytes) -> str:
    """Every ``local@domain`` with its local part replaced by a pseudonym."""
    return _LOCAL_PART.sub(lambda m: m.group(1) + pseudonym(key, m.group(2)) + "@", text)


def defang(text: str) -> str:
    return _URL.sub(lambda m: _DEFANG[m.group(1).lower()], text)


def redacted_headers(headers, key: Optional[bytes], replace_mime: bool = False) -> str:
    """The header section as text, CRLF line ends, addresses redacted.

    A field whose name is no field name is dropped; a line break inside a
    value always stays a continuation line of its field."""
    lines = []
    for name, raw in headers[:MAX_HEADERS]:
        if not _NAME.fullmatch(name or ""):
            continue
        if replace_mime and name.lower() in _REPLACED:
            continue
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        value = value[:MAX_HEADER_VALUE]
        parts = [re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "?", p) for p in _NEWLINE.split(value)]
        parts = [parts[0]] + [p if p[:1] in (" ", "\t") else "\t" + p for p in parts[1:]]
        parts = [p for i, p in enumerate(parts) if i == 0 or p.strip()]
        value = "\r\n".join(parts)
        if key is not None and name.lower() not in _NOT_REDACTED:
            value = redact_addresses(value, key)
        if not value[:1] in (" ", "\t", ""):
            value = " " + value
        lines.append(f"{name}:{value}\r\n")
    return "".join(lines)


def redacted_body(headers, body: bytes, body_size: int, key: bytes) -> str:
    """The text that stands for the body with ``content = redacted``."""
    raw = redacted_headers(headers, None).encode("utf-8", "replace") + b"\r\n" + body
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    out, left = [], BODY_TEXT
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        size = len(part.get_payload(decode=False) or "")
        if part.get_content_maintype() == "text" and part.get_content_subtype() in \
                ("plain", "html") and not part.is_attachment() and left > 0:
            try:
                text = part.get_content()
            except (LookupError, ValueError, AssertionError):
                text = ""
            if ctype == "text/html":
                text = re.sub(r"(?s)<(script|style)\b.*?</\1\s*>|<[^>]*>", " ", text)
            text = defang(redact_addresses(_NEWLINE.sub("\n", text), key))
            text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "?", text)[:min(PART_TEXT, left)]
            left -= len(text)
            out.append(f"[ {ctype} part, {size} bytes, redacted ]\n{text.strip()}\n")
        else:
            out.append(f"[ part removed: {_clean(ctype, 80)}, {size} bytes ]\n")
    if body_size > len(body):
        out.append(f"[ {body_size - len(body)} more bytes of the body not read ]\n")
    return "\n".join(out) if out else "[ empty body ]\n"


def _subject(headers, domain: str) -> str:
    for name, raw in headers:
        if name.lower() == "subject":
            value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            text = " ".join(_clean(_NEWLINE.sub(" ", value), MAX_SUBJECT * 2).split())
            try:
                text = str(email.header.make_header(email.header.decode_header(text)))
            except (ValueError, LookupError, email.errors.HeaderParseError):
                pass
            text = " ".join(_clean(text, MAX_SUBJECT).split())
            if text:
                return "FW: " + text
            break
    return f"FW: DMARC failure report for {domain}"


def _feedback_fields(incident: Incident, key: bytes, reporting_mta: str, spf_dns: str) -> list:
    sender = incident.mail_from
    fields = [
        ("Feedback-Type", "auth-failure"),
        ("Version", "1"),
        ("User-Agent", USER_AGENT),
        ("Auth-Failure", incident.auth_failure),
        ("Authentication-Results",
         _clean(redact_addresses(incident.authentication_results, key), 2000)),
        ("Identity-Alignment", incident.identity_alignment),
        ("Original-Mail-From", "<" + _clean(redact_addresses(sender, key)) + ">"),
        ("Arrival-Date", email.utils.formatdate(incident.arrival, usegmt=True)),
        ("Reporting-MTA", f"dns; {_clean(reporting_mta, 253)}"),
        ("Reported-Domain", _clean(incident.header_from, 253)),
    ]
    if incident.source_ip:
        fields.append(("Source-IP", _clean(incident.source_ip, 60)))
    if incident.envelope_id:
        fields.append(("Original-Envelope-Id", _clean(incident.envelope_id, 100)))
    if incident.delivery_result:
        fields.append(("Delivery-Result", incident.delivery_result))
    if incident.dkim:
        d, s, i = incident.dkim[0]          # the fields appear once (RFC 6591 §3.2)
        fields += [("DKIM-Domain", _clean(d, 253)),
                   ("DKIM-Identity", _clean(redact_addresses(i, key))),
                   ("DKIM-Selector", _clean(s, 253))]
    if spf_dns:
        fields.append(("SPF-DNS", spf_dns))
    return fields


def build_report(options, incident: Incident, dest: Destination, *,
                 now: float, key: bytes, reporting_mta: str, spf_dns: str = "") -> bytes:
    """The report mail for one destination, as bytes with CRLF line ends."""
    policy = email.policy.SMTP
    msg = email.message.EmailMessage(policy=policy)
    msg["From"] = options.sender
    msg["To"] = dest.address
    msg["Date"] = email.utils.formatdate(now, usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=options.sender.rpartition("@")[2])
    msg["Subject"] = _subject(incident.headers, incident.header_from)
    msg["Auto-Submitted"] = "auto-generated"
    what = {"dmarc": "failed DMARC", "signature": "had a DKIM signature that failed",
            "spf": "failed SPF"}[incident.auth_failure]
    content = ("its header section only" if options.content == "headers" else
               "its header section and a redacted summary of its body")
    queue_line = f"Our queue id: {_clean(incident.queue_id, 80)}\n" if incident.queue_id else ""
    msg.set_content(
        f"This is an authentication failure report (RFC 9991) for a message\n"
        f"received from IP {_clean(incident.source_ip or 'unknown', 60)} on "
        f"{email.utils.formatdate(incident.arrival, usegmt=True)}.\n"
        f"Its From domain is {_clean(incident.header_from, 253)}; it {what}.\n"
        f"{queue_line}\n"
        f"The message is shown redacted: {content}, with the local part of\n"
        f"every address replaced by a pseudonym.\n")
    msg.make_mixed()
    msg.set_type("multipart/report")
    msg.set_param("report-type", "feedback-report")

    feedback = email.message.EmailMessage(policy=policy)
    for name, value in _feedback_fields(incident, key, reporting_mta, spf_dns):
        feedback[name] = value
    part = email.message.MIMEPart(policy=policy)
    part["Content-Type"] = "message/feedback-report"
    part.set_payload([feedback])
    msg.attach(part)

    original = email.message.MIMEPart(policy=policy)
    if options.content == "headers":
        original.set_content(redacted_headers(incident.headers, key), subtype="rfc822-headers",
                             cte="quoted-printable")
    else:
        head = redacted_headers(incident.headers, key, replace_mime=True)
        text = redacted_body(incident.headers, incident.body, incident.body_size, key)
        inner = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            head.encode("utf-8", "replace") + b"\r\n")
        inner.set_content(text, cte="quoted-printable")
        original.set_content(inner)
    msg.attach(original)
    return msg.as_bytes()


def outbox_for(services) -> Optional[Outbox]:
    """The outbox ``[dmarc_failure]`` asks for, or None when it is off."""
    config = getattr(services, "config", None)
    options = getattr(config, "dmarc_failure", None)
    if options is None or not options.enabled:
        return None
    return Outbox(options, services, sendmail=config.dmarc_report.sendmail)


__all__ = ["Incident", "Outbox", "TALLY", "build_report", "kinds_wanted",
           "fo_options", "outbox_for", "redact_addresses", "redacted_headers", "report_loop"]
