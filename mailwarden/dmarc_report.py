"""``mailwarden dmarc-report``: DMARC aggregate reports (RFC 7489 §7.2).

The dmarc check keeps one row per evaluated message in ``[check.dmarc]
history``: the DMARC records of :mod:`mailwarden.dmarc_records`, an SQLite
file on one host or a Redis server shared by several MX hosts (then one run
on any host reports the mail of all of them).  Each run holds the report
lock of the records (:data:`LOCK_TTL` seconds, renewed as it goes): a run
that finds it taken, on this host or another, does nothing, so two runs
never send the same report.  This command reads the rows of a period not
yet reported and writes, for each policy domain that asked for aggregate
reports (a ``rua=mailto:`` in the record it published when the message was
evaluated), one report:

* the XML of RFC 7489 Appendix C (namespace ``http://dmarc.org/dmarc-xml/0.1``),
  rows grouped by source IP, identifiers, evaluated policy and
  authentication results, each group with its message count;
* gzip-compressed, named ``receiver!policy-domain!begin!end!unique-id.xml.gz``
  (§7.2.1.1), ``receiver`` being ``[dmarc_report] domain``;
* ``report_metadata`` from ``[dmarc_report]`` (``org_name``, ``email``).

A domain whose record had no ``rua`` is never reported, not even inside
another domain's report.  A report written is recorded in the same records
(SQLite: table ``dmarc_report``; Redis: with the compressed report, so
another host can send it again) and the history rows it holds are
deleted in the same step, so a second run does not report them
again and the history does not grow with what was reported (rows of
domains that asked for no reports go after ``[check.dmarc]
history_days``).

``--send`` mails each report to its ``rua`` addresses through the local MTA
(``[dmarc_report] sendmail``): a MIME message with the Subject of §7.2.1.1
(``Report Domain: D Submitter: R Report-ID: <ID>``) and the report attached
as ``application/gzip``.  A ``!size`` suffix is honoured: a larger report is
not sent there (and the output says so).  A destination outside the policy
domain's organizational domain gets reports only if it published
``<policy-domain>._report._dmarc.<destination-domain> TXT "v=DMARC1..."``
(§7.1), checked through ``[dns]``.

A ``rua`` is text the policy domain publishes, so every URI must be one
strict addr-spec once %-decoded (:func:`strict_address`: no list, group,
angle brackets, quotes, white space or control characters, no bang path or
percent hack, no leading ``-``); anything else is refused and shown, never
split or repaired.  At most :data:`MAX_URIS` destinations per record.
sendmail runs once per address, as ``sendmail -i -f SENDER -- ADDRESS``.

Delivery is recorded per (report, address) in ``dmarc_delivery``: pending
when the report is saved, ``sent`` only once sendmail exited 0.  A failure
(sendmail, a DNS temperror) stays pending and the next ``--send`` run tries
again with the saved file, up to :data:`MAX_ATTEMPTS` runs; a refusal (not
authorized, over ``!size``) is final.  One bad destination never stops the
others.

Bounds (``[dmarc_report]``): ``max_reports_per_run`` reports written per run
(the domains waiting longest first; the rest wait), ``max_mails_per_run``
report mails per run and ``max_mails_per_domain`` to one destination domain
(the rest stay pending for the next run).  The records keep sender-
controlled text bounded (``bound_text``, ``bound_rua`` and
``bound_identities`` of :mod:`mailwarden.dmarc_records`): names at most
253 characters, ``rua`` 1024, at most 20 DKIM signatures per message.

INI keys (``[dmarc_report]``):
  org_name, domain, email     report_metadata, the Submitter (required to write)
  sender                      From of report mail (default: email)
  sendmail             /usr/sbin/sendmail  the local MTA's command line
  max_reports_per_run  1000
  max_mails_per_run    2000
  max_mails_per_domain 200
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import gzip
import io
import ipaddress
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Optional

from .dmarc_records import NOT_XML, Records, RecordsError, is_redis, open_records
from .orgdomain import is_dmarc_record, is_domain, organizational

log = logging.getLogger("mailwarden.dmarc_report")

NAMESPACE = "http://dmarc.org/dmarc-xml/0.1"

_DKIM_RESULTS = {"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"}
_SPF_RESULTS = {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"}
_OVERRIDES = {"forwarded", "sampled_out", "trusted_forwarder", "mailing_list", "local_policy",
              "other"}
_SIZE = re.compile(r"(\d{1,20})([kmgt]?)", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# A destination is one strict addr-spec (RFC 5322 §3.4.1): a dot-atom local
# part and a host name, nothing else.  Of atext, "!", "%", "/" and "|" are
# left out (bang paths, the percent hack and pipes route mail elsewhere in
# some MTAs), and so is a leading "-" (an option to a sendmail that does not
# know "--").  No quoted local part, no address literal, no non-ASCII: a
# report address needs none of them, and each is a way to smuggle a second
# recipient or an option into the MTA's command line.
_LOCAL = re.compile(r"[A-Za-z0-9#$&'*+=?^_`{}~-]+(?:\.[A-Za-z0-9#$&'*+=?^_`{}~-]+)*")
MAX_ADDRESS = 254               # RFC 5321 §4.5.3.1.3 (path 256, less the brackets)
MAX_URIS = 5                    # destinations taken from one rua (RFC 7489 §6.2: MAY limit)


class ReportError(Exception):
    """The reports cannot be made (no history, missing settings)."""


@dataclass(frozen=True)
class Destination:
    """One ``rua`` URI: a mailto address and its optional size limit."""

    address: str
    max_size: Optional[int] = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")


def strict_address(text: str) -> str:
    """Why ``text`` is not one strict addr-spec we may hand to sendmail ('' if it is)."""
    if not text:
        return "empty address"
    if len(text) > MAX_ADDRESS:
        return f"address longer than {MAX_ADDRESS} characters"
    if not text.isascii() or not text.isprintable():
        return "control or non-ASCII characters in the address"
    for ch, what in ((",", "a list of addresses"), (";", "a group"), ("<", "an angle address"),
                     (">", "an angle address"), (" ", "white space"), ('"', "a quoted part"),
                     ("(", "a comment"), (")", "a comment")):
        if ch in text:
            return f"{what} ({ch!r}), not one address"
    local, at, host = text.rpartition("@")
    if not at or "@" in local:
        return "not exactly one @"
    if not local or len(local) > 64 or local.startswith("-") or not _LOCAL.fullmatch(local):
        return "not a plain local part"
    if not is_domain(host, multi_label=True):
        return "not a host name after the @"
    return ""


def parse_destination(uri: str) -> tuple:
    """(Destination or None, why not) for one ``rua`` URI (RFC 7489 §6.4:
    ``URI [ "!" size ]``, a literal "!" or "," in the URI itself encoded)."""
    if uri[:7].lower() != "mailto:":
        return None, "not a mailto: URI"
    rest = uri[7:]
    size = None
    head, bang, tail = rest.rpartition("!")
    if bang:
        m = _SIZE.fullmatch(tail)
        if m is None or "!" in head or int(m.group(1)) >= 1 << 64:
            return None, "a \"!\" that is not a size suffix (RFC 7489 §6.4)"
        rest, size = head, int(m.group(1)) * _UNITS[m.group(2).lower()]
    path = rest.split("?", 1)[0]        # header fields (RFC 6068) are not used
    address = urllib.parse.unquote(path, errors="replace")
    why = strict_address(address)
    if why:
        return None, why
    return Destination(address, size), ""


def check_rua(text: str) -> tuple:
    """(destinations, refused): the mailto destinations of a ``rua`` value,
    and (uri, why) for each URI that was refused.  Other schemes are
    skipped; at most :data:`MAX_URIS` destinations are kept."""
    out, refused = [], []
    for item in (text or "").split(","):
        uri = item.strip(" \t")
        if not uri:
            continue
        if uri[:7].lower() != "mailto:":
            if ":" not in uri or not uri.isprintable():
                refused.append((uri[:80], "not a URI"))
            continue
        dest, why = parse_destination(uri)
        if dest is None:
            refused.append((uri[:200], why))
        elif any(d.address.lower() == dest.address.lower() for d in out):
            continue                    # one mail per address, the first size given
        elif len(out) >= MAX_URIS:
            refused.append((uri[:200], f"more than {MAX_URIS} destinations"))
        else:
            out.append(dest)
    return out, refused


def parse_rua(text: str) -> list:
    """The mailto destinations of a ``rua`` value that may be mailed."""
    return check_rua(text)[0]


@dataclass
class Report:
    policy_domain: str
    begin: int
    end: int
    report_id: str
    filename: str
    xml: bytes
    gz: bytes
    message_ids: list
    messages: int
    destinations: list = field(default_factory=list)
    path: str = ""
    refused: list = field(default_factory=list)     # (uri, why) of rua URIs not used


# --------------------------------------------------------------------------
# reading the history


def _open(config) -> Records:
    """The records ``[check.dmarc] history`` names, opened for reporting."""
    target = config.checks["dmarc"].history
    if not target:
        raise ReportError("[check.dmarc] history is not set: there are no records to report")
    if not is_redis(target) and not os.path.exists(target):
        raise ReportError(f"{target}: no DMARC history yet")
    return open_records(target, config.checks["dmarc"].history_days,
                        state=getattr(config, "state", None), report=True, timeout=30)


# --------------------------------------------------------------------------
# the XML


def _ip(text: str) -> str:
    """Appendix C's IPAddress type knows only dotted quads and full IPv6."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    return ip.exploded if ip.version == 6 else str(ip)


