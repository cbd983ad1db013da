#!/usr/bin/env python3
"""Fault runs of the milter behind a private Postfix, at full size.

Postfix (``milter_default_action = tempfail``) on loopback relays to an
in-process sink that keeps every message; DNS is a local unbound with the
test zones; the client is ``tests/harness/loadclient.py`` (unique Message-IDs,
bounded retries on 4xx).  ``tests/e2e/test_faults.py`` runs the same
scenarios smaller.

``kill``
    ``--messages`` (2000) over ``--sessions`` (20) connections; mailwarden
    is killed with SIGKILL ``--kills`` (2) times, at even steps of accepted
    messages, and restarted.  Figures: sent, delivered once, duplicated,
    lost (accepted, never delivered), 4xx replies seen, final 4xx, 5xx.
``term``
    Load, then SIGTERM: how long the milter takes to exit, and what became
    of the messages in flight (delivered, retried, lost).
``connections``
    ``--held`` (500) SMTP sessions kept open while ``--messages`` flow on
    ``--sessions`` other connections; ``concurrent_per_ip`` set so that
    ``--over`` extra sessions from the held addresses are answered 421.
    Figures: the milter's threads, descriptors and RSS before, while held,
    and after every session closed; peak RSS (VmHWM).  ``--rounds`` (2)
    times over.  Idle sessions wait in libmilter's poll set, not in threads;
    the engine's check pool and DNS workers (ThreadPoolExecutors, 32 each,
    never shrinking) grow towards their bound over the rounds, so threads are
    checked against that bound, descriptors against the baseline.

Every run is bounded in messages and time; run as root from the repository:
    .venv/bin/python bench/faults.py kill [--messages 2000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import (  # noqa: E402
    DnsServer, HarnessError, Mailwarden, Postfix, Sink, wait_until,
)
from tests.harness.loadclient import (  # noqa: E402
    HeldSessions, count_at_sink, proc_status, run_load,
)


class Rig:
    """unbound + sink + Postfix + mailwarden under one temporary directory."""

    def __init__(self, workdir: Path, process_limit: int = 100, overrides=None):
        self.workdir = workdir
        os.chmod(workdir, 0o755)
        self.dns = DnsServer(workdir / "dns")
        self.sink = Sink()
        sockdir = workdir / "run"
        sockdir.mkdir()
        os.chmod(sockdir, 0o755)
        self.socket = sockdir / "milter.sock"
        self.process_limit = process_limit
        self.overrides = overrides or {}
        self.postfix = None
        self.mw = None

    def __enter__(self):
        self.dns.start()
        self.sink.start()
        self.postfix = Postfix(self.workdir / "postfix", self.sink.port,
                               milter_socket=f"unix:{self.socket}",
                               extra_main_cf={"default_process_limit": str(self.process_limit)})
        self.postfix.start()
        self.mw = Mailwarden(self.workdir / "mailwarden", self.dns.port, self.overrides,
                             socket_path=self.socket).start()
        return self

    def __exit__(self, *exc):
        for part in (self.mw, self.postfix, self.sink, self.dns):
            if part is not None:
                part.stop()


def print_figures(title: str, figures: dict) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")


def settle(rig: Rig, accepted: int, timeout: float = 120.0) -> None:
    """Wait until the sink holds what was accepted and Postfix's queue is empty."""
    try:
        rig.sink.wait_for(accepted, timeout)
        rig.postfix.wait_queue_empty(timeout)
    except HarnessError as exc:
        print(f"  (not settled: {exc})")


