"""The DMARC records interface (mailwarden.dmarc_records), one suite run
against both backends: SQLite (one host) and Redis (several MX hosts)."""

from __future__ import annotations

import threading

import pytest

from mailwarden import dmarc_records
from mailwarden.config import loads
from mailwarden.dmarc_records import (Evaluation, RecordsError, RedisRecords, SqliteRecords,
                                      is_redis, open_records)
from tests.redisserver import free_port

DAY = 86400
NOW = 1_700_000_000


_prefixes = iter(range(1, 1_000_000))


def _state(prefix):
    return loads(f"[authserv]\nid = mx.test.example\n[state]\nprefix = {prefix}\n").state


@pytest.fixture(params=["sqlite", "redis"])
def make(request, tmp_path):
    """make(days=14) -> a Records; every call of one test opens the same store."""
    opened = []
    prefix = f"r{next(_prefixes)}:"

    def factory(days=14, report=False):
        if request.param == "sqlite":
            records = open_records(str(tmp_path / "h.sqlite"), days, report=report)
        else:
            server = request.getfixturevalue("redis_server")
            records = open_records(server.url, days, state=_state(prefix), report=report)
        opened.append(records)
        return records
    factory.backend = request.param
    yield factory
    for records in opened:
        records.close()


def ev(domain="a.example", received=NOW, ip="198.51.100.7", **kw):
    values = dict(received=received, queue_id="Q1", source_ip=ip, header_from=domain,
                  envelope_from=domain, envelope_to="test.example", policy_domain=domain,
                  p="none", sp=None, np=None, pct=100, adkim="r", aspf="r", fo="0",
                  rua=f"mailto:d@{domain}", result="pass", dkim_aligned=True,
                  spf_aligned=False, disposition="none", override="",
                  dkim=((domain, "sel", "pass"),), spf=((domain, "mfrom", "fail"),))
    values.update(kw)
    return Evaluation(**values)


def test_a_recorded_evaluation_reads_back_whole(make):
    records = make()
    records.record(ev(sp="quarantine", np="reject", pct=50))
    records.record(ev("b.example", received=NOW + 1, spf=(("", "helo", "none"),)))
    rows = make(report=True).rows(NOW - 10, NOW + 10)
    assert [r.header_from for r in rows] == ["a.example", "b.example"]
    first = rows[0]
    assert (first.sp, first.np, first.pct, first.dkim_aligned, first.spf_aligned) == \
        ("quarantine", "reject", 50, True, False)
    assert first.dkim == (("a.example", "sel", "pass", ""),)
    assert first.spf == (("a.example", "mfrom", "fail", ""),)
    assert rows[1].spf == (("", "helo", "none", ""),)
    assert first["rua"] == "mailto:d@a.example"
    assert rows[0].id != rows[1].id


def test_the_rfc9990_fields_read_back_and_default_when_not_given(make):
    records = make()
    records.record(ev(discovery_method="treewalk", testing="y", policy_tag="np",
                      override="policy_test_mode", override_comment="t=y: quarantine, not reject",
                      record_error="rua: 1 URI not used",
                      dkim=(("a.example", "sel", "fail", "body hash did not verify"),),
                      spf=(("a.example", "mfrom", "softfail", "~all matched"),)))
    records.record(ev("b.example", received=NOW + 1))
    new, old = make(report=True).rows(NOW - 10, NOW + 10)
    assert (new.discovery_method, new.testing, new.policy_tag, new.override,
            new.override_comment, new.record_error) == \
        ("treewalk", "y", "np", "policy_test_mode", "t=y: quarantine, not reject",
         "rua: 1 URI not used")
    assert new.dkim == (("a.example", "sel", "fail", "body hash did not verify"),)
    assert new.spf == (("a.example", "mfrom", "softfail", "~all matched"),)
    assert (old.discovery_method, old.testing, old.policy_tag, old.override_comment,
            old.record_error) == ("", "", "", "", "")


