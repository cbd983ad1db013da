"""``audit-host`` without a real mail host: the socket tables parsed from
samples of ``/proc/net`` (as a little-endian kernel prints them), the rules
on those, a fake ``/proc`` tree for the processes and the command, and this
process's own sockets read from the real ``/proc``."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys

import pytest

from mailwarden.audit import host, ports
from mailwarden.audit.findings import FAIL, OK, WARN
from mailwarden.cli import main

TCP_HEAD = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   "
            "uid  timeout inode\n")
UDP_HEAD = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   "
            "uid  timeout inode ref pointer drops\n")
TAIL = (" 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000"
        " 100 0 0 10 0\n")


def line(n: int, local: str, remote: str, state: str, inode: int) -> str:
    return f"{n:4d}: {local} {remote} {state}" + TAIL.format(inode=inode)


ANY4, ANY6 = "00000000:0000", "00000000000000000000000000000000:0000"

TCP = TCP_HEAD + "".join([
    line(0, "00000000:0015", ANY4, "0A", 1001),      # 0.0.0.0:21    ftp
    line(1, "0100007F:18EB", ANY4, "0A", 1002),      # 127.0.0.1:6379 redis
    line(2, "00000000:0019", ANY4, "0A", 1003),      # 0.0.0.0:25    smtp
    line(3, "0100007F:2729", ANY4, "0A", 1004),      # 127.0.0.1:10025, Postfix's
    line(4, "0A00020F:0016", "C0A8010A:D431", "01", 1005),  # an established session
    line(5, "00000000:0CEA", ANY4, "0A", 1006),      # 0.0.0.0:3306  mysql
    line(6, "00000000:9C40", ANY4, "0A", 1008),      # 0.0.0.0:40000 unknown
    line(7, "00000000:0016", ANY4, "0A", 1009),      # 0.0.0.0:22    ssh
    line(8, "0100007F:22C6", ANY4, "0A", 1010),      # 127.0.0.1:8902 ours, see CONFIG
])
TCP6 = TCP_HEAD + "".join([
    line(0, "00000000000000000000000000000000:0015", ANY6, "0A", 2001),   # [::]:21
    line(1, "00000000000000000000000001000000:18EB", ANY6, "0A", 2002),   # [::1]:6379
    line(2, "0000000000000000FFFF00000100007F:0050", ANY6, "0A", 2003),   # [::ffff:127.0.0.1]:80
    line(3, "B80D0120000000000000000001000000:01BB", ANY6, "0A", 2004),   # [2001:db8::1]:443
])
UDP = UDP_HEAD + "".join([
    line(0, "00000000:00A1", ANY4, "07", 3001),      # 0.0.0.0:161   snmp
    line(1, "00000000:9C41", ANY4, "07", 3002),      # 0.0.0.0:40001 a client's, maybe
    line(2, "0100007F:0035", ANY4, "07", 3003),      # 127.0.0.1:53  a local resolver
    line(3, "0A000001:A000", "08080808:0035", "01", 3004),   # connected
])

OWNERS = {1001: {(10, "vsftpd")}, 2001: {(10, "vsftpd")}, 1002: {(20, "redis-server")},
          2002: {(20, "redis-server")}, 1003: {(30, "master"), (31, "smtpd")},
          1004: {(30, "master")}, 1006: {(40, "mariadbd")}, 1009: {(50, "sshd")},
          3001: {(60, "snmpd")}, 3003: {(70, "unbound")}, 2004: {(80, "nginx")}}


def listeners() -> list:
    return (host.parse_proc_net(TCP, "tcp", "little") + host.parse_proc_net(TCP6, "tcp", "little")
            + host.parse_proc_net(UDP, "udp", "little"))


def test_parse_tcp_keeps_the_listening_sockets():
    found = host.parse_proc_net(TCP, "tcp", "little")
    assert [(str(s.address), s.port, s.inode) for s in found] == [
        ("0.0.0.0", 21, 1001), ("127.0.0.1", 6379, 1002), ("0.0.0.0", 25, 1003),
        ("127.0.0.1", 10025, 1004), ("0.0.0.0", 3306, 1006), ("0.0.0.0", 40000, 1008),
        ("0.0.0.0", 22, 1009), ("127.0.0.1", 8902, 1010)]


def test_parse_tcp6_addresses_word_by_word():
    found = host.parse_proc_net(TCP6, "tcp", "little")
    assert [(s.address, s.port) for s in found] == [
        (ipaddress.ip_address(a), p) for a, p in
        (("::", 21), ("::1", 6379), ("::ffff:127.0.0.1", 80), ("2001:db8::1", 443))]
    assert host.shown(found[2].address) == "::ffff:127.0.0.1"
    assert [s.loopback for s in found] == [False, True, True, False]


def test_parse_udp_keeps_bound_unconnected_sockets():
    found = host.parse_proc_net(UDP, "udp", "little")
    assert [(str(s.address), s.port, s.proto) for s in found] == [
        ("0.0.0.0", 161, "udp"), ("0.0.0.0", 40001, "udp"), ("127.0.0.1", 53, "udp")]


def test_a_big_endian_kernel_prints_addresses_in_network_order():
    text = TCP_HEAD + line(0, "7F000001:0019", ANY4, "0A", 5)
    assert str(host.parse_proc_net(text, "tcp", "big")[0].address) == "127.0.0.1"


@pytest.mark.parametrize("bad", [
    "garbage\n", "   0: 0100007F 00000000:0000 0A x x x x x 7\n",
    "   0: ZZ00007F:0019 00000000:0000 0A 0:0 0:0 0 0 0 7\n",
    "   0: 0100:0019 00000000:0000 0A 0:0 0:0 0 0 0 7\n",
    "   0: 0100007F:0019 00000000:0000 0A 0:0 0:0 0 0 0 notanumber\n",
])
def test_a_line_that_does_not_parse_is_left_out(bad):
    text = TCP_HEAD + bad + line(1, "0100007F:0019", ANY4, "0A", 9)
    assert [s.inode for s in host.parse_proc_net(text, "tcp", "little")] == [9]


def judged(**kwargs) -> dict:
    return {f.subject: f for f in host.audit(listeners(), OWNERS, **kwargs)}


def test_the_rules():
    found = judged(mail_ports={8902})
    mail = found["mail sockets"]
    assert mail.level == OK
    # 25 by its port, 10025 by its process, 8902 named as ours
    assert "tcp/25 master (pid 30), smtpd (pid 31)" in mail.value
    assert "tcp/10025 master (pid 30)" in mail.value and "tcp/8902" in mail.value
    ftp = found["tcp/21 ftp"]
    assert ftp.level == FAIL and "FTP listens on the network" in ftp.message
    assert ftp.value == "0.0.0.0, ::; vsftpd (pid 10)"          # IPv4 and IPv6: one finding
    redis = found["tcp/6379 redis"]
    assert redis.level == OK and "loopback only" in redis.message
    assert redis.value == "127.0.0.1, ::1; redis-server (pid 20)"
    assert found["tcp/80 http"].level == OK                     # ::ffff:127.0.0.1 is loopback
    assert found["tcp/443 https"].level == WARN
    assert found["tcp/3306 mysql"].level == FAIL
    assert found["tcp/22 ssh"].level == OK
    unknown = found["tcp/40000"]
    assert unknown.level == WARN and unknown.value == "0.0.0.0; no process seen"
    assert found["udp/161 snmp"].level == FAIL
    assert found["udp/53 dns"].level == OK
    # a UDP port the catalogue does not know is not listed
    assert not any("40001" in s for s in found)
    assert "processes" not in found                              # root saw them all


def test_a_service_moved_to_another_port_is_named():
    found = judged(mail_ports={8902}, moved={"webmin": 40000})
    assert found["tcp/40000 webmin"].level == FAIL
    assert "Webmin listens on the network" in found["tcp/40000 webmin"].message


def test_not_root_says_what_it_could_not_see():
    found = judged(root=False)
    assert found["processes"].level == WARN
    assert "run as root" in found["tcp/40000"].value
    # without the milter's port and not knowing who holds it, 8902 is listed
    assert found["tcp/8902"].level == OK


def test_a_host_without_mail_and_without_others():
    findings = host.audit([], {})
    assert [(f.subject, f.level) for f in findings] == [
        ("mail sockets", WARN), ("other services", OK)]


def test_many_processes_are_shown_bounded():
    owners = {1001: {(pid, "vsftpd") for pid in range(100, 110)}}
    text = host._processes(owners[1001], True)
    assert text == "vsftpd (pids 100, 101, 102, 103 and 6 more)"


@pytest.mark.parametrize("spec,port", [
    ("inet:8894@127.0.0.1", 8894), ("inet6:8894@[::1]", 8894), ("inet:127.0.0.1:8899", 8899),
    ("unix:/run/mailwarden/milter.sock", None), ("", None), (None, None)])
def test_milter_port(spec, port):
    assert host.milter_port(spec) == port


# --------------------------------------------------------------------------
# a fake /proc


def fake_proc(root, owners=OWNERS, tables=None):
    tables = tables if tables is not None else {"tcp": TCP, "tcp6": TCP6, "udp": UDP}
    (root / "net").mkdir(parents=True)
    for name, text in tables.items():
        (root / "net" / name).write_text(text)
    by_pid: dict = {}
    for inode, held in owners.items():
        for pid, comm in held:
            by_pid.setdefault((pid, comm), []).append(inode)
    for (pid, comm), inodes in by_pid.items():
        fd = root / str(pid) / "fd"
        fd.mkdir(parents=True)
        (root / str(pid) / "comm").write_text(comm + "\n")
        os.symlink("/dev/null", fd / "0")
        os.symlink("pipe:[77]", fd / "1")
        for n, inode in enumerate(inodes, start=3):
            os.symlink(f"socket:[{inode}]", fd / str(n))
    (root / "self").mkdir()                 # not a pid
    return root


def test_socket_owners_from_fd_links(tmp_path):
    proc = fake_proc(tmp_path / "proc")
    assert host.socket_owners(str(proc)) == OWNERS
    assert host.socket_owners(str(proc), {1001}) == {1001: {(10, "vsftpd")}}


@pytest.mark.skipif(sys.byteorder != "little", reason="the samples are a little-endian kernel's")
def test_the_command_on_a_fake_proc(tmp_path, capsys):
    proc = fake_proc(tmp_path / "proc")
    config = tmp_path / "mw.ini"
    config.write_text("[milter]\nsocket = inet:127.0.0.1:8902\n"
                      "[authserv]\nid = mx.example.org\n")
    code = main(["audit-host", "--proc", str(proc), "-c", str(config), "--json"])
    data = json.loads(capsys.readouterr().out)
    subjects = {f["subject"]: f for f in data["findings"]}
    assert code == 1                                          # ftp, mysql, snmp fail
    assert "tcp/8902" in subjects["mail sockets"]["value"]    # the configured milter
    assert "tcp/8902" not in subjects
    assert data["summary"]["fail"] == 3

    code = main(["audit-host", "--proc", str(proc), "-c", str(config), "--no-udp",
                 "--mail-port", "40000", "--other-port", "ftp=2121", "--json"])
    data = json.loads(capsys.readouterr().out)
    subjects = {f["subject"]: f for f in data["findings"]}
    assert not any(s.startswith("udp/") for s in subjects)
    assert "tcp/40000" in subjects["mail sockets"]["value"] and "tcp/40000" not in subjects
    assert subjects["tcp/21 ftp"]["level"] == FAIL           # still FTP's own port
    assert code == 1


def test_unreadable_tables_are_exit_2(tmp_path, capsys):
    (tmp_path / "proc").mkdir()
    assert main(["audit-host", "--proc", str(tmp_path / "proc")]) == 2
    assert "no socket table" in capsys.readouterr().err


def test_a_bad_config_is_exit_2(tmp_path, capsys):
    proc = fake_proc(tmp_path / "proc")
    config = tmp_path / "mw.ini"
    config.write_text("[milter]\nsocket = nonsense\n[authserv]\nid = mx.example.org\n")
    assert main(["audit-host", "--proc", str(proc), "-c", str(config)]) == 2
    assert "socket" in capsys.readouterr().err


# --------------------------------------------------------------------------
# the real /proc: this process's own sockets


def test_this_process_listening_is_seen_with_its_inode_and_pid():
    listener = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        port, inode = listener.getsockname()[1], os.fstat(listener.fileno()).st_ino
        udp_port = udp.getsockname()[1]
        found = {(s.proto, s.port): s for s in host.read_listeners()}
        assert found[("tcp", port)].inode == inode
        assert found[("tcp", port)].address == ipaddress.ip_address("127.0.0.1")
        assert ("udp", udp_port) in found
        owners = host.socket_owners(inodes={inode})
        assert os.getpid() in {pid for pid, _ in owners[inode]}
        findings = host.audit(list(found.values()), owners, moved={"memcached": port})
        mine = next(f for f in findings if f.subject == f"tcp/{port} memcached")
        assert mine.level == OK and "loopback only" in mine.message
        assert mine.value.startswith("127.0.0.1; ") and str(os.getpid()) in mine.value
    finally:
        listener.close()
        udp.close()


def test_the_catalogue_knows_its_mail_ports_apart():
    assert not set(ports.MAIL_PORTS) & set(ports.TCP_BY_PORT)
