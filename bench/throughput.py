#!/usr/bin/env python3
"""Throughput of a private Postfix with and without mailwarden, side by side.

Postfix's own ``smtp-source`` sends to a private Postfix on loopback, which
relays everything to Postfix's ``smtp-sink``; DNS is a local unbound serving
the test zones.  Each round measures, one after the other on the same
machine: Postfix alone, Postfix + mailwarden on a UNIX socket, and (with
``--tcp``) Postfix + mailwarden on TCP.  A figure is messages per second from
the first connection until the sink holds every message; every message is
counted at the sink.  Reported: the median over the rounds, and the ratio to
Postfix alone.

mailwarden runs with the default configuration (``conf/mailwarden.ini``'s
embedded defaults) except for the socket, the DNS server and the authserv-id;
``--set section.key=value`` changes more (e.g. ``--set relay.trusted_networks=``
to treat the 127.0.0.1 client as a stranger, so iprev runs too).

Run as root (Postfix needs it), from the repository:
    .venv/bin/python bench/throughput.py [--messages 2000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness import (  # noqa: E402
    DnsServer, HarnessError, Mailwarden, Postfix, free_port, wait_until,
)

# the sending client, 127.0.0.1, has a forward-confirmed PTR for iprev
BENCH_ZONE = """
1.0.0.127.in-addr.arpa.   PTR  localhost.test.example.
localhost.test.example.   A    127.0.0.1
"""


def sbin(name: str) -> str:
    found = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(found).exists():
        raise SystemExit(f"{name} not found: install the postfix package")
    return found


class SmtpSink:
    """Postfix's smtp-sink, dumping every message to one file we count in."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc = None
        self.dump = None

    def start(self, tag: str) -> None:
        dumpdir = self.workdir / "sink"
        dumpdir.mkdir(parents=True, exist_ok=True)
        os.chown(dumpdir, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)
        self.dump = dumpdir / f"{tag}.dump"
        self.proc = subprocess.Popen(
            [sbin("smtp-sink"), "-u", "postfix", "-D", str(self.dump),
             f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise HarnessError(f"smtp-sink exited with {self.proc.returncode}")
            import socket
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(ready, 10, "smtp-sink")

    def count(self) -> int:
        try:
            with open(self.dump, "rb") as fh:
                return sum(1 for line in fh if line.startswith(b"X-Client-Addr: "))
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def run_once(postfix: Postfix, sink: SmtpSink, tag: str, args) -> dict:
    """One smtp-source run; its figures once the sink holds every message."""
    sink.start(tag)
    try:
        start = time.monotonic()
        source = subprocess.run(
            [sbin("smtp-source"), "-s", str(args.sessions), "-m", str(args.messages),
             "-l", str(args.length), "-f", "bench@sender.example", "-t", "bench@rcpt.example",
             "-M", "source.test.example", f"127.0.0.1:{postfix.smtp_port}"],
            capture_output=True, text=True, timeout=args.time_limit)
        sent = time.monotonic() - start
        if source.returncode != 0:
            raise HarnessError(f"smtp-source failed: {source.stderr.strip()[:500]}")
        deadline = start + args.time_limit
        while sink.count() < args.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = time.monotonic() - start
        count = sink.count()
    finally:
        sink.stop()
    postfix.wait_queue_empty(timeout=max(5.0, deadline - time.monotonic()))
    return {"received_per_s": args.messages / sent, "delivered_per_s": count / delivered,
            "count": count, "complete": count == args.messages}


def process_usage(pid: int) -> tuple:
    """(CPU seconds used so far, peak resident set in MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def parse_set(values) -> dict:
    overrides: dict = {}
    for item in values:
        key, sep, value = item.partition("=")
        section, dot, name = key.rpartition(".")
        if not sep or not dot:
            raise SystemExit(f"--set wants section.key=value, got {item!r}")
        overrides.setdefault(section, {})[name] = value
    return overrides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run (2000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    parser.add_argument("--length", type=int, default=4096, help="message size in bytes (4096)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median reported (3)")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="seconds a run may take at most (300)")
    parser.add_argument("--tcp", action="store_true", help="also measure the milter on TCP")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="mailwarden setting (repeat)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private Postfix needs it")
    if not 1 <= args.messages <= 1_000_000 or not 1 <= args.sessions <= 500:
        raise SystemExit("--messages 1..1000000, --sessions 1..500")

    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-bench-"))
    os.chmod(workdir, 0o755)
    extra = parse_set(args.set)
    setups = ["postfix", "milter-unix"] + (["milter-tcp"] if args.tcp else [])
    figures = {name: [] for name in setups}
    failed: list = []
    dns = sink = postfix = mw = None
    try:
        dns = DnsServer(workdir / "dns", zone_text=BENCH_ZONE).start()
        sink = SmtpSink(workdir)
        socket_path = workdir / "run" / "milter.sock"
        postfix = Postfix(workdir / "postfix", sink.port,
                          milter_socket=f"unix:{socket_path}")
        tcp_port = free_port()
        milter_address = {"milter-unix": f"unix:{socket_path}",
                          "milter-tcp": f"inet:127.0.0.1:{tcp_port}"}
        for round_no in range(1, args.rounds + 1):
            for setup in setups:
                # a full restart: after a reload, running smtpd processes may
                # still take connections with the previous milter settings
                postfix.stop()
                if mw is not None:
                    mw.stop()
                    mw = None
                if setup == "postfix":
                    postfix.postconf(smtpd_milters="", non_smtpd_milters="")
                else:
                    overrides = {**extra, "milter": {**extra.get("milter", {}),
                                                     "log_level": "info"}}
                    if setup == "milter-tcp":
                        overrides["milter"]["socket"] = milter_address[setup]
                    mw = Mailwarden(workdir / f"mailwarden-{setup}", dns.port, overrides,
                                    socket_path=socket_path).start()
                    postfix.postconf(smtpd_milters=milter_address[setup],
                                     non_smtpd_milters=milter_address[setup])
                postfix.start()
                cpu_before = process_usage(mw.pid)[0] if mw is not None else 0.0
                try:
                    result = run_once(postfix, sink, f"{setup}-{round_no}", args)
                except (HarnessError, subprocess.TimeoutExpired) as exc:
                    print(f"round {round_no} {setup:12s} FAILED: {exc}", flush=True)
                    if mw is not None:
                        print("  mailwarden's last log lines:\n    " + "\n    ".join(
                            mw.log_text().splitlines()[-10:]), flush=True)
                    failed.append(setup)
                    continue
                if mw is not None:
                    cpu_after, peak = process_usage(mw.pid)
                    result["cpu_ms_per_msg"] = 1000 * (cpu_after - cpu_before) / args.messages
                    result["peak_rss_mb"] = peak
                figures[setup].append(result)
                print(f"round {round_no} {setup:12s} received {result['received_per_s']:7.1f} msg/s"
                      f"  delivered {result['delivered_per_s']:7.1f} msg/s"
                      f"  at sink {result['count']}/{args.messages}"
                      + (f"  milter {result['cpu_ms_per_msg']:.2f} ms CPU/msg,"
                         f" peak RSS {result['peak_rss_mb']:.1f} MB" if mw is not None else ""),
                      flush=True)
                if not result["complete"]:
                    print(f"  incomplete: {result['count']} of {args.messages} reached the sink "
                          f"within {args.time_limit:g}s", flush=True)
    finally:
        if mw is not None:
            mw.stop()
        if postfix is not None:
            postfix.stop()
        if dns is not None:
            dns.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")

    print(f"\n{args.messages} messages of {args.length} bytes, {args.sessions} sessions, "
          f"median of {args.rounds} round(s)")
    ok = not failed
    if not figures["postfix"]:
        print("no run of Postfix alone completed: no figures")
        return 1
    base = statistics.median(r["delivered_per_s"] for r in figures["postfix"])
    for setup in setups:
        if not figures[setup]:
            print(f"{setup:12s} every run failed")
            continue
        delivered = statistics.median(r["delivered_per_s"] for r in figures[setup])
        received = statistics.median(r["received_per_s"] for r in figures[setup])
        complete = all(r["complete"] for r in figures[setup])
        ok &= complete
        usage = ""
        if setup != "postfix":
            cpu = statistics.median(r["cpu_ms_per_msg"] for r in figures[setup])
            peak = max(r["peak_rss_mb"] for r in figures[setup])
            usage = f"  milter {cpu:.2f} ms CPU/msg, peak RSS {peak:.1f} MB"
        print(f"{setup:12s} {delivered:7.1f} msg/s delivered ({received:7.1f} received)"
              f"  ratio {delivered / base:5.2f}  {'all delivered' if complete else 'INCOMPLETE'}"
              + usage)
    if failed:
        print(f"failed runs: {', '.join(failed)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
