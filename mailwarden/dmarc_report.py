"""``mailwarden dmarc-report``: DMARC aggregate reports (RFC 9990).

The dmarc check keeps one row per evaluated message in ``[check.dmarc]
history``: the DMARC records of :mod:`mailwarden.dmarc_records`, an SQLite
file on one host or a Redis server shared by several MX hosts (then one run
on any host reports the mail of all of them).  Each run holds the report
lock of the records (:data:`LOCK_TTL` seconds, renewed as it goes): a run
that finds it taken, on this host or another, does nothing, so two runs
never send the same report.  This command reads the rows of a period not
yet reported and writes, for each DMARC policy domain that asked for
aggregate reports (a ``rua=mailto:`` in the record it published when the
message was evaluated), one report:

* the XML of RFC 9990 Appendix A: namespace
  ``urn:ietf:params:xml:ns:dmarc-2.0``, ``version`` 1.0,
  ``report_metadata`` (``org_name``, ``email``, ``extra_contact_info`` of
  ``[dmarc_report]``, the Report-ID, the period, an ``error`` naming what
  the record got wrong, ``generator``), ``policy_published`` of the last
  record seen (domain, ``discovery_method`` and ``testing`` where the
  check recorded them, p, sp, np, fo, adkim, aspf with RFC 9989's
  defaults; no pct, rf or ri), then one ``record`` per source IP,
  identifiers, evaluated policy and authentication results, with its
  message count.  ``policy_evaluated/disposition`` is ``pass`` for a
  DMARC pass under quarantine or reject; ``reason`` carries the row's
  override, mapped by :data:`REASONS` onto RFC 9990's types
  (``local_policy``, ``mailing_list``, ``other``, ``policy_test_mode``,
  ``trusted_forwarder``), and is added where a failing message got
  another disposition than the record asked for.  DKIM results come in
  RFC 9990's order (aligned passes first), each with its selector and a
  ``human_result`` where the check gave one; SPF is the MAIL FROM
  identity alone (scope ``mfrom``: for the null sender, the HELO name);
* gzip-compressed, named ``receiver!policy-domain!begin!end!unique-id.xml.gz``
  (RFC 9990, "Email"), ``receiver`` being ``[dmarc_report] domain`` and
  ``unique-id`` the Report-ID itself (32 hex digits: RFC 9990, "Unique
  Identifiers in Aggregate Reporting", wants the two identical).  A
  domain's period begins where its last report ended (if that is within
  ``--since``), so that periods do not overlap.

A domain whose record had no ``rua`` is never reported, not even inside
another domain's report.  A report written is recorded in the same records
(SQLite: table ``dmarc_report``; Redis: with the compressed report, so
another host can send it again) and the history rows it holds are
deleted in the same step, so a second run does not report them
again and the history does not grow with what was reported (rows of
domains that asked for no reports go after ``[check.dmarc]
history_days``).

``--send`` mails each report to its ``rua`` addresses, in the order given,
through the local MTA (``[dmarc_report] sendmail``): a MIME message with
the Subject RFC 9990 gives (``Report Domain: D Submitter: R Report-ID: <ID>``),
a Message-ID made of the Report-ID, a short text part and the report
attached as ``application/gzip``.  A ``!size`` suffix (RFC 7489) is read
and ignored, as RFC 9989's record format says (obs-dmarc-report-size).
A destination outside the policy domain's organizational domain gets
reports only if ``<policy-domain>._report._dmarc.<destination host>`` has
a TXT record that is a DMARC tag list starting with ``v=DMARC1`` (RFC
9990, "Verifying External Destinations", checked through ``[dns]``); a
``rua`` in that record replaces the destination if all its URIs name the
same host, and if one names another host neither is used.

A ``rua`` is text the policy domain publishes, so every URI must be one
strict addr-spec once %-decoded (:func:`strict_address`: no list, group,
angle brackets, quotes, white space or control characters, no bang path or
percent hack, no leading ``-``); anything else is refused and shown (also
in the report's ``error``), never split or repaired.  At most
:data:`MAX_URIS` destinations per record.  sendmail runs once per address,
as ``sendmail -i -f SENDER -- ADDRESS``.

Delivery is recorded per (report, address) in ``dmarc_delivery``: pending
when the report is saved, ``sent`` only once sendmail exited 0.  A failure
(sendmail, a DNS temperror) stays pending and the next ``--send`` run tries
again with the saved file (same file name, same Report-ID), up to
:data:`MAX_ATTEMPTS` runs; a refusal (not authorized) is final.  One bad
destination never stops the others.

Bounds (``[dmarc_report]``): ``max_reports_per_run`` reports written per run
(the domains waiting longest first; the rest wait), ``max_mails_per_run``
report mails per run and ``max_mails_per_domain`` to one destination domain
(the rest stay pending for the next run).  The records keep sender-
controlled text bounded (``bound_text``, ``bound_rua`` and
``bound_identities`` of :mod:`mailwarden.dmarc_records`): names at most
253 characters, ``rua`` 1024, at most 20 DKIM signatures per message.

INI keys (``[dmarc_report]``):
  org_name, domain, email     report_metadata, the Submitter (required to write)
  extra_contact_info          report_metadata/extra_contact_info (default: none)
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
from .orgdomain import is_dmarc_record, is_domain, organizational, tree_walk

log = logging.getLogger("mailwarden.dmarc_report")

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"      # RFC 9990, IANA Considerations

_DKIM_RESULTS = {"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"}
_SPF_RESULTS = {"none", "neutral", "pass", "fail", "softfail", "policy", "temperror",
                "permerror"}
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
MAX_URIS = 5                    # destinations taken from one rua (RFC 9990: the receiver's limit)


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
    """(Destination or None, why not) for one ``rua`` URI (RFC 9989:
    a URI, a literal "!" or "," in it encoded; an obsolete ``"!" size``
    suffix is taken off and kept in ``max_size``, which nothing enforces)."""
    if uri[:7].lower() != "mailto:":
        return None, "not a mailto: URI"
    rest = uri[7:]
    size = None
    head, bang, tail = rest.rpartition("!")
    if bang:
        m = _SIZE.fullmatch(tail)
        if m is None or "!" in head or int(m.group(1)) >= 1 << 64:
            return None, "a \"!\" that is not a size suffix (RFC 9989)"
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
# the XML (RFC 9990, "Aggregate Reports" and Appendix A)

# The policy override types of RFC 9990, "Policy Override Reason".
OVERRIDE_TYPES = ("local_policy", "mailing_list", "other", "policy_test_mode",
                  "trusted_forwarder")

# The ``override`` word a history row holds -> (reason type, comment).  The
# RFC 9990 types stand for themselves; RFC 7489's ``forwarded`` and
# ``sampled_out`` (pct) have no RFC 9990 type and are reported as
# ``other`` with a comment saying what they were; any other word too.
REASONS = {t: (t, "") for t in OVERRIDE_TYPES}
REASONS.update({
    "forwarded": ("other", "forwarded (the RFC 7489 override type)"),
    "sampled_out": ("other", "sampled out by the record's pct (RFC 7489)"),
})

_ACTIONS = ("none", "quarantine", "reject")
MAX_DKIM_REPORTED = 100         # signatures per record (RFC 9990: SHOULD NOT exceed)
MAX_ERROR = 1000                # characters of report_metadata/error


def generator() -> str:
    from . import __version__
    return f"mailwarden {__version__}"


def _ip(text: str) -> str:
    """RFC 3986 §3.2.2 IPv4address or IPv6address: the canonical text form."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _sub(parent, name: str, text=None):
    el = ET.SubElement(parent, f"{{{NAMESPACE}}}{name}")
    if text is not None:
        el.text = NOT_XML.sub("?", str(text))
    return el


