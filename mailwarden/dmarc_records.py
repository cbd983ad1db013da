"""DMARC records: what the dmarc check evaluated, kept for aggregate reports.

One interface, :class:`Records`, two backends:

* :class:`SqliteRecords` (``[check.dmarc] history = /path/file.sqlite``, the
  default and zero-setup one): one SQLite file (WAL mode) on one host; the
  schema is :data:`SCHEMA` and :data:`REPORT_SCHEMA`.
* :class:`RedisRecords` (``history = redis://HOST:PORT/DB``): the Redis
  server the limits use (``[state]`` gives its timeouts, pool and key
  prefix), shared by several MX hosts, so that one ``mailwarden
  dmarc-report`` run on any of them makes one report per policy domain and
  period covering the mail of all of them.

The interface:

``record(evaluation)``
    Keep one message's evaluation (an :class:`Evaluation`); what the
    sender controls is bounded first (:func:`bounded`).  Every
    :data:`PURGE_INTERVAL` seconds (of the evaluations' own times) the
    writer also expires rows older than ``history_days``, at most
    :data:`PURGE_BATCH` at a time (:meth:`Records.expire`).
``rows(begin, end)``
    The rows received in ``[begin, end]`` not yet reported, oldest first,
    each a :class:`Row` with its DKIM and SPF results.
``save_report(report, ids, deliveries, now)``
    Record a report written and delete the rows it holds, in one step;
    ``deliveries`` (address, max_size) are queued as pending.
``last_report_end(domains)``
    {policy domain: end of its last report saved}, for the domains that
    have one (a report period begins where the last one ended).
``deliveries()`` / ``update_delivery(...)``
    The report mails still pending, oldest report first; the outcome of one
    (``pending``, ``sent``, ``skipped``, ``abandoned``).
``lock(ttl, now)`` -> :class:`Lock` or None
    The report lock, held in the store itself (a row in SQLite, a key with
    an expiry in Redis): while one ``dmarc-report`` run holds it, another
    (on this host or another) gets None and does nothing.  A run that dies
    loses it after ``ttl`` seconds.

What is kept of a message is an :class:`Evaluation`, named after the
elements of the RFC 9990 report.  Its last fields are optional, for the
evaluation to fill where it knows them ('' = not recorded, the report then
leaves the element out or derives it): ``discovery_method`` (``treewalk``
or ``psl``), ``testing`` (the record's ``t=``: ``y``/``n``), ``policy_tag``
(``p``, ``sp`` or ``np``: whose policy applied), ``override_comment`` (the
comment of the override reason) and ``record_error`` (what was wrong with
the published record); a DKIM or SPF entry may carry a fourth field,
``human_result``.  An SQLite file written by an earlier version gets the
new columns at its first open (:data:`MIGRATIONS`); a Redis record
without them reads with the defaults, and fields this version does not
know are left out.

Every backend failure raises :class:`RecordsError`; the check logs it and
the message goes on, ``dmarc-report`` reports it and exits non-zero.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

__all__ = ["Evaluation", "Row", "Records", "RecordsError", "SqliteRecords", "RedisRecords",
           "open_records", "is_redis", "bound_text", "bound_rua", "bound_identities"]


class RecordsError(Exception):
    """The DMARC records cannot be read or written."""


# --------------------------------------------------------------------------
# bounds of what the history keeps of text others control: a DKIM d= or s=,
# a From or envelope domain, the rua of a record.  Over its bound a name is
# cut and marked with "..." (so it can never pass for a real name), a rua
# keeps only its whole URIs; characters XML 1.0 cannot carry become "?".

MAX_NAME = 253                  # a domain name (RFC 1035 §2.3.4), a selector
MAX_RUA = 1024
MAX_SHORT = 32                  # fo, a result word
MAX_COMMENT = 256               # a human_result, an override comment, a record error
MAX_DKIM_ROWS = 20              # DKIM signatures kept per message
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def bound_text(text, limit: int = MAX_NAME) -> str:
    text = NOT_XML.sub("?", "" if text is None else str(text))
    if len(text) > limit:
        return text[:limit - 3] + "..."
    return text


def bound_rua(text) -> str:
    text = NOT_XML.sub("?", text or "")
    if len(text) <= MAX_RUA:
        return text
    cut = text.rfind(",", 0, MAX_RUA + 1)
    return text[:cut] if cut > 0 else ""


def _identity(entry) -> tuple:
    """One DKIM (domain, selector, result[, human_result]) or SPF (domain,
    scope, result[, human_result]) entry as kept: four fields, bounded."""
    entry = tuple(entry)
    first, second, result = entry[:3]
    human = entry[3] if len(entry) > 3 else ""
    return (bound_text(first), bound_text(second), bound_text(result, MAX_SHORT),
            bound_text(human, MAX_COMMENT))


def bound_identities(dkim, spf) -> tuple:
    """(dkim, spf) as the history keeps them: at most :data:`MAX_DKIM_ROWS`
    signatures and two SPF identities, each a 4-tuple of bounded fields
    (a 3-tuple is taken with an empty human_result)."""
    return (tuple(_identity(x) for x in list(dkim)[:MAX_DKIM_ROWS]),
            tuple(_identity(x) for x in list(spf)[:2]))


# --------------------------------------------------------------------------
# what is kept


@dataclass(frozen=True)
class Evaluation:
    """One message evaluated against a published DMARC record; the names
    are those of the aggregate report (RFC 9990; see :data:`SCHEMA`).

    The fields after ``spf`` are optional: a writer that does not know
    them leaves their defaults, and the report then leaves the element out
    (or derives it, see :mod:`mailwarden.dmarc_report`)."""

    received: int
    queue_id: str
    source_ip: str
    header_from: str
    envelope_from: str
    envelope_to: str
    policy_domain: str
    p: str
    sp: Optional[str]
    np: Optional[str]
    pct: int
    adkim: str
    aspf: str
    fo: str
    rua: str
    result: str
    dkim_aligned: bool
    spf_aligned: bool
    disposition: str
    override: str
    # (domain, selector, result[, human_result]) per signature
    dkim: tuple = ()
    # (domain, scope, result[, human_result]): mfrom, or helo for the null sender
    spf: tuple = ()
    # how the record was found: "treewalk" (RFC 9989) or "psl" (RFC 7489)
    discovery_method: str = ""
    # the record's t= tag: "y" or "n" ("" not recorded)
    testing: str = ""
    # which tag's policy applied to this message: "p", "sp" or "np"
    policy_tag: str = ""
    # free text for policy_evaluated/reason/comment, with ``override``
    override_comment: str = ""
    # what was wrong with the published record (report_metadata/error)
    record_error: str = ""


_IDENTITIES = ("dkim", "spf")
_MESSAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Evaluation)
                        if f.name not in _IDENTITIES)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Evaluation)
             if f.default is not dataclasses.MISSING}


@dataclass(frozen=True)
class Row(Evaluation):
    """An :class:`Evaluation` as stored, with its id in the store; its
    ``dkim`` and ``spf`` entries always have four fields."""

    id: int = 0

    def __getitem__(self, name):
        return getattr(self, name)


def bounded(ev: Evaluation) -> Evaluation:
    """``ev`` with every field the sender or a policy domain controls bounded."""
    dkim, spf = bound_identities(ev.dkim, ev.spf)
    return dataclasses.replace(
        ev, received=int(ev.received), queue_id=bound_text(ev.queue_id),
        source_ip=bound_text(ev.source_ip, 64), header_from=bound_text(ev.header_from),
        envelope_from=bound_text(ev.envelope_from), envelope_to=bound_text(ev.envelope_to),
        policy_domain=bound_text(ev.policy_domain), fo=bound_text(ev.fo, MAX_SHORT),
        rua=bound_rua(ev.rua), dkim_aligned=bool(ev.dkim_aligned),
        spf_aligned=bool(ev.spf_aligned), dkim=dkim, spf=spf,
        discovery_method=bound_text(ev.discovery_method, MAX_SHORT),
        testing=bound_text(ev.testing, MAX_SHORT), policy_tag=bound_text(ev.policy_tag, MAX_SHORT),
        override_comment=bound_text(ev.override_comment, MAX_COMMENT),
        record_error=bound_text(ev.record_error, MAX_COMMENT))


def _row(values: dict, dkim, spf, mid: int) -> Row:
    """A :class:`Row` from stored values: a field the writer did not know
    takes its default, one this version does not know is left out."""
    known = {name: values.get(name, _DEFAULTS.get(name)) for name in _MESSAGE_FIELDS}
    for name in ("dkim_aligned", "spf_aligned"):
        known[name] = bool(known[name])
    for name in ("discovery_method", "testing", "policy_tag", "override_comment",
                 "record_error"):
        known[name] = known[name] or ""
    dkim, spf = bound_identities(dkim, spf)   # bounded again: whatever else wrote them
    return Row(**known, dkim=dkim, spf=spf, id=mid)


PURGE_INTERVAL = 3600.0     # seconds between two purges of old rows
PURGE_BATCH = 2000          # messages per purge (about 20 ms): a write never waits long
_ID_CHUNK = 500             # ids per DELETE statement (SQLite's variable limit)


class Lock:
    """The report lock, held until :meth:`release` or its ``ttl`` runs out."""

    def __init__(self, records: "Records", token: str, ttl: float):
        self.records, self.token, self.ttl = records, token, ttl

    def renew(self, now: float) -> bool:
        """Push the expiry ``ttl`` seconds past ``now``; False if the lock was lost."""
        return self.records._renew(self.token, self.ttl, now)

    def release(self) -> None:
        self.records._release(self.token)


class Records:
    """The interface; see the module docstring."""

    def __init__(self, days: int = 14):
        self.keep = int(days) * 86400
        self._next_purge = 0.0
        self._purge_lock = threading.Lock()

    def record(self, ev: Evaluation) -> None:
        ev = bounded(ev)
        self._write(ev)
        if ev.received >= self._next_purge and self._purge_lock.acquire(blocking=False):
            try:
                self.expire(ev.received)
            finally:
                self._purge_lock.release()

    def expire(self, now: float) -> int:
        """Delete up to :data:`PURGE_BATCH` rows received more than
        ``history_days`` before ``now``; how many were deleted."""
        self._next_purge = now + PURGE_INTERVAL     # after an error too: not on every write
        done = self._expire(int(now) - self.keep, PURGE_BATCH)
        if done == PURGE_BATCH:
            self._next_purge = now      # more may be waiting: go on at the next write
        return done

    def lock(self, ttl: float, now: float) -> Optional[Lock]:
        token = uuid.uuid4().hex
        return Lock(self, token, ttl) if self._acquire(token, ttl, now) else None

    # -- per backend ----------------------------------------------------------

    def _write(self, ev: Evaluation) -> None:
        raise NotImplementedError

    def _expire(self, before: int, limit: int) -> int:
        raise NotImplementedError

    def rows(self, begin: int, end: int) -> list:
        raise NotImplementedError

    def save_report(self, report: dict, ids: list, deliveries: list, now: int) -> None:
        """``report``: report_id, policy_domain, begin, end, file, messages
        and gz (the compressed report, kept where another host may need it)."""
        raise NotImplementedError

    def last_report_end(self, domains: list) -> dict:
        raise NotImplementedError

    def deliveries(self) -> list:
        """Pending report mails: dicts with report_id, address, max_size,
        attempts, policy_domain, begin, end, file, messages and gz (None
        where the file holds it)."""
        raise NotImplementedError

    def update_delivery(self, report_id: str, address: str, state: str, attempts: int,
                        detail: str, now: int) -> None:
        raise NotImplementedError

    def _acquire(self, token: str, ttl: float, now: float) -> bool:
        raise NotImplementedError

    def _renew(self, token: str, ttl: float, now: float) -> bool:
        raise NotImplementedError

    def _release(self, token: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------
# SQLite: one host

SCHEMA = """
-- One row per message evaluated against a published DMARC record.
-- Columns follow the aggregate report's element names (RFC 9990).
CREATE TABLE IF NOT EXISTS dmarc_message (
    id            INTEGER PRIMARY KEY,
    received      INTEGER NOT NULL,   -- Unix time (UTC) of the evaluation
    queue_id      TEXT NOT NULL,      -- MTA queue id, '' if unknown
    source_ip     TEXT NOT NULL,      -- record/row/source_ip
    header_from   TEXT NOT NULL,      -- identifiers/header_from (the From domain)
    envelope_from TEXT NOT NULL,      -- identifiers/envelope_from ('' = null sender)
    envelope_to   TEXT NOT NULL,      -- identifiers/envelope_to (first recipient domain)
    policy_domain TEXT NOT NULL,      -- policy_published/domain: where the record was found
    p             TEXT NOT NULL,      -- policy_published/p
    sp            TEXT,               -- policy_published/sp (NULL: not given)
    np            TEXT,               -- policy_published/np (NULL: not given)
    pct           INTEGER NOT NULL,   -- RFC 7489 pct (no longer reported)
    adkim         TEXT NOT NULL,      -- policy_published/adkim (r or s)
    aspf          TEXT NOT NULL,      -- policy_published/aspf (r or s)
    fo            TEXT NOT NULL,      -- policy_published/fo
    rua           TEXT NOT NULL,      -- the record's rua (where reports go)
    result        TEXT NOT NULL,      -- DMARC result: pass or fail
    dkim_aligned  INTEGER NOT NULL,   -- policy_evaluated/dkim: 1 pass, 0 fail
    spf_aligned   INTEGER NOT NULL,   -- policy_evaluated/spf: 1 pass, 0 fail
    disposition   TEXT NOT NULL,      -- applied: none, quarantine, reject
    override      TEXT NOT NULL,      -- reason/type ('' none; see dmarc_report.REASONS)
    -- added in user_version 2 (ALTER TABLE on older files, see MIGRATIONS)
    discovery_method TEXT NOT NULL DEFAULT '',  -- policy_published/discovery_method
    testing       TEXT NOT NULL DEFAULT '',     -- policy_published/testing (t=): y, n
    policy_tag    TEXT NOT NULL DEFAULT '',     -- p, sp or np: whose policy applied
    override_comment TEXT NOT NULL DEFAULT '',  -- reason/comment
    record_error  TEXT NOT NULL DEFAULT ''      -- report_metadata/error
);
CREATE INDEX IF NOT EXISTS dmarc_message_domain ON dmarc_message (policy_domain, received);
CREATE INDEX IF NOT EXISTS dmarc_message_received ON dmarc_message (received);
-- auth_results/dkim: one row per DKIM signature checked
CREATE TABLE IF NOT EXISTS dmarc_dkim (
    message_id    INTEGER NOT NULL REFERENCES dmarc_message (id) ON DELETE CASCADE,
    domain        TEXT NOT NULL,
    selector      TEXT NOT NULL,
    result        TEXT NOT NULL,      -- RFC 8601 dkim result
    human_result  TEXT NOT NULL DEFAULT ''
);
-- auth_results/spf: the MAIL FROM (scope mfrom) identity
CREATE TABLE IF NOT EXISTS dmarc_spf (
    message_id    INTEGER NOT NULL REFERENCES dmarc_message (id) ON DELETE CASCADE,
    domain        TEXT NOT NULL,
    scope         TEXT NOT NULL,      -- mfrom (helo for the null sender)
    result        TEXT NOT NULL,
    human_result  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dmarc_dkim_message ON dmarc_dkim (message_id);
CREATE INDEX IF NOT EXISTS dmarc_spf_message ON dmarc_spf (message_id);
"""

SCHEMA_VERSION = 2
# Columns added since user_version 1: (table, column, declaration).  A file
# written by an older version gets them at its first open, with defaults,
# so its rows stay readable and an older writer's INSERTs keep working.
MIGRATIONS = (
    ("dmarc_message", "discovery_method", "TEXT NOT NULL DEFAULT ''"),
    ("dmarc_message", "testing", "TEXT NOT NULL DEFAULT ''"),
    ("dmarc_message", "policy_tag", "TEXT NOT NULL DEFAULT ''"),
    ("dmarc_message", "override_comment", "TEXT NOT NULL DEFAULT ''"),
    ("dmarc_message", "record_error", "TEXT NOT NULL DEFAULT ''"),
    ("dmarc_dkim", "human_result", "TEXT NOT NULL DEFAULT ''"),
    ("dmarc_spf", "human_result", "TEXT NOT NULL DEFAULT ''"),
)


def migrate(conn: sqlite3.Connection) -> None:
    """Add the :data:`MIGRATIONS` columns a history file lacks (in one
    immediate transaction: two processes opening an old file at once add
    each column once)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, declaration in MIGRATIONS:
            columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if columns and column not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                        " AND name = 'dmarc_message'").fetchone() is not None:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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