# a history file as the version before RFC 9990 reports wrote it
_V1_SCHEMA = """
CREATE TABLE dmarc_message (id INTEGER PRIMARY KEY, received INTEGER NOT NULL,
    queue_id TEXT NOT NULL, source_ip TEXT NOT NULL, header_from TEXT NOT NULL,
    envelope_from TEXT NOT NULL, envelope_to TEXT NOT NULL, policy_domain TEXT NOT NULL,
    p TEXT NOT NULL, sp TEXT, np TEXT, pct INTEGER NOT NULL, adkim TEXT NOT NULL,
    aspf TEXT NOT NULL, fo TEXT NOT NULL, rua TEXT NOT NULL, result TEXT NOT NULL,
    dkim_aligned INTEGER NOT NULL, spf_aligned INTEGER NOT NULL, disposition TEXT NOT NULL,
    override TEXT NOT NULL);
CREATE TABLE dmarc_dkim (message_id INTEGER NOT NULL, domain TEXT NOT NULL,
    selector TEXT NOT NULL, result TEXT NOT NULL);
CREATE TABLE dmarc_spf (message_id INTEGER NOT NULL, domain TEXT NOT NULL,
    scope TEXT NOT NULL, result TEXT NOT NULL);
PRAGMA user_version = 1;
INSERT INTO dmarc_message VALUES (7, 1700000000, 'Q7', '198.51.100.7', 'a.example',
    'a.example', 'test.example', 'a.example', 'reject', NULL, NULL, 50, 'r', 'r', '0',
    'mailto:d@a.example', 'fail', 0, 0, 'quarantine', 'sampled_out');
INSERT INTO dmarc_dkim VALUES (7, 'a.example', 'sel', 'fail');
INSERT INTO dmarc_spf VALUES (7, 'a.example', 'mfrom', 'fail');
"""


@pytest.mark.parametrize("opener", ["reader", "writer"])
def test_a_history_file_of_the_previous_version_is_migrated_and_read(tmp_path, opener):
    import sqlite3
    path = str(tmp_path / "v1.sqlite")
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
    first = SqliteRecords(path, report=opener == "reader")
    try:
        if opener == "writer":
            first.record(ev(received=NOW + 1, testing="n", policy_tag="p"))
        reader = SqliteRecords(path, report=True)
        try:
            rows = reader.rows(NOW - 10, NOW + 10)
        finally:
            reader.close()
    finally:
        first.close()
    old = rows[0]
    assert (old.id, old.override, old.pct, old.testing, old.policy_tag) == \
        (7, "sampled_out", 50, "", "")
    assert old.dkim == (("a.example", "sel", "fail", ""),)
    if opener == "writer":
        assert (rows[1].testing, rows[1].policy_tag) == ("n", "p")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == dmarc_records.SCHEMA_VERSION
        # a writer of the previous version still inserts (its columns only)
        conn.execute("INSERT INTO dmarc_message (received, queue_id, source_ip, header_from,"
                     " envelope_from, envelope_to, policy_domain, p, sp, np, pct, adkim, aspf,"
                     " fo, rua, result, dkim_aligned, spf_aligned, disposition, override) VALUES"
                     " (1700000002, 'Q8', '198.51.100.8', 'a.example', '', '', 'a.example',"
                     " 'none', NULL, NULL, 100, 'r', 'r', '0', '', 'pass', 1, 1, 'none', '')")


def test_a_redis_record_of_the_previous_version_reads_with_defaults(redis_server):
    import json
    records = RedisRecords(redis_server.url, state=_state("v1:"))
    try:
        values = dict(received=NOW, queue_id="Q1", source_ip="198.51.100.7",
                      header_from="a.example", envelope_from="a.example",
                      envelope_to="test.example", policy_domain="a.example", p="none",
                      sp=None, np=None, pct=100, adkim="r", aspf="r", fo="0",
                      rua="mailto:d@a.example", result="pass", dkim_aligned=True,
                      spf_aligned=False, disposition="none", override="",
                      dkim=[["a.example", "sel", "pass"]], spf=[["a.example", "mfrom", "pass"]],
                      some_future_field="x")
        client = records._client
        client.set(records._key("m", 1), json.dumps(values))
        client.zadd(records._key("received"), {"1": NOW})
        (row,) = records.rows(NOW, NOW)
    finally:
        records.close()
    assert (row.testing, row.discovery_method, row.policy_tag) == ("", "", "")
    assert row.dkim == (("a.example", "sel", "pass", ""),)


