"""Explaining verdicts: the one log line per message (text and JSON) and
``mailwarden scan --explain``."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from mailwarden import cli
from mailwarden.config import loads
from mailwarden.engine import run_offline
from mailwarden.explain import explain_table, format_line, verdict_fields
from mailwarden.logsetup import setup_logging
from tests.milter.miltertest import Session, make_engine

ZONE = """
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
"""
BASE = "[authserv]\nid = mx.test.example\n[milter]\nlog = stderr\n"
MESSAGE = b"From: a@sender.example\r\nTo: b@test.example\r\nSubject: x\r\n\r\nbody\r\n"
ANSI = re.compile(r"\x1b\[")


def run(ini="", **kw):
    config = loads(BASE + ini)
    engine = make_engine(config, ZONE)
    try:
        args = dict(client_ip="198.51.100.7", client_name="mail.sender.example",
                    helo="mail.sender.example", mail_from="a@sender.example",
                    rcpts=["b@test.example", "c@test.example"], message=MESSAGE,
                    queue_id="4ABCDEF")
        args.update(kw)
        verdict, conn, msg = run_offline(engine, **args)
        return config, verdict, conn, msg
    finally:
        engine.close()


def test_fields_name_queue_id_client_envelope_action_score_and_every_symbol():
    config, verdict, conn, msg = run("[scores]\nIPREV_PASS = 0.5\n")
    fields = verdict_fields(conn, msg, verdict)
    assert fields["queue_id"] == "4ABCDEF"
    assert fields["client_ip"] == "198.51.100.7"
    assert fields["client_name"] == "mail.sender.example"
    assert fields["from"] == "a@sender.example"
    assert fields["rcpts"] == 2
    assert fields["action"] == "accept"
    assert fields["score"] == pytest.approx(0.5)
    # every symbol with its weight, zero weights too
    assert fields["symbols"]["IPREV_PASS"] == 0.5
    assert set(fields["symbols"]) == {r.symbol for r in verdict.results if r.symbol}
    line = format_line(fields)
    assert "\n" not in line
    assert "action=accept score=0.50 client=mail.sender.example[198.51.100.7]" in line
    assert "from=<a@sender.example> rcpts=2" in line
    assert "IPREV_PASS(0.5)" in line


def test_a_stop_names_stage_reply_and_reason():
    config, verdict, conn, msg = run("[check.iplist]\nblock = 198.51.100.0/24\n")
    assert verdict.action == "reject"
    fields = verdict_fields(conn, msg, verdict)
    assert fields["stage"] == "connect"
    assert fields["reply"].startswith("5")
    assert "iplist" in fields["reason"]
    line = format_line(fields)
    assert line.startswith("stage=connect action=reject ")
    assert re.search(r'reply="5\d\d [^"]*" reason="iplist: [^"]*"', line), line


def test_network_values_are_escaped():
    evil = 'mail\r\nX-Injected: "yes"\x00\udc80'
    config, verdict, conn, msg = run(helo=evil, mail_from="a\tb@sender.example")
    fields = verdict_fields(conn, msg, verdict)
    assert fields["helo"] == 'mail\\x0d\\x0aX-Injected: "yes"\\x00\\x80'
    assert fields["from"] == "a\\x09b@sender.example"
    line = format_line(fields)
    assert "\r" not in line and "\n" not in line
    # quoted because of the space; the inner quotes escaped
    assert 'helo="mail\\x0d\\x0aX-Injected: \\"yes\\"\\x00\\x80"' in line


@pytest.fixture
def logged():
    """Where the real formatter writes: ``log(ini)`` sets logging up from ``[milter]``."""
    out = io.StringIO()
    logger = logging.getLogger("mailwarden")
    saved = (logger.handlers[:], logger.level, logger.propagate)

    def log(options):
        setup_logging(options, force_stderr=True)
        logger.handlers[0].setStream(out)
    out.setup = log
    yield out
    logger.handlers[:], logger.level, logger.propagate = saved


def _through_adapter(logged, ini: str, rcpt_count: int = 1) -> None:
    config = loads(BASE + ini)
    logged.setup(config.milter)
    engine = make_engine(config, ZONE)
    try:
        s = Session(engine, macros={"i": "9F00AB12", "j": "mx.test.example"})
        s.connect("198.51.100.7", "mail.sender.example")
        s.helo("mail.sender.example")
        s.mail("a@sender.example")
        for i in range(rcpt_count):
            s.rcpt(f"r{i}@test.example")
        s.data(MESSAGE)
        s.close()
    finally:
        engine.close()


def test_text_log_one_line_per_message_with_queue_id(logged):
    _through_adapter(logged, "log_level = info\n", rcpt_count=3)
    lines = [l for l in logged.getvalue().splitlines() if "action=" in l]
    assert len(lines) == 1, logged.getvalue()
    assert re.search(r"mailwarden\[\d+\]: INFO 9F00AB12: action=accept score=0\.00 "
                     r"client=mail\.sender\.example\[198\.51\.100\.7\] "
                     r"helo=mail\.sender\.example from=<a@sender\.example> rcpts=3 symbols=\S+$",
                     lines[0]), lines[0]
    assert "rcpts=3" in lines[0] and "IPREV_PASS(0)" in lines[0]


def test_json_log_has_the_same_fields_as_keys(logged):
    _through_adapter(logged, "log_level = info\nlog_format = json\n", rcpt_count=2)
    records = [json.loads(line) for line in logged.getvalue().splitlines()]
    verdicts = [r for r in records if "action" in r]
    assert len(verdicts) == 1, records
    v = verdicts[0]
    assert v["queue_id"] == "9F00AB12"
    assert v["client_ip"] == "198.51.100.7" and v["client_name"] == "mail.sender.example"
    assert v["from"] == "a@sender.example" and v["rcpts"] == 2
    assert v["action"] == "accept" and v["score"] == 0
    assert v["symbols"]["IPREV_PASS"] == 0
    assert v["level"] == "info" and v["time"].endswith("Z")
    # other lines carry a message
    assert all("message" in r for r in records if "action" not in r)


def test_json_log_of_a_connect_reject(logged):
    config = loads(BASE + "log_format = json\n[check.iplist]\nblock = 198.51.100.7\n")
    logged.setup(config.milter)
    engine = make_engine(config, ZONE)
    try:
        s = Session(engine)
        s.connect("198.51.100.7", "mail.sender.example")
        s.close()
    finally:
        engine.close()
    records = [json.loads(line) for line in logged.getvalue().splitlines()]
    stops = [r for r in records if r.get("action") == "reject"]
    assert len(stops) == 1, records
    assert stops[0]["stage"] == "connect" and stops[0]["reason"].startswith("iplist")
    assert stops[0]["symbols"]["IPLIST_BLOCK"] == 0.0
    assert stops[0]["queue_id"] == ""       # no queue file before MAIL FROM


# -- scan --explain ------------------------------------------------------------------

def test_explain_table_lists_results_total_thresholds_action():
    config, verdict, conn, msg = run("[scores]\nIPREV_PASS = 1.25\n")
    table = explain_table(verdict, config.scores, config.policy)
    lines = table.splitlines()
    assert lines[0].split() == ["check", "result", "symbol", "weight", "reason"]
    for r in verdict.results:
        assert any(l.split()[:3] == [r.check, r.result, r.symbol or "-"] for l in lines[2:]), r
    assert re.search(r"^iprev\s+pass\s+IPREV_PASS\s+1\.25", table, re.M)
    assert "total      1.25" in table
    assert "thresholds add_header 5, quarantine 10, reject 15" in table
    assert re.search(r"^action\s+accept$", table, re.M)
    assert not ANSI.search(table)
    assert ANSI.search(explain_table(verdict, config.scores, config.policy, colour=True))


def test_scan_explain_prints_the_table_without_colour_off_a_terminal(tmp_path, capsys):
    conf = tmp_path / "m.ini"
    conf.write_text("[authserv]\nid = mx.test.example\n[check.iplist]\nblock = 198.51.100.7\n")
    zone = tmp_path / "z.zone"
    zone.write_text(ZONE)
    eml = tmp_path / "m.eml"
    eml.write_bytes(MESSAGE)
    rc = cli.main(["scan", "-c", str(conf), "--zone", str(zone), "--client-ip", "198.51.100.7",
                   "--mail-from", "a@sender.example", "--rcpt", "b@test.example", "--explain",
                   str(eml)])
    assert rc == 0
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    assert re.search(r"^iplist\s+fail\s+IPLIST_BLOCK\s+0\.00\s+\S", out, re.M), out
    assert re.search(r"^action\s+reject$", out, re.M), out
    assert re.search(r"^stage\s+connect$", out, re.M), out
    assert re.search(r"^reply\s+5\d\d ", out, re.M), out