def _policy(value, default: str) -> str:
    return value if value in _ACTIONS else default


def published(row) -> dict:
    """policy_published of ``row``'s record, with the defaults of RFC 9989
    for what it did not publish (sp: p; np: sp, else p; fo: 0; adkim,
    aspf: r); testing and discovery_method only where the row has them."""
    p = _policy(row["p"], "none")
    sp = _policy(row["sp"], p)
    out = {"p": p, "sp": sp, "np": _policy(row["np"], sp),
           "fo": row["fo"] or "0",
           "adkim": row["adkim"] if row["adkim"] in ("r", "s") else "r",
           "aspf": row["aspf"] if row["aspf"] in ("r", "s") else "r"}
    if row["testing"] in ("y", "n"):
        out["testing"] = row["testing"]
    if row["discovery_method"] in ("treewalk", "psl"):
        out["discovery_method"] = row["discovery_method"]
    return out


def requested(row) -> set:
    """The policies the record asked for this row's mail: the one of its
    ``policy_tag``, or where the row does not say, p for the policy
    domain itself and sp or np for a subdomain."""
    pub = published(row)
    if row["policy_tag"] in ("p", "sp", "np"):
        return {pub[row["policy_tag"]]}
    if row["header_from"].lower().rstrip(".") == row["policy_domain"].lower().rstrip("."):
        return {pub["p"]}
    return {pub["sp"], pub["np"]}


