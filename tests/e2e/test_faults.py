"""Faults under load through a real Postfix (``milter_default_action = tempfail``).

* the milter killed (SIGKILL) mid-load and restarted: every message is
  delivered exactly once or answered 4xx, none lost, none duplicated,
  counted at the sink by Message-ID;
* SIGTERM under load: the milter exits within libmilter's ~5 s, nothing is
  lost or duplicated; a message in flight at SIGTERM should be finished
  before exit, which is not so yet (an expected failure, see its reason);
* Redis down at start, back, killed, back: the limits fail open with
  LIMITS_TEMPERROR and a log line, then enforce again by themselves;
* many SMTP sessions held open while mail flows: over-limit sessions get
  421, the milter's descriptors return to their baseline, its threads stay
  within the bound of its pools (no thread per session), its memory small.

Smaller than ``bench/faults.py``, which runs the same at full size (2,000
messages and two kills; 500 held sessions).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from tests.harness import HarnessError, Postfix, make_message, smtp_send, wait_until
from tests.harness.loadclient import HeldSessions, SmtpSession, count_at_sink, proc_status, run_load
from tests.redisserver import RedisServer, redis_binary


def _milter_log_clean(mw) -> None:
    log = mw.log_text()
    assert "Traceback" not in log, log[-4000:]


# ------------------------------------------------------------ SIGKILL

def test_sigkill_mid_load_loses_and_duplicates_nothing(postfix, sink, mailwarden):
    mw = mailwarden()
    sink.clear()
    killed = []
    due = threading.Event()

    def on_accepted(n):
        if n == 60:
            due.set()

    def killer():
        if due.wait(60):
            killed.append(mw.pid)
            mw.restart()            # SIGKILL, then start and wait until it accepts

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    report = run_load(postfix.smtp_port, 200, 10, on_accepted=on_accepted, deadline=90)
    thread.join(30)
    assert killed and mw.pid != killed[0]
    sink.wait_for(report.accepted, 60)
    postfix.wait_queue_empty(60)
    count = count_at_sink(report, sink.messages)
    assert count.duplicated == [] and count.lost == [] and count.refused_but_delivered == []
    # with retries every message gets through in the end
    assert count.delivered_once == 200, (count.figures(), report.codes)
    # the kill was seen by clients as 4xx, the MTA's tempfail, never as 5xx
    assert report.replies_4xx > 0 and report.final_5xx == 0, report.codes
    assert set(report.codes) <= {250, 421, 451}, report.codes
    assert report.ambiguous == 0
    _milter_log_clean(mw)


# ------------------------------------------------------------ SIGTERM

def test_sigterm_finishes_the_message_in_flight(postfix, sink, mailwarden):
    """SIGTERM: the transaction in flight is finished and delivered, a new
    one is told to retry (451 4.3.2), then the milter exits by itself."""
    mw = mailwarden()
    sink.clear()
    # one transaction stopped right before its final dot: the milter holds
    # the session (connect, helo, mail and rcpt seen)
    session = SmtpSession(postfix.smtp_port, helo="inflight.sender.example",
                          xclient={"ADDR": "198.51.100.201"})
    assert session.open()[2] == "ready"
    data, msgid = make_message("in flight at SIGTERM")
    late_data, late_msgid = make_message("started after SIGTERM")
    try:
        assert session.command("MAIL FROM:<inflight@sender.example>")[0] == 250
        assert session.command("RCPT TO:<bob@rcpt.example>")[0] == 250
        assert session.command("DATA")[0] == 354
        session.sock.sendall(data + b"\r\n")
        proc = mw._proc
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "stopping: no new transactions" in mw.log_text(), 15,
                   "the milter to start draining after SIGTERM", interval=0.1)
        # while it drains, a new transaction is refused for now, not lost
        late = smtp_send(postfix.smtp_port, xclient={"ADDR": "198.51.100.202"},
                         mail_from="late@sender.example", rcpts=["bob@rcpt.example"],
                         data=late_data)
        assert not late.accepted and 400 <= late.code < 500, (late.code, late.text)
        assert proc.poll() is None, "the milter exited with a transaction in flight"
        session.sock.sendall(b".\r\n")
        code, text = session._reply()
    finally:
        session.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail("mailwarden did not exit within 30 s of SIGTERM once idle")
    assert code == 250, f"the message in flight at SIGTERM got {code} {text}"
    assert sink.wait_for_match(msgid.encode(), 30)
    assert sink.find(late_msgid.encode()) == []
    assert proc.returncode == 0
    assert "mailwarden stopped" in mw.log_text()


def test_sigterm_under_load_exits_and_loses_nothing(postfix, sink, mailwarden):
    mw = mailwarden()
    sink.clear()
    exited = []
    half = threading.Event()

    def on_accepted(n):
        if n == 50:
            half.set()

    def terminator():
        if not half.wait(60):
            return
        proc = mw._proc
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)           # libmilter notices within ~5 s
            exited.append(proc.returncode)
        except subprocess.TimeoutExpired:
            exited.append(None)
        mw.restart()

    thread = threading.Thread(target=terminator, daemon=True)
    thread.start()
    report = run_load(postfix.smtp_port, 150, 8, on_accepted=on_accepted, deadline=90)
    thread.join(60)
    assert exited == [0], "mailwarden did not exit cleanly within 20 s of SIGTERM"
    sink.wait_for(report.accepted, 60)
    postfix.wait_queue_empty(60)
    count = count_at_sink(report, sink.messages)
    assert count.duplicated == [] and count.lost == [], count.figures()
    assert count.delivered_once == 150, (count.figures(), report.codes)
    _milter_log_clean(mw)


# ------------------------------------------------------------ Redis

needs_redis = pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")


def _status(sink, msgid) -> str:
    got = sink.wait_for_match(msgid.encode(), 30)
    return " ".join(got.header_values("X-Mailwarden-Status"))


def _send_as(postfix, sender: str, addr: str = "198.51.100.77"):
    data, msgid = make_message(f"redis fault {sender}", sender=sender)
    result = smtp_send(postfix.smtp_port, xclient={"ADDR": addr},
                       helo="client.redis.example", mail_from=sender,
                       rcpts=["bob@rcpt.example"], data=data)
    return result, msgid


@needs_redis
def test_redis_down_back_killed_back(postfix, sink, mailwarden, tmp_path):
    redis = RedisServer(tmp_path)           # its port is chosen, nothing listens yet
    # a weight, so that the symbol shows in the status header (0 hides it)
    mw = mailwarden({"state": {"backend": "redis", "url": redis.url, "timeout": "200ms",
                               "retry_interval": "1s"},
                     "check.limits": {"messages_per_sender": "2/1h"},
                     "scores": {"LIMITS_TEMPERROR": "0.01"}})
    try:
        # 1. down at start: mail flows, each message marked, one log line each
        for _ in range(3):
            result, msgid = _send_as(postfix, "down@sender.example")
            assert result.accepted, (result, mw.log_text()[-2000:])
            assert "LIMITS_TEMPERROR" in _status(sink, msgid)
        assert "limits: state store failed, not limiting" in mw.log_text()

        # 2. Redis comes up: the limit is enforced again, nobody restarts anything
        redis.start()
        senders = iter(f"probe{i}@sender.example" for i in range(100))

        def enforced() -> bool:
            sender = next(senders)
            first, msgid = _send_as(postfix, sender)
            return first.accepted and "LIMITS_TEMPERROR" not in _status(sink, msgid)
        wait_until(enforced, 20, "the limits to use Redis again", interval=0.2)
        results = [_send_as(postfix, "back@sender.example")[0] for _ in range(3)]
        assert [r.accepted for r in results] == [True, True, False], results
        assert (results[2].stage, results[2].code, results[2].enhanced) == \
            ("mail", 451, "4.7.1"), results[2]

        # 3. Redis killed mid-run: fail open again, at once
        redis.proc.kill()
        redis.proc.wait(10)
        redis.proc = None
        result, msgid = _send_as(postfix, "back@sender.example")
        assert result.accepted, result
        assert "LIMITS_TEMPERROR" in _status(sink, msgid)

        # 4. back again (empty: no persistence): enforced again by itself
        redis.start()
        wait_until(enforced, 20, "the limits to use Redis after its restart", interval=0.2)
        results = [_send_as(postfix, "again@sender.example")[0] for _ in range(3)]
        assert [r.accepted for r in results] == [True, True, False], results
    finally:
        redis.stop()
    log = mw.log_text()
    # (no SPF for sender.example: counted per client network)
    assert ("messages_per_sender exceeded for <back@sender.example> from 198.51.100.77/32: "
            "2 of 2") in log
    assert ("messages_per_sender exceeded for <again@sender.example> from 198.51.100.77/32: "
            "2 of 2") in log
    # every failure was turned into a symbol here; none reached libmilter
    assert "Traceback" not in log and "crashed at" not in log


# ------------------------------------------------------------ many connections

HELD = 200          # bench/faults.py connections holds 500
OVER = 20
ADDRESSES = 4
# the engine's check pool (32) and DNS workers ([dns] workers, 32)
POOLS = 64


@pytest.fixture
def roomy_postfix(e2e_dir, sink, milter_socket_path):
    """A second private Postfix with room for the held sessions' smtpd processes."""
    instance = Postfix(e2e_dir / "postfix-many", sink.port,
                       milter_socket=f"unix:{milter_socket_path}",
                       extra_main_cf={"default_process_limit": str(HELD + OVER + 60)})
    instance.start()
    yield instance
    instance.stop()