def _sub(parent, name: str, text=None):
    el = ET.SubElement(parent, f"{{{NAMESPACE}}}{name}")
    if text is not None:
        el.text = NOT_XML.sub("?", str(text))
    return el


def build_xml(options, policy_domain: str, begin: int, end: int, report_id: str,
              latest, groups: dict) -> bytes:
    """``groups``: key -> count, key = (ip, header_from, envelope_from,
    envelope_to, disposition, dkim_aligned, spf_aligned, override, dkim, spf)."""
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}feedback")
    _sub(root, "version", "1.0")
    meta = _sub(root, "report_metadata")
    _sub(meta, "org_name", options.org_name)
    _sub(meta, "email", options.email)
    _sub(meta, "report_id", report_id)
    dates = _sub(meta, "date_range")
    _sub(dates, "begin", begin)
    _sub(dates, "end", end)
    pub = _sub(root, "policy_published")
    _sub(pub, "domain", policy_domain)
    _sub(pub, "adkim", latest["adkim"])
    _sub(pub, "aspf", latest["aspf"])
    _sub(pub, "p", latest["p"])
    _sub(pub, "sp", latest["sp"] or latest["p"])       # sp defaults to p (§6.3)
    _sub(pub, "pct", latest["pct"])
    _sub(pub, "fo", latest["fo"] or "0")
    for key, count in groups.items():
        (ip, header_from, envelope_from, envelope_to, disposition, dkim_aligned,
         spf_aligned, override, dkim, spf) = key
        record = _sub(root, "record")
        row = _sub(record, "row")
        _sub(row, "source_ip", _ip(ip))
        _sub(row, "count", count)
        evaluated = _sub(row, "policy_evaluated")
        _sub(evaluated, "disposition", disposition)
        _sub(evaluated, "dkim", "pass" if dkim_aligned else "fail")
        _sub(evaluated, "spf", "pass" if spf_aligned else "fail")
        if override:
            reason = _sub(evaluated, "reason")
            _sub(reason, "type", override if override in _OVERRIDES else "other")
        ids = _sub(record, "identifiers")
        if envelope_to:
            _sub(ids, "envelope_to", envelope_to)
        _sub(ids, "envelope_from", envelope_from)
        _sub(ids, "header_from", header_from)
        auth = _sub(record, "auth_results")
        for domain, selector, result in dkim:
            d = _sub(auth, "dkim")
            _sub(d, "domain", domain)
            if selector:
                _sub(d, "selector", selector)
            _sub(d, "result", result if result in _DKIM_RESULTS else "permerror")
        if not spf:
            # Appendix C: there is always an SPF result; none was checked
            spf = ((envelope_from or header_from, "mfrom", "none"),)
        for domain, scope, result in spf:
            s = _sub(auth, "spf")
            _sub(s, "domain", domain)
            _sub(s, "scope", scope if scope in ("helo", "mfrom") else "mfrom")
            _sub(s, "result", result if result in _SPF_RESULTS else "permerror")
    out = io.BytesIO()
    ET.ElementTree(root).write(out, encoding="UTF-8", xml_declaration=True)
    return out.getvalue()