def disposition(row) -> str:
    """policy_evaluated/disposition: for a DMARC pass ``pass`` where the
    record asked for quarantine or reject, else ``none``; for a fail what
    was applied (none, quarantine, reject)."""
    if row["result"] == "pass":
        return "pass" if requested(row) & {"quarantine", "reject"} else "none"
    return _policy(row["disposition"], "none")


def reasons(row) -> tuple:
    """policy_evaluated/reason: ((type, comment), ...).  The row's
    override, mapped by :data:`REASONS`; and where a failing message got
    another disposition than the record asked for and the row names no
    override, one all the same (RFC 9990, "policy_evaluated": it MUST be there):
    ``policy_test_mode`` under t=y, else ``other``."""
    word = row["override"]
    if word:
        kind, comment = REASONS.get(word, ("other", word))
        return ((kind, row["override_comment"] or comment),)
    applied = disposition(row)
    if row["result"] != "pass" and applied not in requested(row):
        if row["testing"] == "y":
            return (("policy_test_mode", ""),)
        return (("other", f"{applied} applied, the record asks for "
                          + " or ".join(sorted(requested(row)))),)
    return ()


def _dkim_order(header_from: str):
    """RFC 9990's preference ("DKIM Signatures in Aggregate Reports"): a
    pass in strict alignment with the From domain, one in relaxed
    alignment, any other pass, the rest."""
    header_from = header_from.lower().rstrip(".")
    org = organizational(header_from)

    def rank(entry):
        domain, _selector, result, _human = entry
        if result != "pass":
            return 3
        domain = domain.lower().rstrip(".")
        if domain == header_from:
            return 0
        return 1 if org and organizational(domain) == org else 2
    return rank


def record_key(row) -> tuple:
    """The key rows are counted under: one ``record`` per source IP,
    identifiers, evaluated policy and authentication results."""
    dkim = row.dkim
    if len(dkim) > 1:
        dkim = tuple(sorted(dkim, key=_dkim_order(row["header_from"])))[:MAX_DKIM_REPORTED]
    # RFC 9990 reports the MAIL FROM identity alone (scope mfrom): for the
    # null sender that is the HELO name (RFC 7208 §2.4), kept as scope helo
    spf = next((e for e in row.spf if e[1] == "mfrom"), row.spf[0] if row.spf else None)
    return (row["source_ip"], row["header_from"], row["envelope_from"], row["envelope_to"],
            disposition(row), bool(row["dkim_aligned"]), bool(row["spf_aligned"]),
            reasons(row), dkim, spf)


