"""``mailwarden audit-host``: what listens on this machine that is not mail's.

"Have a dedicated mail server and move other services like FTP to other
servers; remove unneeded functionality."  ``probe HOST`` sees what answers
from where it runs; this command reads the machine's own socket tables, so
it also sees what a firewall hides and what listens on loopback only.

* The listening sockets: TCP in state LISTEN from ``/proc/net/tcp`` and
  ``tcp6``; UDP sockets bound and not connected from ``/proc/net/udp`` and
  ``udp6``, listed only on the UDP ports of the catalogue (:mod:`.ports`):
  a UDP socket on another port is as often a client's as a server's.
  These are the tables of this process's network namespace: a container's
  own sockets are in its own.
* Their processes: the ``socket:[INODE]`` links in ``/proc/PID/fd``, the
  name from ``/proc/PID/comm``.  Only root sees every process's.
* A socket is mail's when its port is a mail port (25, 465, 587, 110, 995,
  143, 993, 4190, 24), ``--mail-port``, or mailwarden's own ``[milter]
  socket`` (of ``-c FILE``, else ``/etc/mailwarden/mailwarden.ini`` when it
  exists), or when a process holding it is a mail program
  (:data:`MAIL_PROCESSES`).  The mail sockets make one finding; every
  other socket one of its own: on loopback only ok (not reachable from the
  network), else the level of its kind in the catalogue, and a warning for
  a TCP port the catalogue does not know.

:func:`audit` is pure (sockets and owners in, findings out), so the rules
are tested on samples of ``/proc``; ``--proc DIR`` reads another tree.
Exit 0 when nothing fails, 1 when a finding fails, 2 when the socket tables
cannot be read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Iterable, Optional

from . import ports
from .findings import OK, WARN, AuditError, Finding, printable, render

MAIL, HOST = "mail", "host"

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"

# the programs of a mail system, as /proc/PID/comm names them (15 characters
# at most): Postfix's master and the daemons that inherit its sockets,
# Dovecot, Sendmail, Exim, and the milters and filters beside them
MAIL_PROCESSES = frozenset({
    "master", "smtpd", "postscreen", "qmgr", "sendmail", "exim4", "exim",
    "dovecot", "imap-login", "pop3-login", "submission-logi", "managesieve-log", "lmtp",
    "mailwarden", "opendkim", "opendmarc", "rspamd", "spamd", "clamd", "amavisd",
    "postgrey", "postsrsd", "policyd-spf",
})

MAX_PIDS_SHOWN = 4


@dataclass(frozen=True)
class Listener:
    proto: str                  # tcp | udp
    address: ipaddress._BaseAddress
    port: int
    inode: int

    @property
    def loopback(self) -> bool:
        mapped = getattr(self.address, "ipv4_mapped", None)
        return self.address.is_loopback or bool(mapped and mapped.is_loopback)


def shown(address) -> str:
    """An address as people write it (``::ffff:127.0.0.1``, not
    ``::ffff:7f00:1``)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped else str(address)