# --------------------------------------------------------------------------
# making reports


def make_reports(config, since: float, now: Optional[float] = None) -> tuple:
    """(reports, skipped): reports of rows in [now - since, now] not yet
    reported; ``skipped`` counts rows of domains that asked for none (or
    whose name cannot stand in a file name).  At most ``[dmarc_report]
    max_reports_per_run`` reports, for the domains waiting longest; the
    rows of the others wait for the next run."""
    options = config.dmarc_report
    missing = [k for k in ("org_name", "domain", "email") if not getattr(options, k)]
    if missing:
        raise ReportError("[dmarc_report] needs " + ", ".join(missing)
                          + " to write a report (report_metadata, file name)")
    now = int(time.time() if now is None else now)
    begin, end = now - int(since), now
    records = _open(config)
    try:
        rows = records.rows(begin, end)
        by_domain: dict = {}
        skipped = 0
        for row in rows:
            if not parse_rua(row["rua"]):
                skipped += 1            # this domain did not ask for reports
                continue
            domain = row["policy_domain"]
            if not is_domain(domain, underscore=True):
                skipped += 1            # it names the file: never a path
                continue
            by_domain.setdefault(domain, []).append(row)
        # rows come oldest first, and so do the domains in by_domain
        chosen = sorted(list(by_domain.items())[:options.max_reports_per_run])
        reports = []
        for domain, domain_rows in chosen:
            groups: dict = {}
            for row in domain_rows:
                dkim, spf = row.dkim, row.spf
                key = (row["source_ip"], row["header_from"], row["envelope_from"],
                       row["envelope_to"], row["disposition"], bool(row["dkim_aligned"]),
                       bool(row["spf_aligned"]), row["override"], dkim, spf)
                groups[key] = groups.get(key, 0) + 1
            latest = domain_rows[-1]
            unique = uuid.uuid4().hex[:16]
            report_id = f"{unique}@{options.domain}"
            xml = build_xml(options, domain, begin, end, report_id, latest, groups)
            filename = f"{options.domain}!{domain}!{begin}!{end}!{unique}.xml.gz"
            buf = io.BytesIO()
            with gzip.GzipFile(filename=filename[:-3], mode="wb", fileobj=buf, mtime=now) as gz:
                gz.write(xml)
            destinations, refused = check_rua(latest["rua"])
            reports.append(Report(domain, begin, end, report_id, filename, xml, buf.getvalue(),
                                  [r["id"] for r in domain_rows], len(domain_rows),
                                  destinations, refused=refused))
        return reports, skipped
    finally:
        records.close()


