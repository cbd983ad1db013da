"""``probe`` and ``audit-host`` against services that do not belong on a
mail host, started on loopback for the test: a tiny FTP server (its own
process, saying ``220 ...`` and nothing else) and a real Redis without a
password, each on a free port that the commands are told with
``--other-port``; and the harness Postfix, whose sockets ``audit-host``
must count as mail's by their process.

``probe`` is given only these services (``--others ftp,redis``): what else
listens on this machine's well-known ports is not the test's to know.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mailwarden import cli

from tests.harness import free_port, wait_until
from tests.redisserver import RedisServer, redis_binary

FTP_BANNER = "220 (vsFTPd 3.0.3) \x1b[31mftp.test\x07 ready"

# a tiny FTP greeter: one line to each client, then it hangs up
FTP_SERVER = r"""
import socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    conn.sendall(sys.argv[2].encode("utf-8") + b"\r\n")
    conn.close()
"""


@pytest.fixture(scope="module")
def ftp_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", FTP_SERVER, str(port), FTP_BANNER],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    if redis_binary() is None:
        pytest.skip("redis-server is not installed (make test installs Debian's redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis-host")).start()
    yield server
    server.stop()


def probe_json(capsys, ftp_port: int, redis_port: int) -> tuple:
    code = cli.main(["probe", "127.0.0.1", "--smtp-port", "0", "--submission-port", "0",
                     "--imap-port", "0", "--pop3-port", "0", "--imaps-port", "0",
                     "--pop3s-port", "0", "--others", "ftp,redis",
                     "--other-port", f"ftp={ftp_port}", "--other-port", f"redis={redis_port}",
                     "--timeout", "5", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_probe_finds_ftp_and_redis_with_what_they_said(capsys, ftp_server, redis):
    _, ftp_port = ftp_server
    code, data = probe_json(capsys, ftp_port, redis.port)
    found = {f["subject"]: f for f in data["findings"]}
    assert code == 1 and data.get("errors") is None
    assert set(found) == {f"ftp:{ftp_port}", f"redis:{redis.port}"}
    ftp = found[f"ftp:{ftp_port}"]
    assert ftp["level"] == "fail" and ftp["area"] == "services"
    assert ftp["message"].startswith("FTP answers: logins cross the network in clear")
    assert ftp["value"] == FTP_BANNER                  # as it was said: JSON escapes it
    red = found[f"redis:{redis.port}"]
    assert red["level"] == "fail" and red["value"] == "+PONG"
    assert "without a password" in red["message"]


def test_probe_table_shows_the_banner_escaped(capsys, ftp_server, redis):
    _, ftp_port = ftp_server
    code = cli.main(["probe", "127.0.0.1", "--smtp-port", "0", "--submission-port", "0",
                     "--imap-port", "0", "--pop3-port", "0", "--imaps-port", "0",
                     "--pop3s-port", "0", "--others", "ftp",
                     "--other-port", f"ftp={ftp_port}", "--timeout", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out
    assert "[220 (vsFTPd 3.0.3) \\x1b[31mftp.test\\x07 ready]" in out
    assert out.rstrip().endswith("0 ok, 0 warn, 1 fail")


def test_probe_once_they_are_gone(capsys, tmp_path):
    # nothing on either port: the probe says so and ends with 2
    code = cli.main(["probe", "127.0.0.1", "--smtp-port", "0", "--submission-port", "0",
                     "--imap-port", "0", "--pop3-port", "0", "--imaps-port", "0",
                     "--pop3s-port", "0", "--others", "ftp,redis",
                     "--other-port", f"ftp={free_port()}", "--other-port",
                     f"redis={free_port()}", "--timeout", "5"])
    assert code == 2
    assert "nothing answers on ports 2 other well-known ports" in capsys.readouterr().err


def audit_host(capsys, *argv) -> tuple:
    code = cli.main(["audit-host", "--json", *argv])
    data = json.loads(capsys.readouterr().out)
    return code, data, {f["subject"]: f for f in data["findings"]}


def test_audit_host_sees_them_listen_with_their_processes(capsys, ftp_server, redis):
    proc, ftp_port = ftp_server
    code, data, found = audit_host(capsys, "--other-port", f"ftp={ftp_port}",
                                   "--other-port", f"redis={redis.port}")
    assert code in (0, 1)          # whatever else this machine runs
    ftp = found[f"tcp/{ftp_port} ftp"]
    assert ftp["level"] == "ok" and ftp["message"] == \
        "FTP on loopback only: not reachable from the network"
    assert ftp["value"].startswith("127.0.0.1; ") and f"pid {proc.pid})" in ftp["value"]
    red = found[f"tcp/{redis.port} redis"]
    assert red["level"] == "ok"
    assert red["value"] == f"127.0.0.1; redis-server (pid {redis.proc.pid})"
    # unnamed, they are still listed, as sockets that are not mail's
    _, _, found = audit_host(capsys)
    assert found[f"tcp/{ftp_port}"]["level"] == "ok"
    assert f"tcp/{redis.port}" in found


def test_audit_host_counts_postfix_as_mail(capsys, postfix, redis):
    # the harness Postfix listens on a high port: its master process makes it mail's
    code, data, found = audit_host(capsys)
    mail = found["mail sockets"]
    assert mail["level"] == "ok"
    assert f"tcp/{postfix.smtp_port} master (pid {postfix.master_pid()})" in mail["value"]
    assert f"tcp/{postfix.smtp_port}" not in found
    # and a port given as mail's is mail's, whoever holds it
    _, _, found = audit_host(capsys, "--mail-port", str(redis.port))
    assert f"tcp/{redis.port} redis-server" in found["mail sockets"]["value"]
    assert f"tcp/{redis.port}" not in found


def test_audit_host_after_redis_stops(capsys, tmp_path):
    if redis_binary() is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    port = server.port
    _, _, found = audit_host(capsys, "--other-port", f"redis={port}")
    assert f"tcp/{port} redis" in found
    server.stop()
    wait_until(lambda: f"tcp/{port} redis" not in audit_host(capsys, "--other-port",
                                                               f"redis={port}")[2],
               10, "the stopped Redis to leave the socket table")
