"""A bounded SMTP load client for the fault tests and ``bench/faults.py``.

:func:`run_load` sends messages with unique Message-IDs over a fixed number
of long-lived SMTP sessions (one thread each).  A 4xx reply, or a
connection lost before the end-of-data reply, ends that session: the
client reconnects and sends the same message again (same Message-ID), at
most ``max_attempts`` times and never past ``deadline`` seconds.  Every
message ends in exactly one :class:`Outcome`: accepted (2xx after DATA),
refused (5xx), or given up with the last 4xx.

A connection lost after the whole message was written but before its
reply is *ambiguous*: the server may have queued it.  That is counted on
its own (``Outcome.ambiguous``), since a retry after it is the one way an
SMTP client can duplicate mail; the message is still retried.

:func:`count_at_sink` matches what the sink holds against the outcomes by
Message-ID: delivered once, duplicated, lost (accepted but never delivered)
and delivered although refused.

:class:`HeldSessions` opens many SMTP sessions and keeps them open;
:func:`proc_status` reads a process's threads, descriptors and memory.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tests.harness import _xclient_value, dot_stuff, make_message, read_smtp_reply


class SessionLost(Exception):
    """The connection broke; ``after_data`` if the whole message was sent."""

    def __init__(self, text: str, after_data: bool = False):
        super().__init__(text)
        self.after_data = after_data


class SmtpSession:
    """One SMTP connection that carries several transactions."""

    def __init__(self, port: int, *, helo: str, xclient: Optional[dict] = None,
                 timeout: float = 60.0, host: str = "127.0.0.1"):
        self.port, self.helo, self.xclient = port, helo, xclient
        self.timeout, self.host = timeout, host
        self.sock: Optional[socket.socket] = None
        self.rfile = None

    def _reply(self) -> tuple:
        return read_smtp_reply(self.rfile, SessionLost)

    def command(self, line: str) -> tuple:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")
        return self._reply()

    def open(self) -> tuple:
        """Connect, EHLO, XCLIENT, EHLO; ``(code, text, stage)`` of the first
        refusal, or ``(250, ..., "ready")``."""
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            return 0, f"connect failed: {exc}", "connect"
        self.rfile = self.sock.makefile("rb")
        try:
            code, text = self._reply()
            if code != 220:
                return code, text, "connect"
            code, text = self.command(f"EHLO {self.helo}")
            if code != 250:
                return code, text, "helo"
            if self.xclient:
                attrs = " ".join(f"{k.upper()}={_xclient_value(v)}"
                                 for k, v in self.xclient.items())
                code, text = self.command(f"XCLIENT {attrs}")
                if code != 220:
                    return code, text, "xclient"
                code, text = self.command(f"EHLO {self.helo}")
                if code != 250:
                    return code, text, "helo"
        except (OSError, SessionLost) as exc:
            return 0, f"{exc.__class__.__name__}: {exc}", "connect"
        return 250, "ready", "ready"

    def send(self, mail_from: str, rcpts: list, data: bytes) -> tuple:
        """One transaction: ``(code, text, stage)``; raises :class:`SessionLost`."""
        sent_all = False
        try:
            code, text = self.command(f"MAIL FROM:<{mail_from}>")
            if code != 250:
                return code, text, "mail"
            accepted = 0
            for rcpt in rcpts:
                code, text = self.command(f"RCPT TO:<{rcpt}>")
                accepted += 200 <= code < 300
            if not accepted:
                self.command("RSET")
                return code, text, "rcpt"
            code, text = self.command("DATA")
            if code != 354:
                return code, text, "data"
            self.sock.sendall(dot_stuff(data))
            sent_all = True
            code, text = self._reply()
            return code, text, "done" if code < 400 else "data"
        except OSError as exc:
            raise SessionLost(f"{exc.__class__.__name__}: {exc}", sent_all) from None
        except SessionLost as exc:
            raise SessionLost(str(exc), sent_all) from None

    def close(self) -> None:
        if self.sock is None:
            return
        try:
            self.sock.settimeout(2)
            self.command("QUIT")
        except (OSError, SessionLost):
            pass
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass
        self.sock = self.rfile = None


@dataclass
class Outcome:
    """How one message ended, after its retries."""
    msgid: str
    code: int = 0
    text: str = ""
    stage: str = ""
    attempts: int = 0
    tempfails: int = 0          # 4xx replies and lost sessions on the way
    ambiguous: int = 0          # connection lost after the whole message was sent

    @property
    def accepted(self) -> bool:
        return self.stage == "done" and 200 <= self.code < 300

    @property
    def refused(self) -> bool:
        return 500 <= self.code < 600


@dataclass
class LoadReport:
    outcomes: list
    seconds: float
    sessions_opened: int = 0
    replies_4xx: int = 0            # every 4xx seen, retried or final
    lost_sessions: int = 0
    codes: Counter = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return sum(o.accepted for o in self.outcomes)

    @property
    def final_4xx(self) -> int:
        return sum(400 <= o.code < 500 or (o.code == 0 and not o.accepted)
                   for o in self.outcomes)

    @property
    def final_5xx(self) -> int:
        return sum(o.refused for o in self.outcomes)

    @property
    def ambiguous(self) -> int:
        return sum(o.ambiguous for o in self.outcomes)


def run_load(port: int, count: int, sessions: int, *,
             xclient_for: Callable[[int], dict] = lambda w: {"ADDR": f"198.51.100.{10 + w}"},
             mail_from: str = "load@sender.example", rcpt: str = "load@rcpt.example",
             body: str = "Load test body line.\n" * 20, max_attempts: int = 30,
             deadline: float = 300.0, backoff: float = 0.1,
             on_accepted: Optional[Callable[[int], None]] = None,
             stop: Optional[threading.Event] = None) -> LoadReport:
    """Send ``count`` messages over ``sessions`` sessions (see the module text).

    ``on_accepted(n)`` is called with the running number of accepted
    messages (from the worker threads); ``stop`` ends the run early, the
    messages not yet tried keep an empty outcome.
    """
    outcomes = []
    payloads = []
    for i in range(count):
        data, msgid = make_message(f"load {i}", sender=mail_from, to=rcpt, body=body)
        outcomes.append(Outcome(msgid))
        payloads.append(data)
    lock = threading.Lock()
    next_index = iter(range(count))
    state = {"accepted": 0, "opened": 0, "4xx": 0, "lost": 0}
    codes: Counter = Counter()
    end = time.monotonic() + deadline
    stop = stop or threading.Event()

    def note(code: int) -> None:
        with lock:
            codes[code] += 1
            if 400 <= code < 500:
                state["4xx"] += 1

    def worker(w: int) -> None:
        session: Optional[SmtpSession] = None
        while not stop.is_set():
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            out = outcomes[i]
            while out.attempts < max_attempts and time.monotonic() < end:
                out.attempts += 1
                if session is None:
                    session = SmtpSession(port, helo=f"load{w}.sender.example",
                                          xclient=xclient_for(w))
                    with lock:
                        state["opened"] += 1
                    code, text, stage = session.open()
                    if stage != "ready":
                        note(code)
                        session.close()
                        session = None
                        out.code, out.text, out.stage = code, text, stage
                        if 500 <= code < 600:
                            break
                        out.tempfails += 1
                        time.sleep(backoff)     # a retry pause, not a readiness wait
                        continue
                try:
                    code, text, stage = session.send(mail_from, [rcpt], payloads[i])
                except SessionLost as exc:
                    with lock:
                        state["lost"] += 1
                    session.close()
                    session = None
                    out.code, out.text, out.stage = 0, str(exc), "lost"
                    out.tempfails += 1
                    out.ambiguous += exc.after_data
                    time.sleep(backoff)
                    continue
                note(code)
                out.code, out.text, out.stage = code, text, stage
                if code < 400:
                    with lock:
                        state["accepted"] += 1
                        n = state["accepted"]
                    if on_accepted is not None:
                        on_accepted(n)
                    break
                if code >= 500:
                    # a refused message leaves the session usable
                    try:
                        session.command("RSET")
                    except (OSError, SessionLost):
                        session.close()
                        session = None
                    break
                # a 4xx: Postfix keeps refusing in a session whose milter
                # failed, so start over on a new connection
                out.tempfails += 1
                session.close()
                session = None
                time.sleep(backoff)
        if session is not None:
            session.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,), name=f"load-{w}", daemon=True)
               for w in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + 120)
    return LoadReport(outcomes, time.monotonic() - started, state["opened"], state["4xx"],
                      state["lost"], codes)


_MSGID = re.compile(rb"(?im)^Message-ID:[ \t]*(<[^>\r\n]*>)")


@dataclass
class SinkCount:
    sent: int
    delivered_once: int
    duplicated: list          # Message-IDs delivered more than once
    lost: list                # accepted, never delivered
    refused_but_delivered: list
    unknown_at_sink: int      # messages at the sink that are not from this run

    def figures(self) -> dict:
        return {"sent": self.sent, "delivered once": self.delivered_once,
                "duplicated": len(self.duplicated), "lost": len(self.lost),
                "refused but delivered": len(self.refused_but_delivered)}


def count_at_sink(report: LoadReport, sink_messages: list) -> SinkCount:
    """Match the sink's messages with the run's outcomes by Message-ID."""
    seen: Counter = Counter()
    for message in sink_messages:
        head = message.data.split(b"\r\n\r\n", 1)[0]
        m = _MSGID.search(head)
        if m:
            seen[m.group(1).decode("ascii", "replace")] += 1
    ours = {o.msgid for o in report.outcomes}
    return SinkCount(
        sent=len(report.outcomes),
        delivered_once=sum(1 for o in report.outcomes if seen[o.msgid] == 1),
        duplicated=[o.msgid for o in report.outcomes if seen[o.msgid] > 1],
        lost=[o.msgid for o in report.outcomes if o.accepted and seen[o.msgid] == 0],
        refused_but_delivered=[o.msgid for o in report.outcomes
                               if not o.accepted and seen[o.msgid] > 0],
        unknown_at_sink=sum(n for k, n in seen.items() if k not in ours))


class HeldSessions:
    """``count`` SMTP sessions opened (up to ``parallel`` at a time) and kept.

    ``addr_for(i)`` is the XCLIENT address of session ``i``.  ``refused``
    holds ``(i, code, text, stage)`` for those the server did not let in.
    Every session is bounded by ``timeout``; :meth:`close` QUITs them all.
    """

    def __init__(self, port: int, count: int, addr_for: Callable[[int], str], *,
                 parallel: int = 20, timeout: float = 60.0):
        self.port, self.count, self.addr_for = port, count, addr_for
        self.parallel, self.timeout = parallel, timeout
        self.open_sessions: list = []
        self.refused: list = []
        self._lock = threading.Lock()

    def open(self) -> "HeldSessions":
        indexes = iter(range(self.count))

        def opener():
            while True:
                with self._lock:
                    i = next(indexes, None)
                if i is None:
                    return
                session = SmtpSession(self.port, helo=f"held{i}.sender.example",
                                      xclient={"ADDR": self.addr_for(i)}, timeout=self.timeout)
                code, text, stage = session.open()
                with self._lock:
                    if stage == "ready":
                        self.open_sessions.append(session)
                    else:
                        self.refused.append((i, code, text, stage))
                if stage != "ready":
                    session.close()

        threads = [threading.Thread(target=opener, daemon=True) for _ in range(self.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout * 2 + 60)
        return self

    def alive(self) -> int:
        """Sessions still answering NOOP with 250."""
        good = 0
        for session in self.open_sessions:
            try:
                good += session.command("NOOP")[0] == 250
            except (OSError, SessionLost):
                pass
        return good

    def close(self) -> None:
        for session in self.open_sessions:
            session.close()
        self.open_sessions = []


def proc_status(pid: int) -> dict:
    """Threads, open descriptors, VmRSS and VmHWM (kB) of a live process."""
    base = Path(f"/proc/{pid}")
    status = {}
    for line in (base / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            status[key] = int(value.split()[0])
    status["threads"] = len(list((base / "task").iterdir()))
    status["fds"] = len(list((base / "fd").iterdir()))
    return status
