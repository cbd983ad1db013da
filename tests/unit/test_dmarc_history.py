"""The DMARC history stays bounded: reported rows are deleted, the rest
after ``[check.dmarc] history_days``.

Messages run through the real engine (spf, dkim, dmarc on zone data) with
an injected clock, so the rows are the ones the milter writes.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from mailwarden import dmarc_records
from mailwarden.config import ConfigError, loads
from mailwarden.dmarc_report import make_reports, save
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

DAY = 86400
ZONE = """
rep-a.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-a.example. TXT "v=DMARC1; p=none; rua=mailto:dmarc@rep-a.example"
rep-none.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-none.example. TXT "v=DMARC1; p=none"
"""
REPORTER = ("[dmarc_report]\norg_name = Test Receiver Org\ndomain = mx.test.example\n"
            "email = postmaster@test.example\n")


class Clock:
    def __init__(self, now):
        self.now = float(now)

    def __call__(self):
        return self.now


def config_for(tmp_path, extra=""):
    return loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                 f"{tmp_path / 'dmarc.sqlite'}\n{extra}" + REPORTER)


def deliver(engine, domain, n=1):
    for _ in range(n):
        message = (f"From: a@{domain}\r\nTo: b@test.example\r\nSubject: s\r\n\r\nhi\r\n"
                   ).encode()
        _verdict, _conn, msg = run_offline(engine, client_ip="198.51.100.7",
                                           helo="mail.sender.example",
                                           mail_from=f"a@{domain}", rcpts=["b@test.example"],
                                           message=message)
        if msg is not None:
            msg.close()


def engine_for(config, clock):
    return Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                  hostname="mx.test.example", clock=clock)


def rows(config, table="dmarc_message", column="id"):
    with sqlite3.connect(config.checks["dmarc"].history) as conn:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM {table} ORDER BY 1")]


# -- configuration ----------------------------------------------------------------

def test_history_days_defaults_to_two_weeks_and_is_bounded():
    assert loads("[authserv]\nid = mx.test.example\n").checks["dmarc"].history_days == 14
    assert loads("[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory_days = 2\n"
                 ).checks["dmarc"].history_days == 2
    for bad in ("0", "-1", "3651", "two"):
        with pytest.raises(ConfigError) as info:
            loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory_days = {bad}\n",
                  path="m.ini")
        assert "m.ini:4" in str(info.value) and "history_days" in str(info.value)


# -- retention --------------------------------------------------------------------

def test_rows_older_than_history_days_are_deleted_with_their_results(tmp_path):
    config = config_for(tmp_path, "history_days = 3\n")
    clock = Clock(1_700_000_000)
    engine = engine_for(config, clock)
    try:
        deliver(engine, "rep-none.example", 2)          # no rua: never reported
        clock.now += 2 * DAY
        deliver(engine, "rep-a.example", 1)
        old = rows(config)[:2]
        clock.now += 1 * DAY + 3600 + 1                 # the first two are now 3 days old
        deliver(engine, "rep-a.example", 1)
    finally:
        engine.close()
    kept = rows(config)
    assert len(kept) == 2 and not set(old) & set(kept)
    assert set(rows(config, "dmarc_spf", "message_id")) == set(kept)
    received = rows(config, column="received")
    assert min(received) >= clock.now - 3 * DAY


def test_a_purge_deletes_a_bounded_batch_and_goes_on_at_the_next_write(tmp_path, monkeypatch):
    monkeypatch.setattr(dmarc_records, "PURGE_BATCH", 3)
    config = config_for(tmp_path, "history_days = 1\n")
    clock = Clock(1_700_000_000)
    engine = engine_for(config, clock)
    try:
        deliver(engine, "rep-none.example", 7)
        clock.now += DAY + 60
        deliver(engine, "rep-none.example", 1)          # purges 3 of the 7 old rows
        assert len(rows(config)) == 8 - 3
        deliver(engine, "rep-none.example", 1)          # a full batch: on with the next write
        assert len(rows(config)) == 9 - 6
        deliver(engine, "rep-none.example", 1)          # the last old one
        assert len(rows(config)) == 10 - 7
    finally:
        engine.close()


def test_purges_run_at_most_hourly(tmp_path):
    config = config_for(tmp_path, "history_days = 1\n")
    clock = Clock(1_700_000_000)
    engine = engine_for(config, clock)
    try:
        deliver(engine, "rep-none.example", 1)          # A
        clock.now += DAY - 1800
        deliver(engine, "rep-none.example", 1)          # a purge: A is not old yet
        clock.now += 1860
        deliver(engine, "rep-none.example", 1)          # A is old, but the hour is not up
        assert len(rows(config)) == 3
        clock.now += 1800
        deliver(engine, "rep-none.example", 1)
        assert len(rows(config)) == 3                   # A went, the new row came
    finally:
        engine.close()


def test_a_history_that_cannot_be_purged_still_records_and_logs(tmp_path, caplog):
    config = config_for(tmp_path, "history_days = 1\n")
    clock = Clock(1_700_000_000)
    engine = engine_for(config, clock)
    try:
        deliver(engine, "rep-none.example", 1)
        with sqlite3.connect(config.checks["dmarc"].history) as conn:
            conn.execute("CREATE TRIGGER no_delete BEFORE DELETE ON dmarc_message "
                         "BEGIN SELECT RAISE(ABORT, 'deletes refused'); END")
        clock.now += 2 * DAY
        deliver(engine, "rep-none.example", 1)
        assert len(rows(config)) == 2                   # written, old row kept
        assert "deletes refused" in caplog.text
        caplog.clear()
        deliver(engine, "rep-none.example", 1)          # not retried on every write
        assert len(rows(config)) == 3 and "deletes refused" not in caplog.text
    finally:
        engine.close()


# -- reported rows ------------------------------------------------------------------

def test_reported_rows_are_deleted_the_others_kept(tmp_path):
    config = config_for(tmp_path)
    engine = engine_for(config, time.time)
    try:
        deliver(engine, "rep-a.example", 3)
        deliver(engine, "rep-none.example", 2)
    finally:
        engine.close()
    before = rows(config)
    reports, skipped = make_reports(config, since=3600, now=time.time() + 1)
    assert skipped == 2 and [r.messages for r in reports] == [3]
    save(config, reports, str(tmp_path / "out"))
    left = rows(config)
    assert left == sorted(set(before) - set(reports[0].message_ids)) and len(left) == 2
    assert set(rows(config, "dmarc_spf", "message_id")) == set(left)
    assert rows(config, "dmarc_reported", "message_id") == []
    with sqlite3.connect(config.checks["dmarc"].history) as conn:
        assert conn.execute("SELECT policy_domain, messages FROM dmarc_report").fetchall() == \
            [("rep-a.example", 3)]


def test_a_reused_row_id_is_reported_again(tmp_path):
    """SQLite gives a deleted highest id to the next row: no stale mark may
    hide that row from the next report."""
    config = config_for(tmp_path)
    engine = engine_for(config, time.time)
    try:
        deliver(engine, "rep-a.example", 2)
        reports, _ = make_reports(config, since=3600, now=time.time() + 1)
        save(config, reports, str(tmp_path / "out"))
        assert rows(config) == []
        deliver(engine, "rep-a.example", 1)
    finally:
        engine.close()
    assert rows(config)[0] in reports[0].message_ids    # the id came back
    again, _ = make_reports(config, since=3600, now=time.time() + 1)
    assert [r.messages for r in again] == [1]