def save(config, reports: list, out_dir: str, queue: bool = False) -> None:
    """Write each report to ``out_dir``, record it and delete its rows from
    the history; with ``queue``, its mail to each destination is recorded
    as pending in the same transaction (:func:`deliver` sends it)."""
    os.makedirs(out_dir, exist_ok=True)
    records = _open(config)
    try:
        for report in reports:
            path = os.path.join(out_dir, report.filename)
            with open(path, "wb") as fh:
                fh.write(report.gz)
            report.path = path
            records.save_report(
                {"report_id": report.report_id, "policy_domain": report.policy_domain,
                 "begin": report.begin, "end": report.end, "file": path,
                 "messages": report.messages, "gz": report.gz},
                report.message_ids,
                [(d.address, d.max_size) for d in report.destinations] if queue else [],
                int(time.time()))
    finally:
        records.close()


# --------------------------------------------------------------------------
# sending


def authorized(resolver, policy_domain: str, destination: Destination) -> tuple:
    """(may we send, why not): §7.1 external destination verification."""
    if organizational(destination.domain) == organizational(policy_domain):
        return True, ""
    name = f"{policy_domain}._report._dmarc.{destination.domain}"
    if len(name) > 253 or ".." in name:
        return False, f"external destination not authorized: {name[:80]}... is no DNS name"
    answer = resolver.query(name, "TXT")
    if answer.temporary:
        return False, f"{name}: {answer.status.value}, try again later"
    if answer.ok and any(is_dmarc_record(t) for t in answer.records):
        return True, ""
    return False, f"external destination not authorized: no v=DMARC1 at {name}"


def report_message(options, report: Report, destination: Destination) -> bytes:
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    sender = options.sender or options.email
    msg["From"] = sender
    msg["To"] = destination.address
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=options.domain)
    msg["Subject"] = (f"Report Domain: {report.policy_domain} Submitter: {options.domain} "
                      f"Report-ID: <{report.report_id}>")
    msg.set_content(
        f"DMARC aggregate report for {report.policy_domain} from {options.org_name}\n"
        f"({report.messages} messages, {time.strftime('%Y-%m-%d %H:%M', time.gmtime(report.begin))}"
        f" to {time.strftime('%Y-%m-%d %H:%M', time.gmtime(report.end))} UTC).\n")
    msg.add_attachment(report.gz, maintype="application", subtype="gzip",
                       filename=report.filename)
    return msg.as_bytes()


