"""SIGHUP reloads config and lists through the real Postfix while mail flows.

libmilter's own signal thread treats SIGHUP like SIGTERM; mailwarden keeps
SIGHUP for its main thread (mailwarden.reload).  These tests send real
signals to the running ``mailwarden run`` and watch mail go through Postfix.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import threading
import time
import urllib.request

import pytest

from tests.harness import free_port, make_message, smtp_send, wait_until

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"
FLOW_CLIENT = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "HELO": "mail.sender.example"}


class MailFlow:
    """Sends small messages through Postfix in a thread until stopped (bounded)."""

    def __init__(self, port: int, limit: int = 400, seconds: float = 120.0):
        self.port, self.limit, self.seconds = port, limit, seconds
        self.results: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailflow", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and len(self.results) < self.limit \
                and time.monotonic() < deadline:
            data, _ = make_message("flow")
            self.results.append(smtp_send(self.port, xclient=FLOW_CLIENT, mail_from=SENDER,
                                          rcpts=[RCPT], data=data))

    def start(self) -> "MailFlow":
        self._thread.start()
        return self

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        wait_until(lambda: len(self.results) >= count, timeout, f"{count} flowing messages")

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(60)
        return self.results


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not on the page"
    return float(m.group(1))


def _send(postfix, addr: str, body: str = "Hello.\n"):
    data, msgid = make_message("reload", body=body)
    return smtp_send(postfix.smtp_port, xclient={"ADDR": addr, "NAME": "mail.sender.example",
                                                 "HELO": "mail.sender.example"},
                     mail_from=SENDER, rcpts=[RCPT], data=data), msgid


def _reloads(mw) -> int:
    return mw.log_text(since_start=True).count("reloaded ")


def test_sighup_reloads_config_and_lists_while_mail_flows(postfix, sink, mailwarden, tmp_path):
    blocklist = tmp_path / "block.list"
    blocklist.write_text("# blocked clients\n198.51.100.90\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(blocklist, 0o644)
    metrics_port = free_port()
    overrides = {"check.iplist": {"block_file": str(blocklist)},
                 "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    mw = mailwarden(overrides)
    pid = mw.pid
    flow = MailFlow(postfix.smtp_port).start()
    try:
        flow.wait_for(3)
        # an SMTP transaction in flight across the reload: it started under
        # the old configuration (no size limit) and must finish under it
        inflight = smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=30)
        inflight.ehlo("client.test.example")
        code, _ = inflight.docmd("XCLIENT", "ADDR=198.51.100.91 NAME=mail.sender.example "
                                            "HELO=mail.sender.example")
        assert code == 220
        inflight.ehlo("client.test.example")
        assert inflight.mail(SENDER)[0] == 250
        assert inflight.rcpt(RCPT)[0] == 250

        # new config: a 2K size limit; the list file gains 198.51.100.92
        mw.overrides = {**overrides, "check.size": {"max_size": "2K"}}
        mw.write_config()
        blocklist.write_text("198.51.100.90\n198.51.100.92\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: _reloads(mw) >= 1, 15, "the first reload")

        big = "x" * 70 + "\n"
        big_data, big_id = make_message("in flight", body=big * 80)
        code, text = inflight.data(big_data)
        assert code == 250, (code, text, mw.log_text()[-2000:])
        inflight.quit()
        sink.wait_for_match(big_id.encode())

        result, _ = _send(postfix, "198.51.100.93", body=big * 80)
        assert (result.stage, result.code) == ("data", 552), result
        result, _ = _send(postfix, "198.51.100.92")
        assert (result.stage, result.code) == ("xclient", 554) or result.code == 554, result
        result, msgid = _send(postfix, "198.51.100.93")
        assert result.accepted, result
        sink.wait_for_match(msgid.encode())

        # a burst of SIGHUPs: each may reload, none may stop the milter
        before = len(flow.results)
        for _ in range(25):
            os.kill(pid, signal.SIGHUP)
        wait_until(lambda: _reloads(mw) >= 2, 15, "the burst's reloads")
        flow.wait_for(before + 5)
        assert mw.alive()

        # a broken file is refused with file:line, and the running config stays
        reloads = _reloads(mw)
        text = mw.config_path.read_text()
        mw.config_path.write_text(text + "[check.size]\nmax_sise = 1K\n"
                                  if "[check.size]" not in text else
                                  text.replace("max_size = 2K", "max_size = 2K\nmax_sise = 1K"))
        lineno = next(i for i, line in enumerate(mw.config_path.read_text().splitlines(), 1)
                      if line.startswith("max_sise"))
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in mw.log_text(since_start=True), 15,
                   "the refusal")
        refusal = next(line for line in mw.log_text(since_start=True).splitlines()
                       if "reload refused" in line)
        assert f"{mw.config_path}:{lineno}: [check.size] max_sise: unknown key" in refusal
        assert _reloads(mw) == reloads
        result, _ = _send(postfix, "198.51.100.93", body=big * 80)
        assert result.code == 552, result                 # still the 2K limit
        result, _ = _send(postfix, "198.51.100.92")
        assert result.code == 554, result                 # still the list

        page = _metrics(metrics_port)
        assert _metric(page, "mailwarden_config_reloads_total", '{result="failed"}') == 1
        assert _metric(page, "mailwarden_config_reloads_total", '{result="ok"}') >= 2
    finally:
        results = flow.stop()
    # not one message of the flow was refused or lost across the reloads
    assert len(results) >= 10, len(results)
    assert all(r.accepted for r in results), [r for r in results if not r.accepted][:3]
    assert mw.alive()
    log = mw.log_text(since_start=True)
    assert "Traceback" not in log
    assert "mailwarden stopped" not in log

    # SIGTERM still stops it, gracefully, through libmilter
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not mw.alive(), 20, "mailwarden to stop on SIGTERM")
    assert "mailwarden stopped" in mw.log_text(since_start=True)
