"""``mailwarden dmarc-report``: DMARC aggregate reports (RFC 7489 §7.2).

The dmarc check keeps one row per evaluated message in ``[check.dmarc]
history`` (SQLite, schema in :mod:`mailwarden.checks.dmarc`).  This command
reads the rows of a period not yet reported and writes, for each policy
domain that asked for aggregate reports (a ``rua=mailto:`` in the record it
published when the message was evaluated), one report:

* the XML of RFC 7489 Appendix C (namespace ``http://dmarc.org/dmarc-xml/0.1``),
  rows grouped by source IP, identifiers, evaluated policy and
  authentication results, each group with its message count;
* gzip-compressed, named ``receiver!policy-domain!begin!end!unique-id.xml.gz``
  (§7.2.1.1), ``receiver`` being ``[dmarc_report] domain``;
* ``report_metadata`` from ``[dmarc_report]`` (``org_name``, ``email``).

A domain whose record had no ``rua`` is never reported, not even inside
another domain's report.  A report written is recorded in the same SQLite
file (table ``dmarc_report``, made here) and the history rows it holds are
deleted in the same transaction, so a second run does not report them
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
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Optional

from .checks.dmarc import forget
from .orgdomain import organizational

log = logging.getLogger("mailwarden.dmarc_report")

NAMESPACE = "http://dmarc.org/dmarc-xml/0.1"

REPORT_SCHEMA = """
-- Aggregate reports written, and which history rows each one holds.
CREATE TABLE IF NOT EXISTS dmarc_report (
    report_id     TEXT PRIMARY KEY,
    policy_domain TEXT NOT NULL,
    begin         INTEGER NOT NULL,
    end           INTEGER NOT NULL,
    created       INTEGER NOT NULL,
    file          TEXT NOT NULL,
    messages      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dmarc_reported (
    message_id    INTEGER PRIMARY KEY,      -- dmarc_message.id
    report_id     TEXT NOT NULL REFERENCES dmarc_report (report_id)
);
"""

_DKIM_RESULTS = {"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"}
_SPF_RESULTS = {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"}
_OVERRIDES = {"forwarded", "sampled_out", "trusted_forwarder", "mailing_list", "local_policy",
              "other"}
_SIZE = re.compile(r"^(\d+)([kmgt]?)$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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


def parse_rua(text: str) -> list:
    """The mailto destinations of a ``rua`` value (other schemes are skipped)."""
    out = []
    for item in text.split(","):
        uri = item.strip()
        if not uri.lower().startswith("mailto:"):
            continue
        rest = uri[len("mailto:"):]
        size = None
        head, bang, tail = rest.rpartition("!")
        if bang:
            m = _SIZE.match(tail)
            if m:
                rest, size = head, int(m.group(1)) * _UNITS[m.group(2).lower()]
        address = urllib.parse.unquote(rest.split("?", 1)[0]).strip()
        if "@" in address:
            out.append(Destination(address, size))
    return out


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


# --------------------------------------------------------------------------
# reading the history


def _connect(path: str) -> sqlite3.Connection:
    if not path:
        raise ReportError("[check.dmarc] history is not set: there are no records to report")
    if not os.path.exists(path):
        raise ReportError(f"{path}: no DMARC history yet")
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(REPORT_SCHEMA)
    return conn


def _pending(conn: sqlite3.Connection, begin: int, end: int) -> list:
    return conn.execute(
        "SELECT m.* FROM dmarc_message m LEFT JOIN dmarc_reported r ON r.message_id = m.id"
        " WHERE r.message_id IS NULL AND m.received >= ? AND m.received <= ?"
        " ORDER BY m.id", (begin, end)).fetchall()


def _auth_results(conn: sqlite3.Connection, message_id: int) -> tuple:
    dkim = tuple(tuple(r) for r in conn.execute(
        "SELECT domain, selector, result FROM dmarc_dkim WHERE message_id = ?"
        " ORDER BY domain, selector, result", (message_id,)))
    spf = tuple(tuple(r) for r in conn.execute(
        "SELECT domain, scope, result FROM dmarc_spf WHERE message_id = ?"
        " ORDER BY domain, scope, result", (message_id,)))
    return dkim, spf


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
        el.text = str(text)
    return el


def build_xml(options, policy_domain: str, begin: int, end: int, report_id: str,
              latest: sqlite3.Row, groups: dict) -> bytes:
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
    reported; ``skipped`` counts rows of domains that asked for none."""
    options = config.dmarc_report
    missing = [k for k in ("org_name", "domain", "email") if not getattr(options, k)]
    if missing:
        raise ReportError("[dmarc_report] needs " + ", ".join(missing)
                          + " to write a report (report_metadata, file name)")
    now = int(time.time() if now is None else now)
    begin, end = now - int(since), now
    conn = _connect(config.checks["dmarc"].history)
    try:
        rows = _pending(conn, begin, end)
        by_domain: dict = {}
        skipped = 0
        for row in rows:
            if not parse_rua(row["rua"]):
                skipped += 1            # this domain did not ask for reports
                continue
            by_domain.setdefault(row["policy_domain"], []).append(row)
        reports = []
        for domain, domain_rows in sorted(by_domain.items()):
            groups: dict = {}
            for row in domain_rows:
                dkim, spf = _auth_results(conn, row["id"])
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
            reports.append(Report(domain, begin, end, report_id, filename, xml, buf.getvalue(),
                                  [r["id"] for r in domain_rows], len(domain_rows),
                                  parse_rua(latest["rua"])))
        return reports, skipped
    finally:
        conn.close()


def save(config, reports: list, out_dir: str) -> None:
    """Write each report to ``out_dir``, record it, and delete its rows from the history."""
    os.makedirs(out_dir, exist_ok=True)
    conn = _connect(config.checks["dmarc"].history)
    try:
        for report in reports:
            path = os.path.join(out_dir, report.filename)
            with open(path, "wb") as fh:
                fh.write(report.gz)
            report.path = path
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT INTO dmarc_report (report_id, policy_domain, begin, end,"
                             " created, file, messages) VALUES (?,?,?,?,?,?,?)",
                             (report.report_id, report.policy_domain, report.begin, report.end,
                              int(time.time()), path, report.messages))
                conn.executemany("INSERT INTO dmarc_reported (message_id, report_id) VALUES (?,?)",
                                 [(mid, report.report_id) for mid in report.message_ids])
                forget(conn, report.message_ids)      # reported: the history keeps them no more
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.close()


# --------------------------------------------------------------------------
# sending


def authorized(resolver, policy_domain: str, destination: Destination) -> tuple:
    """(may we send, why not): §7.1 external destination verification."""
    if organizational(destination.domain) == organizational(policy_domain):
        return True, ""
    name = f"{policy_domain}._report._dmarc.{destination.domain}"
    answer = resolver.query(name, "TXT")
    if answer.temporary:
        return False, f"{name}: {answer.status.value}, try again later"
    if answer.ok and any(re.match(r"^v\s*=\s*DMARC1\s*(;|$)", t) for t in answer.records):
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


def send(config, report: Report, resolver) -> list:
    """Mail ``report`` to its destinations; (address, outcome) for each."""
    options = config.dmarc_report
    command = shlex.split(options.sendmail)
    outcomes = []
    for dest in report.destinations:
        ok, why = authorized(resolver, report.policy_domain, dest)
        if not ok:
            outcomes.append((dest.address, f"skipped: {why}"))
            continue
        data = report_message(options, report, dest)
        if dest.max_size is not None and len(data) > dest.max_size:
            outcomes.append((dest.address, f"skipped: {len(data)} bytes is over its "
                                           f"!{dest.max_size} limit"))
            continue
        try:
            done = subprocess.run([*command, "-i", "-f", options.sender or options.email, "--",
                                   dest.address], input=data, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            outcomes.append((dest.address, f"failed: {exc}"))
            continue
        if done.returncode != 0:
            outcomes.append((dest.address, f"failed: sendmail exited {done.returncode}: "
                             + done.stderr.decode("utf-8", "replace").strip()[:200]))
        else:
            outcomes.append((dest.address, f"sent ({len(data)} bytes)"))
    return outcomes


# --------------------------------------------------------------------------
# command line


def _duration(text: str) -> float:
    from .config import ValueProblem, parse_seconds
    import argparse
    try:
        return parse_seconds(text)
    except ValueProblem as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_dmarc_report(args) -> int:
    from .cli import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, _load_config
    from .dns import Resolver

    config = _load_config(args.config)
    try:
        reports, skipped = make_reports(config, args.since)
        save(config, reports, args.out)
    except ReportError as exc:
        print(f"mailwarden: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (sqlite3.Error, OSError) as exc:
        print(f"mailwarden: dmarc-report: {exc}", file=sys.stderr)
        return EXIT_FAIL
    resolver = Resolver(config.dns) if args.send else None
    failed = False
    try:
        for report in reports:
            print(f"{report.path}: {report.policy_domain}, {report.messages} messages")
            if resolver is not None:
                for address, outcome in send(config, report, resolver):
                    print(f"  {address}: {outcome}")
                    failed |= outcome.startswith("failed")
    finally:
        if resolver is not None:
            resolver.close()
    if not reports:
        print("no records to report")
    if skipped:
        print(f"{skipped} records of domains that asked for no reports left out")
    return EXIT_FAIL if failed else EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("dmarc-report",
                              help="write DMARC aggregate reports (RFC 7489) from the history")
    from .cli import DEFAULT_CONFIG
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--since", type=_duration, default=86400.0,
                   help="the period: records of the last DURATION (default 24h)")
    p.add_argument("--out", default=".", help="directory for the .xml.gz files (default .)")
    p.add_argument("--send", action="store_true",
                   help="mail each report to its rua addresses through the local MTA")
    p.set_defaults(func=cmd_dmarc_report)