def _address(text: str, byteorder: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(text)
    if len(raw) not in (4, 16):
        raise ValueError(text)
    if byteorder == "little":
        # the kernel prints each 32-bit word of the address in host order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def parse_proc_net(text: str, proto: str, byteorder: str = sys.byteorder) -> list:
    """The listening sockets of one ``/proc/net/{tcp,tcp6,udp,udp6}`` table.

    A line that does not parse is left out: the tables are the kernel's, and
    a new column must not stop the audit."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        try:
            address_hex, port_hex = local.split(":")
            port = int(port_hex, 16)
            address = _address(address_hex, byteorder)
            remote_port = int(remote.split(":")[1], 16)
            inode_number = int(inode)
        except (ValueError, IndexError):
            continue
        if proto == "tcp" and state != TCP_LISTEN:
            continue
        if proto == "udp" and (state != UDP_UNCONNECTED or remote_port != 0 or port == 0):
            continue
        found.append(Listener(proto, address, port, inode_number))
    return found


def read_listeners(proc: str = "/proc", udp: bool = True) -> list:
    tables = [("tcp", "tcp"), ("tcp6", "tcp")] + ([("udp", "udp"), ("udp6", "udp")] if udp else [])
    found, read = [], 0
    for name, proto in tables:
        path = os.path.join(proc, "net", name)
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            continue              # no IPv6 in this kernel
        except OSError as exc:
            raise AuditError(f"{path}: {exc.strerror}") from None
        read += 1
        found.extend(parse_proc_net(text, proto))
    if not read:
        raise AuditError(f"{proc}/net/tcp: no socket table to read")
    return found


_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")


def socket_owners(proc: str = "/proc", inodes: Optional[Iterable[int]] = None) -> dict:
    """inode -> {(pid, comm)} of the processes holding it, as far as we may
    look (another user's ``/proc/PID/fd`` needs root)."""
    wanted = set(inodes) if inodes is not None else None
    owners: dict = {}
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError as exc:
        raise AuditError(f"{proc}: {exc.strerror}") from None
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:           # gone, or not ours to read
            continue
        held = set()
        for fd in fds:
            try:
                m = _SOCKET_LINK.match(os.readlink(os.path.join(fd_dir, fd)))
            except OSError:
                continue
            if m and (wanted is None or int(m.group(1)) in wanted):
                held.add(int(m.group(1)))
        if not held:
            continue
        try:
            with open(os.path.join(proc, pid, "comm"), encoding="utf-8",
                      errors="replace") as f:
                comm = f.read().rstrip("\n")
        except OSError:
            comm = "?"
        for inode in held:
            owners.setdefault(inode, set()).add((int(pid), comm))
    return owners


def milter_port(socket_spec: Optional[str]) -> Optional[int]:
    """The TCP port of a ``[milter] socket`` (libmilter ``inet:PORT@HOST``
    or Postfix ``inet:HOST:PORT``); None for a UNIX socket."""
    if not socket_spec:
        return None
    m = re.match(r"^inet6?:(\d{1,5})(?:@.*)?$", socket_spec) or \
        re.match(r"^inet6?:.*:(\d{1,5})$", socket_spec)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------
# judging


def _processes(owners: set, root: bool) -> str:
    if not owners:
        return "no process seen" + ("" if root else " (run as root to see every process)")
    by_name: dict = {}
    for pid, comm in sorted(owners):
        by_name.setdefault(comm, []).append(pid)
    parts = []
    for comm, pids in sorted(by_name.items()):
        shown = ", ".join(map(str, pids[:MAX_PIDS_SHOWN]))
        more = f" and {len(pids) - MAX_PIDS_SHOWN} more" if len(pids) > MAX_PIDS_SHOWN else ""
        parts.append(f"{comm} (pid{'s' if len(pids) > 1 else ''} {shown}{more})")
    return ", ".join(parts)


@dataclass
class _Group:
    proto: str
    port: int
    names: frozenset
    addresses: list
    owners: set

    @property
    def loopback_only(self) -> bool:
        return all(listener.loopback for listener in self.addresses)

    def where(self) -> str:
        seen = sorted({shown(listener.address) for listener in self.addresses},
                      key=lambda a: (":" in a, a))
        return ", ".join(seen)


def _groups(listeners: list, owners: dict) -> list:
    """One group per protocol, port and set of process names (the IPv4 and
    IPv6 sockets of one daemon are one finding)."""
    groups: dict = {}
    for listener in listeners:
        held = owners.get(listener.inode, set())
        key = (listener.proto, listener.port, frozenset(c for _, c in held))
        group = groups.setdefault(key, _Group(listener.proto, listener.port, key[2], [], set()))
        group.addresses.append(listener)
        group.owners |= held
    return sorted(groups.values(), key=lambda g: (g.proto, g.port, sorted(g.names)))


def audit(listeners: list, owners: dict, *, mail_ports: Iterable[int] = (),
          moved: Optional[dict] = None, root: bool = True) -> list:
    """The findings for ``listeners`` held by ``owners`` (inode -> {(pid, comm)}).

    ``mail_ports`` are mail's besides :data:`ports.MAIL_PORTS`; ``moved``
    (name -> port) names a catalogue service on another port; ``root``:
    whether every process could be seen."""
    mail_ports = set(mail_ports) | set(ports.MAIL_PORTS)
    tcp_names = dict(ports.TCP_BY_PORT)
    udp_names = dict(ports.UDP_BY_PORT)
    for name, port in (moved or {}).items():
        if port:
            known = ports.moved_to(ports.BY_NAME[name], port)
            if known.tcp:
                tcp_names[port] = known
            if known.udp:
                udp_names[port] = known
    findings, mail = [], []
    unseen = 0
    for group in _groups(listeners, owners):
        known = (tcp_names if group.proto == "tcp" else udp_names).get(group.port)
        if group.proto == "udp" and known is None and group.port not in mail_ports:
            continue
        label = f"{group.proto}/{group.port}"
        if group.port in mail_ports or group.names & MAIL_PROCESSES:
            mail.append(f"{label} {_processes(group.owners, root)}")
            continue
        if not group.owners:
            unseen += 1
        subject = f"{label} {known.name}" if known else label
        value = f"{group.where()}; {_processes(group.owners, root)}"
        what = known.what if known else "a service that is not mail's"
        if group.loopback_only:
            findings.append(Finding(ports.AREA, OK, subject,
                                    f"{what} on loopback only: not reachable from the network",
                                    value))
        elif known:
            findings.append(Finding(ports.AREA, known.level, subject,
                                    f"{known.what} listens on the network: {known.advice}",
                                    value))
        else:
            findings.append(Finding(ports.AREA, WARN, subject,
                                    "not a mail service, listening on the network: move it "
                                    "to another server, bind it to loopback, or stop it",
                                    value))
    if mail:
        head = [Finding(MAIL, OK, "mail sockets",
                        f"{len(mail)} socket{'s' if len(mail) > 1 else ''} of the mail "
                        "system", "; ".join(mail))]
    else:
        head = [Finding(MAIL, WARN, "mail sockets",
                        "nothing listens on a mail port: is this the mail host?")]
    if not root and unseen:
        head.append(Finding(HOST, WARN, "processes",
                            f"not root: {unseen} socket{'s' if unseen > 1 else ''} without "
                            "a process seen; a mail daemon on another port may be among "
                            "them (run as root)"))
    if not findings:
        findings.append(Finding(ports.AREA, OK, "other services",
                                "nothing but mail listens"))
    return head + findings


# --------------------------------------------------------------------------
# command


def _configured_milter_port(path: Optional[str]) -> Optional[int]:
    from ..config import ConfigError, load
    if path is None:
        from ..command import DEFAULT_CONFIG
        if not os.path.exists(DEFAULT_CONFIG):
            return None
        path = DEFAULT_CONFIG
    try:
        return milter_port(load(path).milter.socket)
    except ConfigError as exc:
        raise AuditError(str(exc)) from None


def cmd_audit_host(args) -> int:
    try:
        mail_ports = set(args.mail_port)
        configured = _configured_milter_port(args.config)
        if configured:
            mail_ports.add(configured)
        listeners = read_listeners(args.proc, udp=not args.no_udp)
        owners = socket_owners(args.proc, {listener.inode for listener in listeners})
    except AuditError as exc:
        print(f"mailwarden: audit-host: {printable(exc)}", file=sys.stderr)
        return 2
    findings = audit(listeners, owners, mail_ports=mail_ports, moved=dict(args.other_port),
                     root=os.geteuid() == 0)
    return render(f"listening sockets on {socket.gethostname()}", findings, args.json)


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(text)
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audit-host", help="list what listens on this machine that is not mail's "
                           "(FTP, databases, panels, ...)",
        description="The listening sockets of this machine (TCP, and UDP on well-known "
                    "ports) from /proc/net, with the processes holding them. Mail's "
                    "sockets are one finding; every other one is ok on loopback only, "
                    "else judged by its kind: " + ports.levels_help() + "; an unknown "
                    "TCP port warns. Exit 0: nothing fails; 1: a finding fails; 2: the "
                    "socket tables or -c FILE cannot be read.")
    p.add_argument("--mail-port", type=_port, action="append", default=[], metavar="PORT",
                   help="a port of the mail system besides 25, 465, 587, 110, 995, 143, 993, "
                        "4190, 24 and mailwarden's own (repeatable)")
    p.add_argument("-c", "--config", default=None,
                   help="mailwarden configuration whose [milter] socket is mail's "
                        "(default /etc/mailwarden/mailwarden.ini when it exists)")
    ports.add_other_port_argument(p, "name")
    p.add_argument("--no-udp", action="store_true", help="leave out the UDP sockets")
    p.add_argument("--proc", default="/proc", metavar="DIR",
                   help="the proc file system to read (default /proc)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_audit_host)