def run_sendmail(argv: list, data: bytes) -> tuple:
    """(exit status, stderr text) of one sendmail(1) run."""
    done = subprocess.run(argv, input=data, capture_output=True, timeout=120)
    return done.returncode, done.stderr.decode("utf-8", "replace")


class Caps:
    """What one run may still send: ``[dmarc_report] max_mails_per_run`` in
    all, ``max_mails_per_domain`` to one destination domain."""

    def __init__(self, options):
        self.left = options.max_mails_per_run
        self.per_domain = options.max_mails_per_domain
        self.domains: dict = {}

    def refusal(self, domain: str) -> str:
        if self.left <= 0:
            return "max_mails_per_run reached, left for the next run"
        if self.domains.get(domain, 0) >= self.per_domain:
            return f"max_mails_per_domain reached for {domain}, left for the next run"
        return ""

    def take(self, domain: str) -> None:
        self.left -= 1
        self.domains[domain] = self.domains.get(domain, 0) + 1


def send_one(config, report: Report, dest: Destination, resolver, caps: Caps,
             runner=None) -> str:
    """Mail ``report`` to one destination.  The outcome starts with
    ``sent``, ``skipped:`` (never to be sent there: not allowed, too big),
    ``deferred:`` (over a cap; the next run sends it) or ``failed:``
    (sendmail did not take it, or DNS could not say whether the destination
    is allowed; the next run tries again)."""
    options = config.dmarc_report
    why = strict_address(dest.address)    # whatever built the Destination
    if why:
        return f"skipped: {why}"
    try:
        ok, why = authorized(resolver, report.policy_domain, dest)
    except (ValueError, UnicodeError) as exc:
        ok, why = False, f"external destination not authorized: {exc}"
    if not ok:        # a DNS failure is tried again by the next run, as a sendmail one
        return ("failed: " if why.endswith("try again later") else "skipped: ") + why
    refusal = caps.refusal(dest.domain)
    if refusal:
        return f"deferred: {refusal}"
    try:
        data = report_message(options, report, dest)
    except (ValueError, TypeError) as exc:
        return f"skipped: the report mail cannot be made: {exc}"
    if dest.max_size is not None and len(data) > dest.max_size:
        return f"skipped: {len(data)} bytes is over its !{dest.max_size} limit"
    argv = [*shlex.split(options.sendmail), "-i", "-f", options.sender or options.email,
            "--", dest.address]
    caps.take(dest.domain)
    try:
        status, errors = (runner or run_sendmail)(argv, data)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {_printable(str(exc))[:200]}"
    if status != 0:
        return f"failed: sendmail exited {status}: " + _printable(errors.strip())[:200]
    return f"sent ({len(data)} bytes)"


def send(config, report: Report, resolver, runner=None, caps: Optional[Caps] = None) -> list:
    """Mail ``report`` to its destinations, one sendmail run per address;
    (address, outcome) for each, refused rua URIs included.  Nothing is
    recorded: :func:`deliver` does that."""
    caps = caps or Caps(config.dmarc_report)
    outcomes = [(uri, f"skipped: refused rua URI: {why}") for uri, why in report.refused]
    for dest in report.destinations:
        outcomes.append((dest.address, send_one(config, report, dest, resolver, caps, runner)))
    return outcomes