def report_error(latest, refused: list) -> str:
    """report_metadata/error: what the record's own text got wrong, as the
    check recorded it, and the rua URIs not used."""
    parts = [latest["record_error"]] if latest["record_error"] else []
    if refused:
        parts.append(f"rua: {len(refused)} URI(s) not used: " + "; ".join(
            f"{uri!r} ({why})" for uri, why in refused))
    text = " ".join(parts)
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 3] + "..."


def build_xml(options, policy_domain: str, begin: int, end: int, report_id: str,
              latest, groups: dict, error: str = "") -> bytes:
    """The report of RFC 9990 Appendix A.  ``groups``: :func:`record_key`
    -> message count; ``latest``: the last row, whose record is the one
    published (RFC 9990: the final configuration observed)."""
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}feedback")
    _sub(root, "version", "1.0")
    meta = _sub(root, "report_metadata")
    _sub(meta, "org_name", options.org_name)
    _sub(meta, "email", options.email)
    if options.extra_contact_info:
        _sub(meta, "extra_contact_info", options.extra_contact_info)
    _sub(meta, "report_id", report_id)
    dates = _sub(meta, "date_range")
    _sub(dates, "begin", begin)
    _sub(dates, "end", end)
    if error:
        _sub(meta, "error", error)
    _sub(meta, "generator", generator())
    pub = _sub(root, "policy_published")
    _sub(pub, "domain", policy_domain)
    values = published(latest)
    for name in ("discovery_method", "p", "sp", "np", "fo", "adkim", "aspf", "testing"):
        if name in values:
            _sub(pub, name, values[name])
    for key, count in groups.items():
        (ip, header_from, envelope_from, envelope_to, action, dkim_aligned,
         spf_aligned, why, dkim, spf) = key
        record = _sub(root, "record")
        row = _sub(record, "row")
        _sub(row, "source_ip", _ip(ip))
        _sub(row, "count", count)
        evaluated = _sub(row, "policy_evaluated")
        _sub(evaluated, "disposition", action)
        _sub(evaluated, "dkim", "pass" if dkim_aligned else "fail")
        _sub(evaluated, "spf", "pass" if spf_aligned else "fail")
        for kind, comment in why:
            reason = _sub(evaluated, "reason")
            _sub(reason, "type", kind if kind in OVERRIDE_TYPES else "other")
            if comment:
                _sub(reason, "comment", comment)
        ids = _sub(record, "identifiers")
        _sub(ids, "header_from", header_from)
        _sub(ids, "envelope_from", envelope_from)     # empty: the null reverse-path
        if envelope_to:
            _sub(ids, "envelope_to", envelope_to)
        auth = _sub(record, "auth_results")
        for domain, selector, result, human in dkim:
            d = _sub(auth, "dkim")
            _sub(d, "domain", domain)
            _sub(d, "selector", selector)
            _sub(d, "result", result if result in _DKIM_RESULTS else "permerror")
            if human:
                _sub(d, "human_result", human)
        if spf is not None:
            domain, _scope, result, human = spf
            s = _sub(auth, "spf")
            _sub(s, "domain", domain)
            _sub(s, "scope", "mfrom")
            _sub(s, "result", result if result in _SPF_RESULTS else "permerror")
            if human:
                _sub(s, "human_result", human)
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
    rows of the others wait for the next run.

    A domain's period begins where its last report ended, if that is later
    than ``now - since`` (RFC 9990, "date_range": periods SHOULD NOT overlap),
    and never after its oldest row."""
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
        last = records.last_report_end([domain for domain, _rows in chosen])
        reports = []
        for domain, domain_rows in chosen:
            groups: dict = {}
            for row in domain_rows:
                key = record_key(row)
                groups[key] = groups.get(key, 0) + 1
            latest = domain_rows[-1]
            start = max(begin, min(last.get(domain, begin), domain_rows[0]["received"]))
            # RFC 9990: the Report-ID and the file name's
            # unique-id are one and the same (so letters and digits only)
            report_id = uuid.uuid4().hex
            destinations, refused = check_rua(latest["rua"])
            xml = build_xml(options, domain, start, end, report_id, latest, groups,
                            report_error(latest, refused))
            filename = f"{options.domain}!{domain}!{start}!{end}!{report_id}.xml.gz"
            buf = io.BytesIO()
            with gzip.GzipFile(filename=filename[:-3], mode="wb", fileobj=buf, mtime=now) as gz:
                gz.write(xml)
            reports.append(Report(domain, start, end, report_id, filename, xml, buf.getvalue(),
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


_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def dmarc_tags(text: str) -> Optional[dict]:
    """The tags of a TXT record that passes step 6 of RFC 9990's external
    destination check (a tag=value list, the same format as a DMARC
    record, ``v=DMARC1`` first; a trailing ";" optional), None for one
    that does not.  A tag named twice fails it too: which ``rua`` would
    then replace the destination is not clear, and none is the safe side."""
    parts = [part.strip(" \t") for part in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()
    tags: dict = {}
    for i, part in enumerate(parts):
        tag, eq, value = part.partition("=")
        tag, value = tag.strip(" \t"), value.strip(" \t")
        if not eq or not _TAG.fullmatch(tag) or tag.lower() in tags:
            return None
        if i == 0 and (tag.lower() != "v" or value != "DMARC1"):
            return None
        tags[tag.lower()] = value
    return tags or None


@dataclass(frozen=True)
class Authorization:
    """Whether a report may go to one ``rua`` destination (RFC 9990, "Verifying External
    Destinations")."""

    ok: bool
    why: str = ""
    # the destinations to mail instead (the override of step 9), or None
    instead: Optional[tuple] = None
    temporary: bool = False


def walk_organizational(resolver, domain: str) -> str:
    """The organizational domain of ``domain`` by RFC 9989's tree walk, as
    RFC 9990 compares them for external destinations; '' when a lookup the
    walk needed failed (the destination is then verified as external)."""
    def lookup(qname):
        answer = resolver.query(qname, "TXT")
        if answer.temporary:
            return None
        return list(answer.records) if answer.ok else []
    try:
        return tree_walk(domain.lower().rstrip(".").encode("idna").decode("ascii"),
                         lookup).organizational
    except UnicodeError:
        return ""


def verify(resolver, policy_domain: str, destination: Destination) -> Authorization:
    """RFC 9990, "Verifying External Destinations".  A destination in the
    policy domain's organizational domain (each by its tree walk) needs
    nothing; any other needs a
    ``<policy-domain>._report._dmarc.<destination host>`` TXT record that
    is a DMARC tag list with ``v=DMARC1`` first.  If that record has a
    ``rua``, its URIs replace the destination (step 9), provided each of
    them names the same destination host; if one names another host,
    neither the original nor the override is used."""
    host = destination.domain
    org = walk_organizational(resolver, host)
    if org and org == walk_organizational(resolver, policy_domain):
        return Authorization(True)
    try:
        name = f"{policy_domain.encode('idna').decode('ascii')}._report._dmarc.{host}"
    except UnicodeError as exc:
        return Authorization(False, f"external destination not authorized: {exc}")
    if len(name) > 253 or any(not 0 < len(label) <= 63 for label in name.split(".")):
        return Authorization(False, f"external destination not authorized: {name[:80]}... "
                              "is no DNS name (too long)")
    answer = resolver.query(name, "TXT")
    if answer.temporary:
        return Authorization(False, f"{name}: {answer.status.value}, try again later",
                             temporary=True)
    records = [tags for tags in (dmarc_tags(t) for t in (answer.records if answer.ok else ())
                                 if is_dmarc_record(t))
               if tags is not None]
    if not records:
        return Authorization(False, f"external destination not authorized: no v=DMARC1 at {name}")
    override = next((tags["rua"] for tags in records if tags.get("rua")), None)
    if override is None:
        return Authorization(True)
    instead, _refused = check_rua(override)
    others = sorted({d.domain for d in instead if d.domain != host})
    if others:
        return Authorization(False, f"the rua of {name} names another host ({others[0]}): "
                              "no report to it nor to the original address")
    if not instead:
        return Authorization(False, f"the rua of {name} has no usable mailto: URI")
    return Authorization(True, instead=tuple(instead))


def authorized(resolver, policy_domain: str, destination: Destination) -> tuple:
    """(may we send, why not): :func:`verify` without the override."""
    verdict = verify(resolver, policy_domain, destination)
    return verdict.ok, verdict.why


# Header lines up to RFC 5322's 998 characters: the attachment's file name
# (about 100 characters) stays one quoted parameter, as RFC 9990 writes it,
# not RFC 2231 pieces with "!" %-encoded that a simple report parser misreads.
_MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


def _utc(when: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))