def test_the_end_of_a_domains_last_report_is_kept(make):
    reader = make(report=True)
    assert reader.last_report_end(["a.example"]) == {}
    for rid, end in (("r1", NOW + 10), ("r3", NOW + 30), ("r2", NOW + 20)):
        reader.save_report({"report_id": rid, "policy_domain": "a.example", "begin": NOW,
                            "end": end, "file": f"/nowhere/{rid}.xml.gz", "messages": 0,
                            "gz": b"\x1f\x8b"}, [], [], NOW + 40)
    reader.save_report({"report_id": "r4", "policy_domain": "b.example", "begin": NOW,
                        "end": NOW + 5, "file": "/nowhere/r4.xml.gz", "messages": 0,
                        "gz": b"\x1f\x8b"}, [], [], NOW + 40)
    assert make(report=True).last_report_end(["a.example", "b.example", "c.example"]) == \
        {"a.example": NOW + 30, "b.example": NOW + 5}


def test_rows_are_those_of_the_period_oldest_first(make):
    records = make()
    for i, t in enumerate((NOW - 100, NOW, NOW + 5, NOW + 100)):
        records.record(ev(queue_id=f"Q{i}", received=t))
    assert [r.queue_id for r in records.rows(NOW, NOW + 5)] == ["Q1", "Q2"]


def test_what_the_sender_controls_is_bounded(make):
    records = make()
    records.record(ev("x\x01" * 300, fo="1" * 99, rua="mailto:a@b.example," + "x" * 2000,
                      dkim=tuple((f"d{i}", "s" * 999, "pass") for i in range(40))))
    (row,) = records.rows(NOW, NOW)
    assert len(row.header_from) <= 253 and "\x01" not in row.header_from
    assert len(row.fo) <= 32 and row.rua == "mailto:a@b.example"
    assert len(row.dkim) == 20 and all(len(s) <= 253 for _d, s, _r, _h in row.dkim)


def test_a_saved_report_deletes_its_rows_and_queues_its_mails(make):
    records = make()
    for i in range(3):
        records.record(ev(queue_id=f"Q{i}", received=NOW + i))
    reader = make(report=True)
    rows = reader.rows(NOW, NOW + 10)
    reader.save_report({"report_id": "r1@mx", "policy_domain": "a.example", "begin": NOW,
                        "end": NOW + 10, "file": "/nowhere/r1.xml.gz", "messages": 2,
                        "gz": b"\x1f\x8bzz"},
                       [r.id for r in rows[:2]], [("d@a.example", None), ("e@a.example", 900)],
                       NOW + 20)
    assert [r.queue_id for r in reader.rows(NOW, NOW + 10)] == ["Q2"]
    pending = reader.deliveries()
    assert [(d["address"], d["max_size"], d["attempts"]) for d in pending] == \
        [("d@a.example", None, 0), ("e@a.example", 900, 0)]
    assert {d["policy_domain"] for d in pending} == {"a.example"}
    assert all(d["messages"] == 2 and d["file"] == "/nowhere/r1.xml.gz" for d in pending)
    if make.backend == "redis":         # any host can send it again: the report travels along
        assert all(d["gz"] == b"\x1f\x8bzz" for d in pending)
    reader.update_delivery("r1@mx", "d@a.example", "sent", 0, "sent (9 bytes)", NOW + 30)
    reader.update_delivery("r1@mx", "e@a.example", "pending", 1, "failed: x", NOW + 30)
    assert [(d["address"], d["attempts"]) for d in reader.deliveries()] == [("e@a.example", 1)]
    reader.update_delivery("r1@mx", "e@a.example", "abandoned", 5, "given up", NOW + 40)
    assert reader.deliveries() == []