def cmd_kill(args) -> int:
    with tempfile.TemporaryDirectory(prefix="mailwarden-faults-") as tmp, \
            Rig(Path(tmp), process_limit=max(100, args.sessions * 2)) as rig:
        steps = [args.messages * (k + 1) // (args.kills + 1) for k in range(args.kills)]
        pending = list(steps)
        kills = []
        lock = threading.Lock()
        due = threading.Event()

        def on_accepted(n: int) -> None:
            with lock:
                if pending and n >= pending[0]:
                    pending.pop(0)
                    due.set()

        def killer() -> None:
            while len(kills) < args.kills and not finished.is_set():
                if not due.wait(0.5):
                    continue
                due.clear()
                pid = rig.mw.pid
                t0 = time.monotonic()
                rig.mw.restart()        # SIGKILL, then start and wait until it accepts
                kills.append((pid, time.monotonic() - t0))
                print(f"  killed pid {pid} (SIGKILL), restarted as {rig.mw.pid} "
                      f"in {kills[-1][1]:.2f}s", flush=True)

        finished = threading.Event()
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        report = run_load(rig.postfix.smtp_port, args.messages, args.sessions,
                          on_accepted=on_accepted, deadline=args.deadline)
        finished.set()
        thread.join(60)
        settle(rig, report.accepted)
        count = count_at_sink(report, rig.sink.messages)
        figures = {
            "messages sent": count.sent,
            "accepted (2xx)": report.accepted,
            "delivered at the sink (once)": count.delivered_once,
            "duplicated at the sink": len(count.duplicated),
            "lost (accepted, not delivered)": len(count.lost),
            "delivered although refused": len(count.refused_but_delivered),
            "final 4xx (gave up)": report.final_4xx,
            "final 5xx": report.final_5xx,
            "4xx replies seen (then retried)": report.replies_4xx,
            "sessions lost mid-transaction": report.lost_sessions,
            "ambiguous (lost after the final dot)": report.ambiguous,
            "SMTP sessions opened": report.sessions_opened,
            "SIGKILLs": len(kills),
            "seconds": f"{report.seconds:.1f}",
            "reply codes": dict(sorted(report.codes.items())),
        }
        print_figures(f"kill: {args.messages} messages over {args.sessions} sessions, "
                      f"{args.kills} SIGKILLs", figures)
        log = rig.mw.log_text()
        print(f"  tracebacks in the milter log: {log.count('Traceback')}")
        ok = (not count.duplicated and not count.lost and not count.refused_but_delivered
              and count.delivered_once + report.final_4xx + report.final_5xx == count.sent
              and len(kills) == args.kills)
        print("  RESULT:", "ok" if ok else "FAILED")
        return 0 if ok else 1


def cmd_term(args) -> int:
    with tempfile.TemporaryDirectory(prefix="mailwarden-faults-") as tmp, \
            Rig(Path(tmp), process_limit=max(100, args.sessions * 2)) as rig:
        signalled = threading.Event()
        exit_seconds = []

        def on_accepted(n: int) -> None:
            if n >= args.messages // 2 and not signalled.is_set():
                signalled.set()

        def terminator() -> None:
            if not signalled.wait(args.deadline):
                return
            proc = rig.mw._proc
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(args.term_timeout)
                exit_seconds.append(time.monotonic() - t0)
                print(f"  SIGTERM: pid {proc.pid} exited with {proc.returncode} "
                      f"after {exit_seconds[-1]:.2f}s", flush=True)
            except Exception:           # noqa: BLE001 - reported just below
                print(f"  SIGTERM: pid {proc.pid} still running after "
                      f"{args.term_timeout}s", flush=True)
            rig.mw.restart()

        thread = threading.Thread(target=terminator, daemon=True)
        thread.start()
        report = run_load(rig.postfix.smtp_port, args.messages, args.sessions,
                          on_accepted=on_accepted, deadline=args.deadline)
        thread.join(args.term_timeout + 60)
        settle(rig, report.accepted)
        count = count_at_sink(report, rig.sink.messages)
        log = rig.mw.log_text()
        figures = {
            "messages sent": count.sent,
            "delivered once": count.delivered_once,
            "duplicated": len(count.duplicated),
            "lost": len(count.lost),
            "4xx replies seen (then retried)": report.replies_4xx,
            "final 4xx": report.final_4xx,
            "final 5xx": report.final_5xx,
            "exit after SIGTERM (s)": f"{exit_seconds[0]:.2f}" if exit_seconds else "no exit",
            "'mailwarden stopped' logged": "mailwarden stopped" in log,
            "tracebacks in the log": log.count("Traceback"),
        }
        print_figures(f"term: {args.messages} messages over {args.sessions} sessions, "
                      "SIGTERM half-way", figures)
        ok = bool(exit_seconds) and not count.duplicated and not count.lost
        print("  RESULT:", "ok" if ok else "FAILED")
        return 0 if ok else 1


def cmd_connections(args) -> int:
    addresses = [f"203.0.113.{i + 1}" for i in range(args.addresses)]
    per_address = -(-args.held // args.addresses)
    overrides = {"check.limits": {"concurrent_per_ip": str(per_address)}}
    limit = args.held + args.over + args.sessions * 2 + 50
    total = args.held + args.over
    with tempfile.TemporaryDirectory(prefix="mailwarden-faults-") as tmp, \
            Rig(Path(tmp), process_limit=limit, overrides=overrides) as rig:
        pid = rig.mw.pid
        # warm up: the first messages load what is loaded lazily
        run_load(rig.postfix.smtp_port, 20, args.sessions, deadline=60)
        before = proc_status(pid)
        ok = True
        snapshots = [before]
        for round_no in range(1, args.rounds + 1):
            t0 = time.monotonic()
            held = HeldSessions(rig.postfix.smtp_port, total,
                                lambda i: addresses[i % len(addresses)],
                                parallel=args.parallel, timeout=120).open()
            open_seconds = time.monotonic() - t0
            held_count = len(held.open_sessions)
            during = proc_status(pid)
            rig.sink.clear()
            report = run_load(rig.postfix.smtp_port, args.messages, args.sessions,
                              xclient_for=lambda w: {"ADDR": f"198.51.100.{100 + w}"},
                              deadline=args.deadline)
            while_held = proc_status(pid)
            alive = held.alive()
            held.close()
            settle(rig, report.accepted)
            t1 = time.monotonic()
            try:
                wait_until(lambda: proc_status(pid)["fds"] <= before["fds"], 60,
                           "descriptors back to the baseline", interval=0.1)
            except HarnessError as exc:
                print(f"  ({exc})")
            back_seconds = time.monotonic() - t1
            after = proc_status(pid)
            snapshots.append(after)
            count = count_at_sink(report, rig.sink.messages)
            codes_421 = sum(1 for r in held.refused if r[1] == 421)
            figures = {
                "sessions asked for": total,
                "held open": held_count,
                "still answering NOOP after the load": alive,
                "refused 421 (concurrent_per_ip)": codes_421,
                "refused otherwise": len(held.refused) - codes_421,
                "seconds to open them": f"{open_seconds:.1f}",
                "messages sent meanwhile / delivered once": (f"{count.sent} / "
                                                             f"{count.delivered_once}"),
                "lost / duplicated": f"{len(count.lost)} / {len(count.duplicated)}",
                "threads before / held / held+load / after": _row(before, during, while_held,
                                                                  after, "threads"),
                "fds before / held / held+load / after": _row(before, during, while_held,
                                                              after, "fds"),
                "VmRSS kB before / held / held+load / after": _row(before, during,
                                                                   while_held, after, "VmRSS"),
                "VmHWM kB after this round": after["VmHWM"],
                "seconds until fds were back": f"{back_seconds:.1f}",
            }
            print_figures(f"connections, round {round_no}: {args.held} held (+{args.over} "
                          f"over the limit) over {args.addresses} addresses, "
                          f"{args.messages} messages alongside", figures)
            ok &= (codes_421 == args.over and held_count == args.held and alive == args.held
                   and after["fds"] <= before["fds"] and not count.lost
                   and count.delivered_once == count.sent)
        # a leak grows with every round; a pool grows once, to its working size
        growth = [b["threads"] - a["threads"] for a, b in zip(snapshots[1:], snapshots[2:])]
        print(f"\n  threads after each round: {[s['threads'] for s in snapshots]}"
              f" (change from round 2 on: {growth})")
        t2 = time.monotonic()
        try:
            wait_until(lambda: proc_status(pid)["threads"] <= before["threads"], 60,
                       "threads back to the baseline", interval=0.5)
            print(f"  threads back to the baseline {time.monotonic() - t2:.1f}s after the "
                  f"last round: {proc_status(pid)}")
        except HarnessError:
            print(f"  threads 60 s after the last round: {proc_status(pid)} "
                  f"(baseline {before['threads']})")
        # bounded: the engine's check pool and DNS workers keep up to 32 each
        ok &= all(s["threads"] <= before["threads"] + 64 for s in snapshots)
        log = rig.mw.log_text()
        print(f"  tracebacks in the milter log: {log.count('Traceback')}")
        ok &= "Traceback" not in log
        print("  RESULT:", "ok" if ok else "FAILED")
        return 0 if ok else 1


def _row(*snapshots_and_key) -> str:
    *snapshots, key = snapshots_and_key
    return " / ".join(str(s[key]) for s in snapshots)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kill = sub.add_parser("kill", help="SIGKILL and restart during load")
    kill.add_argument("--messages", type=int, default=2000)
    kill.add_argument("--sessions", type=int, default=20)
    kill.add_argument("--kills", type=int, default=2)
    kill.add_argument("--deadline", type=float, default=600)
    term = sub.add_parser("term", help="SIGTERM during load")
    term.add_argument("--messages", type=int, default=400)
    term.add_argument("--sessions", type=int, default=20)
    term.add_argument("--term-timeout", type=float, default=30)
    term.add_argument("--deadline", type=float, default=300)
    conn = sub.add_parser("connections", help="many sessions held open")
    conn.add_argument("--held", type=int, default=500)
    conn.add_argument("--over", type=int, default=50)
    conn.add_argument("--addresses", type=int, default=10)
    conn.add_argument("--parallel", type=int, default=25)
    conn.add_argument("--messages", type=int, default=200)
    conn.add_argument("--sessions", type=int, default=5)
    conn.add_argument("--deadline", type=float, default=300)
    conn.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: a private Postfix needs it")
    return {"kill": cmd_kill, "term": cmd_term, "connections": cmd_connections}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
