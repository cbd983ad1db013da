#!/usr/bin/env python3
"""Peak memory of mailwarden: many open connections, then one large message.

mailwarden runs (UNIX socket) with bench/compare.py's settings behind the
private Postfix.  ``--connections`` SMTP clients connect and say EHLO and
start a transaction (MAIL FROM) and
stay open (Postfix opens one milter connection for each); then one
DKIM-signed message of ``--size`` MB goes through (the body is spooled to
disk past ``[milter] spool_threshold``).  Printed: mailwarden's peak RSS
(VmHWM) at start, with the connections open, and after the large message,
and whether that message reached the sink with dkim=pass.

    .venv/bin/python bench/memory.py [--connections 100] [--size 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare import (  # noqa: E402
    DOMAIN, HELO, RCPT, SELECTOR, SENDER, BenchDns, MailwardenDaemon, make_signed_message,
)
from mailwarden.genkey import make_key, zone_line          # noqa: E402
from tests.harness import (                                     # noqa: E402
    HarnessError, Postfix, Sink, read_smtp_reply, smtp_send, wait_until,
)


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def milter_connections(path: str) -> int:
    """Connections accepted on the milter's UNIX socket ``path``: in
    /proc/net/unix an accepted socket carries the listener's path, state
    connected (03), and is not the listener itself.  (Counting the
    process's sockets less those open at start counted any socket that was
    open only then; one run timed out there, not reproduced since.)"""
    count = 0
    with open("/proc/net/unix", encoding="ascii", errors="replace") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and fields[5] == "03":
                count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=float, default=20.0, help="large message, MB (20)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private Postfix needs it")
    if not 1 <= args.connections <= 500 or not 0.1 <= args.size <= 60:
        parser.error("--connections 1..500, --size 0.1..60")
    private, txt = make_key("rsa", 2048)
    big = make_signed_message(int(args.size * 1024 * 1024), private)
    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-memory-"))
    os.chmod(workdir, 0o755)
    (workdir / "run").mkdir()
    os.chmod(workdir / "run", 0o777)
    address = f"unix:{workdir / 'run' / 'mailwarden.sock'}"
    dns_server = sink = postfix = mw = None
    clients: list = []
    replies: list = []          # each client's reading side
    try:
        dns_server = BenchDns(workdir / "dns", zone_line(DOMAIN, SELECTOR, txt)).start()
        sink = Sink().start()
        mw = MailwardenDaemon(workdir / "mailwarden", address, {}).start()
        postfix = Postfix(workdir / "postfix", sink.port, milter_socket=address,
                          extra_main_cf={"default_process_limit": str(args.connections + 20),
                                         "smtpd_timeout": "300s"})
        postfix.start()
        pid = mw.proc.pid
        start_peak = peak_mb(pid)
        socket_path = address[len("unix:"):]
        for _ in range(args.connections):
            client = socket.create_connection(("127.0.0.1", postfix.smtp_port), timeout=30)
            clients.append(client)
            replies.append(client.makefile("rb"))
            read_smtp_reply(replies[-1])                          # the greeting
            client.sendall(f"EHLO {HELO}\r\n".encode())
        for client, rfile in zip(clients, replies):
            read_smtp_reply(rfile)
            # Postfix connects the milters of an XCLIENT-authorized client
            # (all of loopback here) only once a transaction starts
            client.sendall(f"MAIL FROM:<{SENDER}>\r\n".encode())
        refused = [reply for reply in map(read_smtp_reply, replies) if reply[0] != 250]
        if refused:
            raise SystemExit(f"{len(refused)} of {args.connections} clients could not start "
                             f"a transaction, the first: {refused[0]}")
        try:
            wait_until(lambda: milter_connections(socket_path) >= args.connections, 60,
                       f"{args.connections} milter connections")
        except HarnessError as exc:
            raise SystemExit(f"{exc}: {milter_connections(socket_path)} open") from None
        open_peak = peak_mb(pid)
        started = time.monotonic()
        result = smtp_send(postfix.smtp_port, helo=HELO, mail_from=SENDER, rcpts=[RCPT],
                           data=big, timeout=300)
        took = time.monotonic() - started
        if not result.accepted:
            raise SystemExit(f"the large message was refused: {result}")
        got = sink.wait_for(1, timeout=120)[0]
        results = " ".join(got.header_values("Authentication-Results"))
        big_peak = peak_mb(pid)
    finally:
        for stream in replies + clients:
            stream.close()
        if postfix is not None:
            postfix.stop()
        if mw is not None:
            mw.stop()
        if sink is not None:
            sink.stop()
        if dns_server is not None:
            dns_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"mailwarden peak RSS: {start_peak:.1f} MB at start, {open_peak:.1f} MB with "
          f"{args.connections} connections open, {big_peak:.1f} MB after a "
          f"{len(big) / 1e6:.1f} MB message ({took:.1f} s; dkim=pass: "
          f"{'dkim=pass' in results}); target: under 60 MB")
    print(f"the large message added {big_peak - open_peak:.1f} MB to the peak "
          f"({(big_peak - open_peak) * 1024 * 1024 / len(big):.2f} times its size)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