def _printable(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", text)


MAX_ATTEMPTS = 5                # runs that try a failing delivery before it is abandoned


def deliver(config, resolver, runner=None, lock=None) -> list:
    """Send every pending report mail of the history (those :func:`save`
    queued now and those earlier runs could not send), within the caps;
    (report_id, file, address, outcome) for each.  A delivery is marked
    sent only once sendmail took it; a failure stays pending for the next
    run, up to :data:`MAX_ATTEMPTS` runs."""
    caps = Caps(config.dmarc_report)
    records = _open(config)
    outcomes = []
    try:
        loaded: tuple = ("", b"")        # the last report file read: its rows come together
        for row in records.deliveries():
            if lock is not None and not lock.renew(time.time()):
                raise RecordsError("the report lock expired: another run may be sending, "
                                   "stopped (the next run goes on)")
            dest = Destination(row["address"], row["max_size"])
            path = row["file"]
            if row["gz"] is not None:
                gz = row["gz"]          # kept in the store: any host can send it
            else:
                if loaded[0] != path:
                    try:
                        with open(path, "rb") as fh:
                            loaded = (path, fh.read())
                    except OSError as exc:
                        loaded = (path, exc)
                gz = loaded[1]
            if isinstance(gz, OSError):
                outcome = f"failed: the report file cannot be read: {gz}"
            else:
                report = Report(row["policy_domain"], row["begin"], row["end"],
                                row["report_id"], os.path.basename(path), b"", gz, [],
                                row["messages"], [dest], path)
                outcome = send_one(config, report, dest, resolver, caps, runner)
            attempts = row["attempts"] + outcome.startswith("failed")
            state = ("sent" if outcome.startswith("sent") else
                     "skipped" if outcome.startswith("skipped") else
                     "abandoned" if attempts >= MAX_ATTEMPTS else "pending")
            if state == "abandoned":
                outcome += f" (tried {attempts} times: given up)"
            records.update_delivery(row["report_id"], row["address"], state, attempts,
                                    outcome[:300], int(time.time()))
            outcomes.append((row["report_id"], path, dest.address, outcome))
    finally:
        records.close()
    return outcomes


# --------------------------------------------------------------------------
# command line


def _duration(text: str) -> float:
    from .options import ValueProblem, parse_seconds
    import argparse
    try:
        return parse_seconds(text)
    except ValueProblem as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_dmarc_report(args) -> int:
    """One run: under the report lock (in the records themselves), so that
    two runs, on one host or on two sharing a Redis server, never report
    the same rows twice; a run that finds the lock taken does nothing."""
    from .command import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, load_config

    config = load_config(args.config)
    try:
        store = _open(config)
    except ReportError as exc:
        print(f"mailwarden: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        lock = store.lock(LOCK_TTL, time.time())
    except RecordsError as exc:
        store.close()
        print(f"mailwarden: dmarc-report: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if lock is None:
        store.close()
        print(f"another dmarc-report run holds the report lock of {store}: nothing done")
        return EXIT_OK
    try:
        return _report_locked(args, config, lock)
    finally:
        try:
            lock.release()
        except RecordsError as exc:
            print(f"mailwarden: dmarc-report: {exc} (the lock expires by itself)",
                  file=sys.stderr)
        store.close()


LOCK_TTL = 600.0        # seconds a report run holds the lock unless it renews it


def _report_locked(args, config, lock) -> int:
    from .command import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
    from .dns import Resolver

    try:
        reports, skipped = make_reports(config, args.since)
        if not lock.renew(time.time()):
            raise RecordsError(f"the report lock expired after {LOCK_TTL:g}s: another run "
                               "may report the same rows, nothing saved")
        save(config, reports, args.out, queue=args.send)
    except ReportError as exc:
        print(f"mailwarden: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (RecordsError, OSError) as exc:
        print(f"mailwarden: dmarc-report: {exc}", file=sys.stderr)
        return EXIT_FAIL
    failed = False
    outcomes: dict = {}
    if args.send:
        resolver = Resolver(config.dns)
        try:
            for report_id, path, address, outcome in deliver(config, resolver, lock=lock):
                outcomes.setdefault(report_id, (path, []))[1].append((address, outcome))
                failed |= outcome.startswith("failed")
        except RecordsError as exc:
            print(f"mailwarden: dmarc-report: {exc}", file=sys.stderr)
            return EXIT_FAIL
        finally:
            resolver.close()
    for report in reports:
        print(f"{report.path}: {report.policy_domain}, {report.messages} messages")
        for uri, why in report.refused:
            print(f"  {uri!r}: skipped: refused rua URI: {why}")
        for address, outcome in outcomes.pop(report.report_id, ("", []))[1]:
            print(f"  {address}: {outcome}")
    for report_id, (path, items) in outcomes.items():
        print(f"{path}: report {report_id} of an earlier run, tried again")
        for address, outcome in items:
            print(f"  {address}: {outcome}")
    if not reports:
        print("no records to report")
    if skipped:
        print(f"{skipped} records of domains that asked for no reports left out")
    return EXIT_FAIL if failed else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("dmarc-report",
                              help="write DMARC aggregate reports (RFC 7489) from the history")
    from .command import DEFAULT_CONFIG
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--since", type=_duration, default=86400.0,
                   help="the period: records of the last DURATION (default 24h)")
    p.add_argument("--out", default=".", help="directory for the .xml.gz files (default .)")
    p.add_argument("--send", action="store_true",
                   help="mail each report to its rua addresses through the local MTA")
    p.set_defaults(func=cmd_dmarc_report)