def _settled_status(pid: int, quiet: float = 0.5, timeout: float = 15) -> dict:
    """proc_status once the descriptor count has held still for ``quiet`` s:
    a warm-up session's milter socket, closed a moment after the client's
    QUIT, must not count in a baseline (it did once, one short of HELD)."""
    deadline = time.monotonic() + timeout
    status = proc_status(pid)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = proc_status(pid)
        if now["fds"] != status["fds"]:
            still_since = time.monotonic()
        status = now
        if time.monotonic() - still_since >= quiet:
            return status
    pytest.fail(f"descriptors never settled: {status}")


def _held_round(postfix, sink, addresses, pid, base) -> dict:
    """Hold HELD (+OVER refused) sessions while 60 messages flow, then close."""
    held = HeldSessions(postfix.smtp_port, HELD + OVER, lambda i: addresses[i % ADDRESSES],
                        parallel=20, timeout=60).open()
    try:
        assert len(held.open_sessions) == HELD, held.refused[:5]
        assert [r[1] for r in held.refused] == [421] * OVER, held.refused[:5]
        assert all(r[3] == "xclient" for r in held.refused)
        during = proc_status(pid)
        # each open session holds one milter socket (libmilter polls idle
        # sessions from its worker pool: no thread per session)
        assert during["fds"] >= base["fds"] + HELD, (base, during)
        sink.clear()
        report = run_load(postfix.smtp_port, 60, 4,
                          xclient_for=lambda w: {"ADDR": f"198.51.100.{150 + w}"}, deadline=60)
        assert report.accepted == 60, report.codes
        assert held.alive() == HELD
    finally:
        held.close()
    sink.wait_for(60, 60)
    count = count_at_sink(report, sink.messages)
    assert count.delivered_once == 60 and not count.duplicated
    try:
        wait_until(lambda: proc_status(pid)["fds"] <= base["fds"], 30,
                   "descriptors back to the baseline", interval=0.1)
    except HarnessError:
        pytest.fail(f"descriptor leak: before {base}, now {proc_status(pid)}")
    return {"during": during, "after": proc_status(pid)}