-- Mail of a report to one rua address (--send): pending until sendmail took
-- it, so that a failure is tried again by the next run, never lost.
CREATE TABLE IF NOT EXISTS dmarc_delivery (
    report_id     TEXT NOT NULL REFERENCES dmarc_report (report_id),
    address       TEXT NOT NULL,            -- one strict addr-spec
    max_size      INTEGER,                  -- its rua !size, NULL: none
    state         TEXT NOT NULL,            -- pending, sent, skipped, abandoned
    attempts      INTEGER NOT NULL DEFAULT 0,
    detail        TEXT NOT NULL DEFAULT '',
    updated       INTEGER NOT NULL,
    PRIMARY KEY (report_id, address)
);
CREATE INDEX IF NOT EXISTS dmarc_delivery_state ON dmarc_delivery (state);
-- The report lock: at most one row, held by one dmarc-report run until
-- it is released or expires.
CREATE TABLE IF NOT EXISTS dmarc_lock (
    name          TEXT PRIMARY KEY,
    token         TEXT NOT NULL,
    expires       REAL NOT NULL
);
"""


def forget(conn: sqlite3.Connection, ids) -> None:
    """Delete the history rows ``ids`` with their DKIM and SPF rows and their
    reported marks, inside the caller's transaction.  The marks go too:
    SQLite may give a deleted id to a new row, which a stale mark would
    then hide from every report."""
    ids = list(ids)
    marks = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                         " AND name = 'dmarc_reported'").fetchone() is not None
    for i in range(0, len(ids), _ID_CHUNK):
        chunk = [(mid,) for mid in ids[i:i + _ID_CHUNK]]
        conn.executemany("DELETE FROM dmarc_dkim WHERE message_id = ?", chunk)
        conn.executemany("DELETE FROM dmarc_spf WHERE message_id = ?", chunk)
        if marks:
            conn.executemany("DELETE FROM dmarc_reported WHERE message_id = ?", chunk)
        conn.executemany("DELETE FROM dmarc_message WHERE id = ?", chunk)


class SqliteRecords(Records):
    """One SQLite connection shared by all threads, guarded by a lock.  The
    writer (the milter) makes :data:`SCHEMA`; the reader (``dmarc-report``,
    ``report=True``) also :data:`REPORT_SCHEMA`."""

    def __init__(self, path: str, days: int = 14, report: bool = False, timeout: float = 5):
        super().__init__(days)
        self.path = path
        self.report = report
        self.timeout = timeout
        self._conn: Optional[sqlite3.Connection] = None
        self._lock = threading.RLock()

    def __str__(self) -> str:
        return self.path

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False,
                                   isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                if not self.report:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.executescript(SCHEMA)
                else:
                    conn.executescript(REPORT_SCHEMA)
                migrate(conn)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _transaction(self, work, mode: str = "BEGIN"):
        """``work(conn)`` inside one transaction, under the lock; a SQLite
        error becomes :class:`RecordsError`."""
        try:
            with self._lock:
                conn = self._connection()
                conn.execute(mode)
                try:
                    out = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return out
        except sqlite3.Error as exc:
            raise RecordsError(f"{self.path}: {exc}") from None

    def _write(self, ev: Evaluation) -> None:
        row = tuple(int(v) if isinstance(v, bool) else v
                    for v in (getattr(ev, name) for name in _MESSAGE_FIELDS))
        insert = (f"INSERT INTO dmarc_message ({', '.join(_MESSAGE_FIELDS)})"
                  f" VALUES ({','.join('?' * len(_MESSAGE_FIELDS))})")

        def work(conn):
            mid = conn.execute(insert, row).lastrowid
            conn.executemany(
                "INSERT INTO dmarc_dkim (message_id, domain, selector, result, human_result)"
                " VALUES (?,?,?,?,?)", [(mid, *entry) for entry in ev.dkim])
            conn.executemany(
                "INSERT INTO dmarc_spf (message_id, domain, scope, result, human_result)"
                " VALUES (?,?,?,?,?)", [(mid, *entry) for entry in ev.spf])
        self._transaction(work)

    def _expire(self, before: int, limit: int) -> int:
        def work(conn):
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM dmarc_message WHERE received < ? ORDER BY received LIMIT ?",
                (before, limit))]
            if ids:
                forget(conn, ids)
            return len(ids)
        return self._transaction(work, "BEGIN IMMEDIATE")

    def rows(self, begin: int, end: int) -> list:
        def work(conn):
            marks = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                 " AND name = 'dmarc_reported'").fetchone() is not None
            query = ("SELECT m.* FROM dmarc_message m LEFT JOIN dmarc_reported r"
                     " ON r.message_id = m.id WHERE r.message_id IS NULL AND" if marks else
                     "SELECT m.* FROM dmarc_message m WHERE")
            out = []
            for m in conn.execute(query + " m.received >= ? AND m.received <= ? ORDER BY m.id",
                                  (begin, end)).fetchall():
                dkim = conn.execute(
                    "SELECT domain, selector, result, human_result FROM dmarc_dkim"
                    " WHERE message_id = ? ORDER BY domain, selector, result LIMIT ?",
                    (m["id"], MAX_DKIM_ROWS)).fetchall()
                spf = conn.execute(
                    "SELECT domain, scope, result, human_result FROM dmarc_spf"
                    " WHERE message_id = ? ORDER BY rowid LIMIT 2", (m["id"],)).fetchall()
                out.append(_row(dict(zip(m.keys(), m)), dkim, spf, m["id"]))
            return out
        return self._transaction(work)

    def save_report(self, report: dict, ids: list, deliveries: list, now: int) -> None:
        def work(conn):
            conn.execute("INSERT INTO dmarc_report (report_id, policy_domain, begin, end,"
                         " created, file, messages) VALUES (?,?,?,?,?,?,?)",
                         (report["report_id"], report["policy_domain"], report["begin"],
                          report["end"], int(now), report["file"], report["messages"]))
            conn.executemany("INSERT INTO dmarc_reported (message_id, report_id) VALUES (?,?)",
                             [(mid, report["report_id"]) for mid in ids])
            conn.executemany(
                "INSERT OR IGNORE INTO dmarc_delivery (report_id, address, max_size,"
                " state, updated) VALUES (?,?,?,'pending',?)",
                [(report["report_id"], address, max_size, int(now))
                 for address, max_size in deliveries])
            forget(conn, ids)       # reported: the history keeps them no more
        self._transaction(work, "BEGIN IMMEDIATE")

    def last_report_end(self, domains: list) -> dict:
        def work(conn):
            out = {}
            for i in range(0, len(domains), _ID_CHUNK):
                chunk = list(domains[i:i + _ID_CHUNK])
                out.update(conn.execute(
                    "SELECT policy_domain, MAX(end) FROM dmarc_report WHERE policy_domain IN"
                    f" ({','.join('?' * len(chunk))}) GROUP BY policy_domain", chunk).fetchall())
            return out
        return self._transaction(work)

    def deliveries(self) -> list:
        def work(conn):
            return [dict(r, gz=None) for r in conn.execute(
                "SELECT d.report_id, d.address, d.max_size, d.attempts, r.policy_domain,"
                " r.begin, r.end, r.file, r.messages FROM dmarc_delivery d JOIN dmarc_report r"
                " ON r.report_id = d.report_id WHERE d.state = 'pending'"
                " ORDER BY r.created, d.rowid").fetchall()]
        return self._transaction(work)

    def update_delivery(self, report_id: str, address: str, state: str, attempts: int,
                        detail: str, now: int) -> None:
        self._transaction(lambda conn: conn.execute(
            "UPDATE dmarc_delivery SET state = ?, attempts = ?, detail = ?,"
            " updated = ? WHERE report_id = ? AND address = ?",
            (state, attempts, detail, int(now), report_id, address)))

    def _acquire(self, token: str, ttl: float, now: float) -> bool:
        def work(conn):
            conn.execute("DELETE FROM dmarc_lock WHERE name = 'report' AND expires <= ?",
                         (now,))
            return conn.execute("INSERT OR IGNORE INTO dmarc_lock (name, token, expires)"
                                " VALUES ('report', ?, ?)", (token, now + ttl)).rowcount == 1
        return self._transaction(work, "BEGIN IMMEDIATE")

    def _renew(self, token: str, ttl: float, now: float) -> bool:
        return self._transaction(lambda conn: conn.execute(
            "UPDATE dmarc_lock SET expires = ? WHERE name = 'report' AND token = ?",
            (now + ttl, token)).rowcount == 1, "BEGIN IMMEDIATE")

    def _release(self, token: str) -> None:
        self._transaction(lambda conn: conn.execute(
            "DELETE FROM dmarc_lock WHERE name = 'report' AND token = ?", (token,)),
            "BEGIN IMMEDIATE")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --------------------------------------------------------------------------
# choosing the backend


def is_redis(target: str) -> bool:
    """Whether ``[check.dmarc] history`` names a Redis server, not a file."""
    return target.strip().lower().startswith(("redis://", "rediss://"))


def open_records(target: str, days: int = 14, state=None, report: bool = False,
                 timeout: Optional[float] = None) -> Records:
    """The records ``[check.dmarc] history`` names: a ``redis://`` or
    ``rediss://`` URL (connection settings and key prefix from ``[state]``,
    ``state``), else an SQLite file.  ``report``: opened by
    ``dmarc-report`` (the report tables too; longer timeouts)."""
    if is_redis(target):
        return RedisRecords(target, days, state=state, timeout=timeout)
    return SqliteRecords(target, days, report=report, timeout=timeout or (10 if report else 5))


def _ms(seconds: float) -> int:
    return max(1, int(math.ceil(seconds * 1000)))


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------
# Redis: several MX hosts
#
# Keys (``[state] prefix`` + ``dmarc:``): ``seq`` the last message id;
# ``m:ID`` one evaluation (JSON), expiring ``history_days`` and a day after
# it was written; ``received`` a sorted set of ids by time received (the
# index for a period and for expiry); ``report:ID`` a report written (JSON,
# its compressed file included so that any host can send it again) and
# ``delivery:ID`` its mails (address -> JSON), both expiring with the
# history; ``last_end`` policy domain -> end of its last report (a hash);
# ``pending`` the pending mails in the order queued; ``lock``
# the report lock (a token, with an expiry).

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_LAST_END = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if old == nil or old < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisRecords(Records):
    """The records on a Redis server shared by several mailwarden instances.
    After a failure the server is not asked again for ``[state]
    retry_interval`` seconds: while it is down a message waits for no
    connect timeout, its evaluation is logged as not kept."""

    def __init__(self, url: str, days: int = 14, state=None, timeout: Optional[float] = None):
        super().__init__(days)
        try:
            import redis
        except ImportError:
            raise RecordsError("[check.dmarc] history = redis://... needs the Python package "
                               "redis (pip install 'mailwarden[redis]')") from None
        self._redis = redis
        self.url = url.strip()
        prefix = getattr(state, "prefix", "mailwarden:")
        self.prefix = prefix + "dmarc:"
        timeout = timeout or getattr(state, "timeout", 0.25)
        self.retry_interval = getattr(state, "retry_interval", 5.0)
        self._pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=getattr(state, "pool_size", 16),
            timeout=getattr(state, "pool_timeout", 0.5), socket_timeout=timeout,
            socket_connect_timeout=timeout)
        self._client = redis.Redis(connection_pool=self._pool)
        self._renew_script = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)
        self._down_until = -math.inf
        self._guard_lock = threading.Lock()

    def __str__(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return scheme + sep + rest

    def _key(self, *parts) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def _call(self, work):
        now = time.monotonic()
        with self._guard_lock:
            if now < self._down_until:
                raise RecordsError(f"redis at {self}: failed recently, not asked again for "
                                   f"{self._down_until - now:.1f}s")
        try:
            return work(self._client)
        except self._redis.RedisError as exc:
            with self._guard_lock:
                self._down_until = time.monotonic() + self.retry_interval
            raise RecordsError(f"redis at {self}: {exc.__class__.__name__}: {exc}") from None

    def _write(self, ev: Evaluation) -> None:
        data = _dumps(dataclasses.asdict(ev))

        def work(client):
            mid = client.incr(self._key("seq"))
            pipe = client.pipeline(transaction=True)
            pipe.set(self._key("m", mid), data, px=_ms(self.keep + 86400))
            pipe.zadd(self._key("received"), {str(mid): ev.received})
            pipe.execute()
        self._call(work)

    def _expire(self, before: int, limit: int) -> int:
        def work(client):
            ids = client.zrangebyscore(self._key("received"), "-inf", f"({before}",
                                       start=0, num=limit)
            if ids:
                pipe = client.pipeline(transaction=True)
                pipe.delete(*[self._key("m", i.decode()) for i in ids])
                pipe.zrem(self._key("received"), *ids)
                pipe.execute()
            return len(ids)
        return self._call(work)

    def rows(self, begin: int, end: int) -> list:
        def work(client):
            ids = sorted(int(i) for i in client.zrangebyscore(self._key("received"), begin, end))
            out, gone = [], []
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i:i + _ID_CHUNK]
                for mid, data in zip(chunk, client.mget([self._key("m", m) for m in chunk])):
                    if data is None:
                        gone.append(mid)        # expired by the server: its index entry goes
                        continue
                    values = json.loads(data)
                    out.append(_row(values, values.get("dkim", ())[:MAX_DKIM_ROWS],
                                    values.get("spf", ())[:2], mid))
            if gone:
                client.zrem(self._key("received"), *gone)
            return out
        return self._call(work)

    def save_report(self, report: dict, ids: list, deliveries: list, now: int) -> None:
        keep = _ms(self.keep + 86400)
        rid = report["report_id"]
        data = dict(report, created=int(now))
        gz = data.pop("gz", None)
        data["gz"] = base64.b64encode(gz).decode() if gz is not None else None

        def work(client):
            pipe = client.pipeline(transaction=True)
            pipe.set(self._key("report", rid), _dumps(data), px=keep)
            for address, max_size in deliveries:
                pipe.hsetnx(self._key("delivery", rid), address, _dumps(
                    {"max_size": max_size, "state": "pending", "attempts": 0, "detail": "",
                     "updated": int(now)}))
                pipe.zadd(self._key("pending"), {_dumps([rid, address]): now}, nx=True)
            if deliveries:
                pipe.pexpire(self._key("delivery", rid), keep)
            pipe.eval(_LAST_END, 1, self._key("last_end"), report["policy_domain"],
                      int(report["end"]))
            pipe.pexpire(self._key("last_end"), keep)
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i:i + _ID_CHUNK]
                pipe.delete(*[self._key("m", m) for m in chunk])
                pipe.zrem(self._key("received"), *[str(m) for m in chunk])
            pipe.execute()
        self._call(work)

    def last_report_end(self, domains: list) -> dict:
        def work(client):
            if not domains:
                return {}
            values = client.hmget(self._key("last_end"), list(domains))
            return {d: int(v) for d, v in zip(domains, values) if v is not None}
        return self._call(work)

    def deliveries(self) -> list:
        def work(client):
            out, reports = [], {}
            for member in client.zrange(self._key("pending"), 0, -1):
                rid, address = json.loads(member)
                if rid not in reports:
                    raw = client.get(self._key("report", rid))
                    reports[rid] = json.loads(raw) if raw is not None else None
                state = client.hget(self._key("delivery", rid), address)
                report = reports[rid]
                if report is None or state is None:
                    client.zrem(self._key("pending"), member)   # expired with the history
                    continue
                state = json.loads(state)
                if state["state"] != "pending":
                    continue
                gz = report.get("gz")
                out.append({"report_id": rid, "address": address,
                            "max_size": state["max_size"], "attempts": state["attempts"],
                            "policy_domain": report["policy_domain"], "begin": report["begin"],
                            "end": report["end"], "file": report["file"],
                            "messages": report["messages"],
                            "gz": base64.b64decode(gz) if gz is not None else None})
            return out
        return self._call(work)

    def update_delivery(self, report_id: str, address: str, state: str, attempts: int,
                        detail: str, now: int) -> None:
        def work(client):
            key = self._key("delivery", report_id)
            old = client.hget(key, address)
            values = json.loads(old) if old is not None else {"max_size": None}
            values.update(state=state, attempts=attempts, detail=detail, updated=int(now))
            pipe = client.pipeline(transaction=True)
            pipe.hset(key, address, _dumps(values))
            if state != "pending":
                pipe.zrem(self._key("pending"), _dumps([report_id, address]))
            pipe.execute()
        self._call(work)

    def _acquire(self, token: str, ttl: float, now: float) -> bool:
        return bool(self._call(lambda c: c.set(self._key("lock"), token, nx=True, px=_ms(ttl))))

    def _renew(self, token: str, ttl: float, now: float) -> bool:
        return bool(self._call(lambda c: self._renew_script(keys=[self._key("lock")],
                                                            args=[token, _ms(ttl)])))

    def _release(self, token: str) -> None:
        self._call(lambda c: self._release_script(keys=[self._key("lock")], args=[token]))

    def close(self) -> None:
        self._pool.disconnect()
