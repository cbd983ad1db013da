"""A private Sendmail on loopback, built around ``contrib/sendmail/mailwarden.mc``.

Debian's ``sendmail-bin`` conflicts with ``postfix``, so it is never
installed: ``scripts/fetch-sendmail`` (run by ``make deps-test``) downloads
the packages and unpacks them under ``.deps/sendmail/root``.  :class:`Sendmail`
writes an ``.mc`` whose mail filter lines are those of the contrib file as
an admin pastes them (only the socket address is replaced), builds the
``.cf`` with the unpacked m4 and ``cf/m4/cf.m4``, and runs ``sendmail -bD``
in the foreground inside ``unshare -m -u``: a private host name (without a
fully qualified one Sendmail sleeps a minute at start) and private
``/etc/hosts``, ``resolv.conf``, ``nsswitch.conf`` and ``host.conf``
bind-mounted, so that no lookup of it leaves loopback.  Everything it takes
it relays to a sink, delivering before it answers DATA.

Sendmail has no XCLIENT: a test presents another client by binding its
socket to 127.0.0.x (``smtp_send(..., source="127.0.0.5")``) and naming the
address in ``hosts`` (the PTR Sendmail sees, so ``{client_name}`` and
``{client_resolve}``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Optional

from tests.harness import ROOT, HarnessError, _alive, free_port, make_certificate, wait_until

SENDMAIL_DEPS = ROOT / ".deps" / "sendmail"
SENDMAIL_ROOT = SENDMAIL_DEPS / "root"
SENDMAIL_BIN = SENDMAIL_ROOT / "usr" / "libexec" / "sendmail" / "sendmail"
SENDMAIL_CF_DIR = SENDMAIL_ROOT / "usr" / "share" / "sendmail" / "cf"
M4_BIN = SENDMAIL_ROOT / "usr" / "bin" / "m4"
CONTRIB_MC = ROOT / "contrib" / "sendmail" / "mailwarden.mc"

SENDMAIL_HOSTNAME = "mta.sendmail.test"

# the private instance: its files under workdir/run, no DNS (hosts from the
# private hosts file), delivery to the sink before the reply to DATA,
# STARTTLS with a self-signed certificate (so the milter sees {tls_version}).
# Every recipient domain is relayed (promiscuous_relay): refusing a relay is
# mailwarden's job under test, as with the private Postfix.
_MC_HEAD = """\
divert(0)dnl
OSTYPE(`linux')dnl
define(`MAIL_SETTINGS_DIR', `{run}/')dnl
define(`QUEUE_DIR', `{run}/mqueue')dnl
define(`confPID_FILE', `{run}/sendmail.pid')dnl
define(`confSERVICE_SWITCH_FILE', `{run}/service.switch')dnl
define(`confHELP_FILE', `{run}/helpfile')dnl
define(`ALIAS_FILE', `{run}/aliases')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
define(`confDEF_USER_ID', `mail:mail')dnl
define(`confDONT_BLAME_SENDMAIL', `TrustStickyBit')dnl
define(`confTO_IDENT', `0s')dnl
define(`confREFUSE_LA', `999')dnl
define(`confQUEUE_LA', `999')dnl
define(`confDELIVERY_MODE', `interactive')dnl
define(`confMAX_MESSAGE_SIZE', `67108864')dnl
define(`confCACERT_PATH', `{tls}')dnl
define(`confCACERT', `{tls}/cert.pem')dnl
define(`confSERVER_CERT', `{tls}/cert.pem')dnl
define(`confSERVER_KEY', `{tls}/key.pem')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`MAIL_HUB', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`nocanonify')dnl
FEATURE(`promiscuous_relay')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`accept_unqualified_senders')dnl
DAEMON_OPTIONS(`Port={smtp_port}, Addr=127.0.0.1, Family=inet, Name=MTA')dnl
"""

_MC_TAIL = """\
MAILER(`local')dnl
MAILER(`smtp')dnl
"""

# bind-mounted over /etc inside the namespace (only where /etc has the file)
_PRIVATE_ETC = {
    "resolv.conf": "nameserver 127.0.0.1\noptions attempts:1 timeout:1\n",
    "nsswitch.conf": "hosts: files\nnetworks: files\n",
    "host.conf": "multi on\n",
}


# SMTP AUTH: Cyrus SASL's PLAIN and LOGIN plugins (libsasl2-modules), asked
# to check passwords with saslauthd, which a thread here plays
_SASL_MECHANISMS = "PLAIN LOGIN"
_SASL_CONF = """\
pwcheck_method: saslauthd
saslauthd_path: {mux}
mech_list: {mechanisms}
"""


def _sasl_plugin_dir() -> Optional[Path]:
    found = sorted(Path("/usr/lib").glob("*/sasl2/libplain.so.2"))
    return found[0].parent if found else None


def sendmail_missing() -> Optional[str]:
    """Why the private Sendmail cannot run here, or None."""
    for path in (SENDMAIL_BIN, M4_BIN, SENDMAIL_CF_DIR / "m4" / "cf.m4"):
        if not path.exists():
            return (f"{path.relative_to(ROOT)} is missing: `make deps-test` "
                    f"(scripts/fetch-sendmail {SENDMAIL_DEPS.relative_to(ROOT)}) unpacks Sendmail")
    return None


def libmilter_address(address: str) -> str:
    """A Postfix milter address in libmilter notation (Sendmail's ``S=``):
    ``unix:/path`` -> ``local:/path``, ``inet:HOST:PORT`` -> ``inet:PORT@HOST``."""
    kind, _, rest = address.partition(":")
    if kind == "unix":
        return f"local:{rest}"
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        return f"inet:{port}@{host.strip('[]')}"
    raise HarnessError(f"not a milter address: {address!r}")


def contrib_filter_lines(milter_socket: Optional[str]) -> str:
    """The lines of ``contrib/sendmail/mailwarden.mc``, the ``S=`` of its
    ``INPUT_MAIL_FILTER`` replaced by ``milter_socket`` (Postfix notation).

    The private Sendmail is built with exactly these lines, so the snippet
    admins paste is the one the tests run.  None leaves the filter out.
    """
    text = CONTRIB_MC.read_text(encoding="utf-8")
    if milter_socket is None:
        return ""
    filters = re.findall(r"(?m)^INPUT_MAIL_FILTER\(.*$", text)
    if len(filters) != 1:
        raise HarnessError(f"{CONTRIB_MC}: expected one INPUT_MAIL_FILTER line, "
                           f"found {len(filters)}")
    line, count = re.subn(r"\bS=[^,']+", "S=" + libmilter_address(milter_socket), filters[0])
    if count != 1:
        raise HarnessError(f"{CONTRIB_MC}: no S= socket in {filters[0]!r}")
    return text.replace(filters[0], line)


class Sendmail:
    """A private Sendmail on 127.0.0.1:``smtp_port`` relaying all mail to a sink.

    ``milter_socket`` is the milter address in Postfix notation (as for
    :class:`~tests.harness.Postfix`), put into the contrib lines; None runs
    without a filter.  ``hosts`` maps client addresses (127.0.0.x) to the
    name their PTR gives.  ``logins`` (``{user: password}``) offers SMTP
    AUTH PLAIN and LOGIN, checked against them.  Its files live under ``workdir``; its
    lookups stay in its namespace.
    """

    def __init__(self, workdir, sink_port: int, milter_socket: Optional[str] = None,
                 hosts: Optional[dict] = None, smtp_port: Optional[int] = None,
                 logins: Optional[dict] = None):
        self.workdir = Path(workdir).resolve()
        self.sink_port = sink_port
        self.milter_socket = milter_socket
        self.hosts = dict(hosts or {})
        self.smtp_port = smtp_port or free_port()
        self.run_dir = self.workdir / "run"
        self.etc_dir = self.workdir / "etc"
        self.queue_dir = self.run_dir / "mqueue"
        self.cf_path = self.run_dir / "sendmail.cf"
        self.trace_path = self.workdir / "smtp-trace.log"
        self.stderr_path = self.workdir / "sendmail.stderr"
        self.logins = dict(logins or {})
        self.sasl_dir = self.workdir / "sasl2"
        self.tls_dir = self.workdir / "tls"
        self._saslauthd: Optional[_Saslauthd] = None
        self._proc: Optional[subprocess.Popen] = None

    # -- configuration ---------------------------------------------------------

    def mc_text(self) -> str:
        head = _MC_HEAD.format(run=self.run_dir, hostname=SENDMAIL_HOSTNAME, tls=self.tls_dir,
                               sink_port=self.sink_port, smtp_port=self.smtp_port)
        auth = ""
        if self.logins:
            auth = (f"define(`confAUTH_MECHANISMS', `{_SASL_MECHANISMS}')dnl\n"
                    f"TRUST_AUTH_MECH(`{_SASL_MECHANISMS}')dnl\n")
        return head + contrib_filter_lines(self.milter_socket) + auth + _MC_TAIL

    def _write_config(self) -> None:
        for path in (self.workdir, self.run_dir, self.etc_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o755)
        self.queue_dir.mkdir(exist_ok=True)
        os.chmod(self.queue_dir, 0o700)
        make_certificate(self.tls_dir, SENDMAIL_HOSTNAME)
        mc_path = self.workdir / "sendmail.mc"
        mc_path.write_text(self.mc_text(), encoding="utf-8")
        built = subprocess.run(
            [str(M4_BIN), f"-D_CF_DIR_={SENDMAIL_CF_DIR}/", str(SENDMAIL_CF_DIR / "m4" / "cf.m4"),
             str(mc_path)], capture_output=True, text=True, timeout=60)
        # m4 warns on stderr about promiscuous_relay; an error ends the .cf early
        if built.returncode != 0 or "\nMrelay," not in built.stdout:
            raise HarnessError(f"m4 could not build sendmail.cf from {mc_path}: {built.stderr}")
        self.cf_path.write_text(built.stdout, encoding="utf-8")
        (self.run_dir / "service.switch").write_text("hosts files\naliases files\n")
        (self.run_dir / "aliases").write_text("postmaster: root\nMAILER-DAEMON: postmaster\n")
        (self.run_dir / "helpfile").write_text("")
        hosts = [f"127.0.0.1 {SENDMAIL_HOSTNAME} localhost"]
        hosts += [f"{address} {name}" for address, name in self.hosts.items()]
        (self.etc_dir / "hosts").write_text("\n".join(hosts) + "\n")
        for name, text in _PRIVATE_ETC.items():
            (self.etc_dir / name).write_text(text)
        if self.logins:
            self._write_sasl()

    def _write_sasl(self) -> None:
        """The SASL directory mounted over the system's plugin directory (the
        one place of Cyrus SASL's configuration path that exists here):
        copies of the PLAIN and LOGIN plugins and ``Sendmail.conf``."""
        plugins = _sasl_plugin_dir()
        if plugins is None:
            raise HarnessError("SMTP AUTH needs Cyrus SASL's PLAIN plugin: "
                               "apt-get install libsasl2-modules (make deps-test)")
        self.sasl_dir.mkdir(exist_ok=True)
        os.chmod(self.sasl_dir, 0o755)
        for pattern in ("libplain.so*", "liblogin.so*"):
            for plugin in plugins.glob(pattern):
                target = self.sasl_dir / plugin.name
                if plugin.is_symlink():
                    if not target.is_symlink():
                        target.symlink_to(os.readlink(plugin))
                else:
                    shutil.copy2(plugin, target)
        (self.sasl_dir / "Sendmail.conf").write_text(_SASL_CONF.format(
            mux=self.workdir / "saslauthd.mux", mechanisms=_SASL_MECHANISMS))

    def _namespace_script(self) -> str:
        mounts = [f"mount --bind {self.etc_dir / 'hosts'} /etc/hosts"]
        mounts += [f"mount --bind {self.etc_dir / name} /etc/{name}"
                   for name in _PRIVATE_ETC if Path("/etc", name).exists()]
        if self.logins:
            mounts.append(f"mount --bind {self.sasl_dir} {_sasl_plugin_dir()}")
        return "\n".join([
            "set -e",
            *mounts,
            f"hostname {SENDMAIL_HOSTNAME}",
            # the aliases database, which it insists on (outside the
            # namespace it would wait a minute for a qualified host name)
            f"{SENDMAIL_BIN} -C {self.cf_path} -bi >/dev/null",
            f"exec {SENDMAIL_BIN} -C {self.cf_path} -bD -X {self.trace_path}",
        ])

    # -- running ---------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Sendmail":
        if os.geteuid() != 0:
            raise HarnessError("a private Sendmail needs root (a mount namespace, port binding)")
        missing = sendmail_missing()
        if missing:
            raise HarnessError(missing)
        self._write_config()
        if self.logins:
            self._saslauthd = _Saslauthd(self.workdir / "saslauthd.mux", self.logins).start()
        with open(self.stderr_path, "ab") as errors:
            # unshare execs sh, which execs sendmail: the pid is Sendmail's
            self._proc = subprocess.Popen(
                ["unshare", "-m", "-u", "sh", "-c", self._namespace_script()],
                stdin=subprocess.DEVNULL, stdout=errors, stderr=subprocess.STDOUT)
        try:
            wait_until(self._smtp_ready, timeout, f"Sendmail on {self.smtp_port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _smtp_ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"Sendmail exited with {self._proc.returncode}: "
                               f"{self.errors()[-2000:]}")
        # any reply will do: the filter sees this connection too, and may refuse it
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2) as s:
                s.settimeout(5)
                greeting = s.recv(512)
                s.sendall(b"QUIT\r\n")
                return re.match(rb"[245]\d\d[ -]", greeting) is not None
        except OSError:
            return False

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if self._saslauthd is not None:
            self._saslauthd.stop()
            self._saslauthd = None
        if proc is None:
            return
        if proc.poll() is None:
            pids = [proc.pid] + _children_of(proc.pid)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                try:
                    proc.wait(timeout if sig == signal.SIGTERM else 5)
                    wait_until(lambda: not any(_alive(p) for p in pids[1:]), timeout,
                               "Sendmail's children to exit", interval=0.05)
                    break
                except (subprocess.TimeoutExpired, HarnessError):
                    continue
        else:
            proc.wait()

    # -- what it did -----------------------------------------------------------

    def queue_files(self) -> list:
        """Files in its queue (mail it took and has not delivered)."""
        return [p for p in self.queue_dir.rglob("*") if p.is_file()] \
            if self.queue_dir.exists() else []

    def trace(self) -> str:
        """Every SMTP exchange of the daemon and its children (``-X``)."""
        try:
            return self.trace_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def errors(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _children_of(parent: int) -> list:
    """PIDs of the processes ``parent`` forked (Sendmail's per-connection children)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append(int(entry.name))
    return out


class _Saslauthd:
    """saslauthd's side of its UNIX socket: Cyrus SASL sends the login, the
    password, the service and the realm, each a 16-bit length and the
    bytes; the answer is one such string, "OK" or "NO ..."."""

    def __init__(self, path: Path, logins: dict):
        self.path = Path(path)
        self.logins = dict(logins)
        self._server: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._running = False

    def start(self) -> "_Saslauthd":
        if self.path.exists():
            self.path.unlink()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(16)
        self._server.settimeout(0.2)         # a blocked accept() would not see close()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="saslauthd", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while self._running:
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    login, password, _service, _realm = (self._string(conn) for _ in range(4))
                except (OSError, ValueError):
                    continue
                ok = self.logins.get(login) == password
                answer = b"OK" if ok else b"NO authentication failed"
                conn.sendall(struct.pack("!H", len(answer)) + answer)

    @staticmethod
    def _string(conn) -> str:
        head = _read_exactly(conn, 2)
        return _read_exactly(conn, struct.unpack("!H", head)[0]).decode("utf-8", "replace")

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(5)
        if self._server is not None:
            self._server.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _read_exactly(conn, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("saslauthd client went away")
        data += chunk
    return data