def test_many_sessions_held_open(roomy_postfix, sink, mailwarden):
    postfix = roomy_postfix
    mw = mailwarden({"check.limits": {"concurrent_per_ip": str(HELD // ADDRESSES)}})
    pid = mw.pid
    # the first messages load what is loaded lazily: the baseline comes after
    warm = run_load(postfix.smtp_port, 10, 4, deadline=30)
    assert warm.accepted == 10
    base = _settled_status(pid)
    addresses = [f"203.0.113.{i + 1}" for i in range(ADDRESSES)]
    first = _held_round(postfix, sink, addresses, pid, base)
    second = _held_round(postfix, sink, addresses, pid, base)
    # idle sessions wait in libmilter's poll set, not in a thread of their own
    for round_ in (first, second):
        assert round_["during"]["threads"] < base["threads"] + POOLS, (base, first, second)
    # threads come and go with the messages: libmilter's worker pool retires
    # idle workers after 10 s, the engine's pools keep theirs (bounded by
    # POOLS); a thread per session or message left behind would exceed it
    wait_until(lambda: proc_status(pid)["threads"] <= base["threads"] + POOLS, 30,
               "the milter's threads to settle", interval=0.5)
    # idle sessions cost little: well under 100 kB each
    assert second["after"]["VmHWM"] < base["VmRSS"] + HELD * 100, (base, first, second)
    assert "concurrent_per_ip exceeded for 203.0.113." in mw.log_text()
    _milter_log_clean(mw)