def test_expire_deletes_old_rows_in_bounded_batches(make, monkeypatch):
    monkeypatch.setattr(dmarc_records, "PURGE_BATCH", 3)
    records = make(days=1)
    for i in range(5):
        records.record(ev(queue_id=f"old{i}", received=NOW + i))
    records.record(ev(queue_id="new", received=NOW + DAY + 3600))       # purges 3
    assert len(records.rows(0, NOW + 2 * DAY)) == 3
    records.record(ev(queue_id="new2", received=NOW + DAY + 3601))      # goes on: 2 more
    assert [r.queue_id for r in records.rows(0, NOW + 2 * DAY)] == ["new", "new2"]
    assert records.expire(NOW + 10 * DAY) == 2


def test_the_report_lock_is_exclusive_renewable_and_expires(make):
    first, second = make(report=True), make(report=True)
    lock = first.lock(60, NOW)
    assert lock is not None
    assert second.lock(60, NOW + 1) is None
    assert lock.renew(NOW + 50)
    assert second.lock(60, NOW + 70) is None          # renewed: held past its first ttl
    lock.release()
    again = second.lock(60, NOW + 80)
    assert again is not None and first.lock(60, NOW + 81) is None
    again.release()


def test_one_lock_among_many_contenders(make):
    stores = [make(report=True) for _ in range(6)]
    got, barrier = [], threading.Barrier(len(stores))

    def contend(store):
        barrier.wait(timeout=10)
        got.append(store.lock(60, NOW))
    threads = [threading.Thread(target=contend, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(got) == len(stores) and sum(lock is not None for lock in got) == 1


def test_a_dead_holder_loses_the_sqlite_lock_after_its_ttl(tmp_path):
    first = SqliteRecords(str(tmp_path / "h.sqlite"), report=True)
    second = SqliteRecords(str(tmp_path / "h.sqlite"), report=True)
    try:
        assert first.lock(60, NOW) is not None           # never released
        assert second.lock(60, NOW + 59) is None
        assert second.lock(60, NOW + 61) is not None
    finally:
        first.close()
        second.close()


def test_a_dead_holder_loses_the_redis_lock_after_its_ttl(redis_server):
    import time
    state = _state(f"r{next(_prefixes)}:")
    first = RedisRecords(redis_server.url, state=state)
    second = RedisRecords(redis_server.url, state=state)
    try:
        assert first.lock(0.3, time.time()) is not None
        assert second.lock(60, time.time()) is None
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            time.sleep(0.05)          # poll, bounded by the deadline
            got = second.lock(60, time.time())
        assert got is not None
    finally:
        first.close()
        second.close()


def test_the_history_key_names_a_file_or_a_redis_server():
    assert is_redis("redis://127.0.0.1:6379/0") and is_redis("rediss://h:1/2")
    assert not is_redis("/var/lib/mailwarden/dmarc.sqlite")
    assert isinstance(open_records("/tmp/never-opened.sqlite"), SqliteRecords)


def test_a_redis_server_that_is_down_is_an_error_then_not_asked_again():
    state = loads("[authserv]\nid = mx.test.example\n[state]\ntimeout = 0.2\n"
                  "retry_interval = 60\n").state
    records = RedisRecords(f"redis://127.0.0.1:{free_port()}/0", state=state)
    try:
        with pytest.raises(RecordsError, match="ConnectionError"):
            records.record(ev())
        with pytest.raises(RecordsError, match="failed recently"):
            records.record(ev())
    finally:
        records.close()


# -- configuration ------------------------------------------------------------------

def test_history_takes_a_file_or_a_redis_url_and_refuses_other_schemes():
    from mailwarden.config import ConfigError
    base = "[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
    assert loads(base + "/var/lib/h.sqlite\n").checks["dmarc"].history == "/var/lib/h.sqlite"
    assert loads(base + "redis://10.0.0.5:6379/2\n").checks["dmarc"].history == \
        "redis://10.0.0.5:6379/2"
    for bad in ("http://example.org/h", "redis://", "unix:///run/redis.sock"):
        with pytest.raises(ConfigError) as info:
            loads(base + bad + "\n", path="m.ini")
        assert "m.ini:4" in str(info.value) and "history" in str(info.value)


# -- dmarc-report runs under the lock ------------------------------------------------

REPORTER = ("[dmarc_report]\norg_name = Test Receiver Org\ndomain = mx.test.example\n"
            "email = postmaster@test.example\n")


def _ini(tmp_path, make, records):
    target = records.path if make.backend == "sqlite" else records.url
    state = "" if make.backend == "sqlite" else f"[state]\nprefix = {records.prefix[:-6]}\n"
    ini = tmp_path / "m.ini"
    ini.write_text(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = {target}\n"
                   + state + REPORTER)
    return ini


def _fill(records, n, now):
    for i in range(n):
        records.record(ev(queue_id=f"Q{i}", received=int(now) - 60 + i % 30,
                          ip=f"198.51.100.{1 + i % 2}"))


def test_a_run_that_finds_the_lock_taken_reports_nothing(make, tmp_path, capsys):
    import gzip
    import time
    from mailwarden import cli
    records = make()
    _fill(records, 4, time.time())
    ini = _ini(tmp_path, make, records)
    holder = make(report=True).lock(60, time.time())
    assert holder is not None
    out = tmp_path / "out"
    argv = ["dmarc-report", "-c", str(ini), "--since", "1h", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "holds the report lock" in capsys.readouterr().out
    assert not out.exists() or list(out.iterdir()) == []
    holder.release()
    assert cli.main(argv) == 0
    files = list(out.iterdir())
    assert len(files) == 1
    assert gzip.decompress(files[0].read_bytes()).count(b"<count>") == 2     # two source IPs
    assert make(report=True).lock(60, time.time()) is not None    # the run let it go


def test_two_concurrent_runs_make_one_report_holding_every_message(make, tmp_path):
    """Two dmarc-report processes started together over the same records
    (two hosts' cron): one report for the domain, its counts the 200
    messages, never two reports of the same rows."""
    import gzip
    import re
    import subprocess
    import sys
    import time
    records = make()
    _fill(records, 200, time.time())
    ini = _ini(tmp_path, make, records)
    procs = [subprocess.Popen([sys.executable, "-m", "mailwarden", "dmarc-report", "-c",
                               str(ini), "--since", "1h", "--out", str(tmp_path / f"out{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    files = [f for i in range(2) if (tmp_path / f"out{i}").exists()
             for f in (tmp_path / f"out{i}").iterdir()]
    assert len(files) == 1, (files, results)
    counts = re.findall(rb"<count>(\d+)</count>", gzip.decompress(files[0].read_bytes()))
    assert sum(int(c) for c in counts) == 200
    assert make(report=True).rows(0, int(time.time()) + 10) == []


# -- structure ------------------------------------------------------------------------

def test_only_the_records_module_speaks_sql_to_the_history():
    """The schema and every SQL statement live in mailwarden.dmarc_records:
    neither the check nor the report command imports sqlite3."""
    import ast
    from pathlib import Path
    root = Path(dmarc_records.__file__).resolve().parent
    for name in ("checks/dmarc.py", "dmarc_report.py"):
        tree = ast.parse((root / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert "sqlite3" not in imported, name
        text = (root / name).read_text()
        assert "CREATE TABLE" not in text and "INSERT INTO" not in text, name


def test_a_run_whose_lock_was_taken_over_saves_nothing(make, tmp_path, monkeypatch, capsys):
    """A run that outlived its lock (another run took it) must not delete
    rows the other one is reporting."""
    import time
    from mailwarden import cli, command, dmarc_report
    records = make()
    _fill(records, 3, time.time())
    ini = _ini(tmp_path, make, records)
    real = dmarc_report.make_reports

    def slow_make_reports(*args, **kw):
        out = real(*args, **kw)
        if make.backend == "sqlite":        # meanwhile the lock expired and another run took it
            import sqlite3
            with sqlite3.connect(records.path) as conn:
                conn.execute("UPDATE dmarc_lock SET token = 'another run'")
        else:
            import redis
            client = redis.Redis.from_url(records.url)
            client.set(records.prefix + "lock", "another run", px=60000)
            client.close()
        return out
    monkeypatch.setattr(dmarc_report, "make_reports", slow_make_reports)
    out = tmp_path / "out"
    assert cli.main(["dmarc-report", "-c", str(ini), "--since", "1h", "--out", str(out)]) == \
        command.EXIT_FAIL
    assert "report lock expired" in capsys.readouterr().err
    assert len(make(report=True).rows(0, int(time.time()) + 10)) == 3
    assert not out.exists() or list(out.iterdir()) == []


# -- what the sender controls, through either backend ---------------------------------


def _hostile_text():
    from hypothesis import strategies as st
    return st.text(st.characters(codec="utf-8"), max_size=40).map(lambda t: t * 20)


def test_sender_controlled_text_is_kept_as_bounded_data_by_both_backends(redis_server, tmp_path):
    from hypothesis import HealthCheck, given, settings, strategies as st
    text = _hostile_text()
    counter = iter(range(1_000_000))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text, text, text, st.lists(st.tuples(text, text), max_size=30))
    def check(domain, envelope, rua, sigs):
        n = next(counter)
        for records in (SqliteRecords(str(tmp_path / f"h{n}.sqlite")),
                        RedisRecords(redis_server.url, state=_state(f"h{n}:"))):
            try:
                records.record(ev(domain, envelope_from=envelope,
                                  rua="mailto:a@b.example," + rua,
                                  dkim=tuple((d, s, "pass") for d, s in sigs),
                                  spf=((envelope, "mfrom", "pass"),)))
                (row,) = records.rows(NOW, NOW)
            finally:
                records.close()
            assert row.header_from == dmarc_records.bound_text(domain)
            assert row.envelope_from == dmarc_records.bound_text(envelope)
            assert len(row.rua) <= 1024 and row.rua.startswith("mailto:a@b.example")
            assert len(row.dkim) == min(len(sigs), 20)
            assert all(len(x) <= 253 and not dmarc_records.NOT_XML.search(x)
                       for triple in row.dkim + row.spf for x in triple)
    check()


# -- through the engine ----------------------------------------------------------------

ZONE = """
rep-a.example. TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.rep-a.example. TXT "v=DMARC1; p=reject; rua=mailto:dmarc@rep-a.example"
"""


def _deliver(config):
    from mailwarden.dns import Resolver, ZoneBackend
    from mailwarden.engine import Engine, run_offline
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    try:
        message = b"From: a@rep-a.example\r\nTo: b@test.example\r\nSubject: s\r\n\r\nhi\r\n"
        verdict, _conn, msg = run_offline(engine, client_ip="198.51.100.7",
                                          helo="mail.sender.example", mail_from="a@rep-a.example",
                                          rcpts=["b@test.example"], message=message)
        if msg is not None:
            msg.close()
        return verdict
    finally:
        engine.close()


def test_the_milter_records_to_redis_and_a_report_reads_them(redis_server, tmp_path):
    import time
    from mailwarden.dmarc_report import make_reports, save
    config = loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"{redis_server.url}\n[state]\nprefix = e{next(_prefixes)}:\n" + REPORTER)
    for _ in range(2):
        assert _deliver(config).action == "accept"
    reports, skipped = make_reports(config, since=3600, now=time.time() + 1)
    assert skipped == 0 and [(r.policy_domain, r.messages) for r in reports] == \
        [("rep-a.example", 2)]
    save(config, reports, str(tmp_path / "out"))
    assert make_reports(config, since=3600, now=time.time() + 1)[0] == []


def test_a_redis_history_that_is_down_loses_the_record_not_the_message(caplog):
    config = loads(f"[authserv]\nid = mx.test.example\n[check.dmarc]\nhistory = "
                   f"redis://127.0.0.1:{free_port()}/0\n[state]\ntimeout = 200ms\n")
    verdict = _deliver(config)
    assert verdict.action == "accept"
    assert any(r.check == "dmarc" and r.result == "pass" for r in verdict.results)
    assert "dmarc history redis at redis://127.0.0.1" in caplog.text
    assert "ConnectionError" in caplog.text