def report_message(options, report: Report, destination: Destination) -> bytes:
    """The report mail (RFC 9990, "Email"): the Subject of its ABNF, a short
    text part and the report as an ``application/gzip`` attachment named as
    the file; the Message-ID carries the Report-ID, so that a mail sent
    again is known as the same report."""
    msg = email.message.EmailMessage(policy=_MAIL_POLICY)
    sender = options.sender or options.email
    msg["From"] = sender
    msg["To"] = destination.address
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = f"<{report.report_id}@{options.domain}>"
    msg["Subject"] = (f"Report Domain: {report.policy_domain} Submitter: {options.domain} "
                      f"Report-ID: <{report.report_id}>")
    msg.set_content(
        f"DMARC aggregate report for {report.policy_domain} from {options.org_name}\n"
        f"({report.messages} messages, {_utc(report.begin)} to {_utc(report.end)} UTC).\n")
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
    """Mail ``report`` to one destination (or to the override its
    ``_report._dmarc`` record names).  The outcome starts with ``sent``,
    ``skipped:`` (never to be sent there: not allowed), ``deferred:`` (over
    a cap; the next run sends it) or ``failed:`` (sendmail did not take
    it, or DNS could not say whether the destination is allowed; the next
    run tries again).  A ``!size`` suffix is obsolete (RFC 9989:
    reporters ignore it) and is not enforced."""
    why = strict_address(dest.address)    # whatever built the Destination
    if why:
        return f"skipped: {why}"
    try:
        verdict = verify(resolver, report.policy_domain, dest)
    except (ValueError, UnicodeError) as exc:
        verdict = Authorization(False, f"external destination not authorized: {exc}")
    if not verdict.ok:        # a DNS failure is tried again by the next run, as a sendmail one
        return ("failed: " if verdict.temporary else "skipped: ") + verdict.why
    if verdict.instead is None:
        return _mail(config, report, dest, caps, runner)
    outcomes = [(d.address, _mail(config, report, d, caps, runner)) for d in verdict.instead]
    # the worst outcome is the delivery's: a failure is tried again (the
    # addresses sent to get it again, as the same report, the same file name)
    word = next(w for w in ("failed", "deferred", "sent", "skipped")
                if w == "skipped" or any(o.startswith(w) for _a, o in outcomes))
    return f"{word}: to the rua of its _report._dmarc record instead: " + "; ".join(
        f"{a}: {o}" for a, o in outcomes)


def _mail(config, report: Report, dest: Destination, caps: Caps, runner=None) -> str:
    """One sendmail run for an address already allowed."""
    options = config.dmarc_report
    why = strict_address(dest.address)
    if why:
        return f"skipped: {why}"
    refusal = caps.refusal(dest.domain)
    if refusal:
        return f"deferred: {refusal}"
    try:
        data = report_message(options, report, dest)
    except (ValueError, TypeError) as exc:
        return f"skipped: the report mail cannot be made: {exc}"
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
                              help="write DMARC aggregate reports (RFC 9990) from the history")
    from .command import DEFAULT_CONFIG
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("--since", type=_duration, default=86400.0,
                   help="the period: records of the last DURATION (default 24h)")
    p.add_argument("--out", default=".", help="directory for the .xml.gz files (default .)")
    p.add_argument("--send", action="store_true",
                   help="mail each report to its rua addresses through the local MTA")
    p.set_defaults(func=cmd_dmarc_report)
