"""The Debian package, from ``dpkg-buildpackage`` to ``apt-get purge``.

``scripts/build-deb`` builds ``mailwarden_VERSION_all.deb`` from a copy of
the checkout; lintian must report no error.  ``apt-get install ./...deb``
installs it with Debian's own libraries.  The installed ``mailwarden``
checks the installed configuration, and runs the unit suite on Debian's
libraries.  Then the unit's ``ExecStart`` runs as systemd would run it (no
systemd on test machines: its runtime directory and umask made here), as
root dropping to user mailwarden, on ``/run/mailwarden/milter.sock``, and
the session's private Postfix passes one message through it to the sink.
Last, remove and purge: nothing of the package is left but its system user
and group (Debian leaves those: files elsewhere may belong to them).

The machine's own mailwarden package, if there is one, is never touched:
the tests skip, saying so.
"""

from __future__ import annotations

import os
import pwd
import grp
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mailwarden
from tests.harness import AUTHSERV_ID, ROOT, make_message, smtp_send, wait_until

VERSION = mailwarden.__version__
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"PATH": SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8",
       "HOME": "/root"}
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]

CONFIG = Path("/etc/mailwarden/mailwarden.ini")
UNIT = Path("/lib/systemd/system/mailwarden.service")
STATE = Path("/var/lib/mailwarden")
RUNTIME = Path("/run/mailwarden")
SOCKET = RUNTIME / "milter.sock"
DEBIAN_VENV_PYTHON = ROOT / ".venv-debian" / "bin" / "python"
ENABLED_LINK = Path("/etc/systemd/system/multi-user.target.wants/mailwarden.service")

# the libraries the package runs on, each imported from Debian's packages
DEBIAN_MODULES = ("milter", "Milter", "dkim", "spf", "dns", "idna", "tldextract", "nacl",
                  "cryptography", "prometheus_client", "redis")
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"

RELAY = {"ADDR": "198.51.100.141", "NAME": "relay.mw-auth.example",
         "HELO": "relay.mw-auth.example"}


def run(args, timeout=600, check=True, **kw):
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, **kw)
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout[-4000:]}\n" \
                                     f"{done.stderr[-4000:]}"
    return done


def dpkg_status() -> str:
    """'' when dpkg does not know the package, else its status (``install ok
    installed``, ``deinstall ok config-files``, ...)."""
    done = run(["dpkg-query", "-W", "-f=${Status}", "mailwarden"], check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


@dataclass
class Built:
    dir: Path
    deb: Path
    changes: Path
    seconds: float


@dataclass
class Installed:
    built: Built
    files: list = field(default_factory=list)        # dpkg -L
    seconds: float = 0.0


@pytest.fixture(scope="module")
def built(e2e_dir):
    missing = [p for p in ("dpkg-buildpackage", "dh", "lintian", "apt-get", "adduser")
               if shutil.which(p, path=SYSTEM_PATH) is None]
    if missing:
        pytest.skip(f"the package tests need {', '.join(missing)} (make deps-test)")
    if dpkg_status() or any(p.exists() for p in (CONFIG.parent, STATE, RUNTIME)):
        pytest.skip("a mailwarden package (or what one leaves) is on this machine: "
                    "these tests install and purge it, and leave that one alone")
    out = e2e_dir / "deb"
    out.mkdir()
    os.chmod(out, 0o755)                      # apt's _apt user reads the .deb
    before = sorted(os.listdir(ROOT))
    started = time.monotonic()
    run([ROOT / "scripts" / "build-deb", out])
    seconds = time.monotonic() - started
    assert sorted(os.listdir(ROOT)) == before, "the build left files in the checkout"
    deb = out / f"mailwarden_{VERSION}_all.deb"
    assert deb.is_file(), sorted(os.listdir(out))
    (changes,) = out.glob(f"mailwarden_{VERSION}_*.changes")
    return Built(out, deb, changes, seconds)


@pytest.fixture(scope="module")
def installed(built):
    started = time.monotonic()
    try:
        run([*APT, "install", f"./{built.deb.name}"], cwd=built.dir)
        if Path("/run/systemd/system").is_dir():
            # a machine with systemd started the service: the tests run the unit by hand
            run(["systemctl", "stop", "mailwarden.service"])
        package = Installed(built, seconds=time.monotonic() - started)
        package.files = run(["dpkg", "-L", "mailwarden"]).stdout.split("\n")
        package.files = [f for f in package.files if f and f != "/."]
        yield package
    finally:
        if dpkg_status():
            run([*APT, "purge", "mailwarden"], check=False)


# -- building ---------------------------------------------------------------

def test_lintian_reports_no_error(built):
    done = run(["lintian", "--display-info", "--no-tag-display-limit", built.changes],
               check=False)
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if re.match(r"[EWIXPON]: ", line)]
    (built.dir / "lintian.txt").write_text("\n".join(lines) + "\n")
    errors = [line for line in lines if line.startswith("E: ")]
    assert errors == [], "\n".join(lines)
    # warnings are allowed (listed in deb/lintian.txt of the e2e directory)
    print("\n".join(lines))


def test_the_package_declares_debian_s_libraries(built):
    fields = run(["dpkg-deb", "-f", built.deb, "Package", "Version", "Architecture",
                  "Depends", "Recommends"]).stdout
    assert f"Version: {VERSION}\n" in fields and "Architecture: all\n" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.M).group(1)
    for name in ("python3-milter", "python3-dkim", "python3-spf", "python3-dnspython",
                 "python3-tldextract", "python3-cryptography", "python3-nacl",
                 "python3-prometheus-client", "python3-idna", "adduser"):
        assert re.search(rf"(^|, ){re.escape(name)}( \(|,|$)", depends), (name, depends)
    assert "Recommends: python3-redis" in fields


# -- installed --------------------------------------------------------------

def test_installed_files_user_and_configuration(installed):
    assert dpkg_status() == "install ok installed"
    user = pwd.getpwnam("mailwarden")
    assert user.pw_uid < 1000 and user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert grp.getgrgid(user.pw_gid).gr_name == "mailwarden"
    info = STATE.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == \
        (user.pw_uid, user.pw_gid, 0o750)
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "mailwarden"]).stdout
    assert str(CONFIG) in conffiles
    for path in (str(CONFIG), str(UNIT), "/usr/bin/mailwarden", str(STATE),
                 "/usr/share/doc/mailwarden/README.Debian", "/usr/share/doc/mailwarden/copyright",
                 "/usr/share/man/man8/mailwarden.8.gz",
                 f"{DIST_PACKAGES}mailwarden/cli.py"):
        assert path in installed.files, path
    # the unit is enabled, for the next boot of a machine with systemd
    assert ENABLED_LINK.is_symlink() and os.readlink(ENABLED_LINK) == str(UNIT)
    assert shutil.which("mailwarden", path=SYSTEM_PATH) == "/usr/bin/mailwarden"
    assert run(["mailwarden", "--version"]).stdout.strip() == f"mailwarden {VERSION}"
    # the configuration as installed is good
    run(["mailwarden", "check-config", "-c", CONFIG])
    text = CONFIG.read_text()
    for line in ("socket = unix:/run/mailwarden/milter.sock", "user = mailwarden",
                 "group = postfix", "history = /var/lib/mailwarden/dmarc.sqlite"):
        assert f"\n{line}\n" in text, line


def test_the_installed_command_runs_on_debian_s_libraries(installed):
    script = ("import importlib\n"
              f"for name in ('mailwarden',) + {DEBIAN_MODULES!r}:\n"
              "    print(name, importlib.import_module(name).__file__)\n")
    done = run(["/usr/bin/python3", "-c", script], cwd="/")
    where = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert where["mailwarden"] == f"{DIST_PACKAGES}mailwarden/__init__.py"
    for name in DEBIAN_MODULES:
        assert where[name].startswith(DIST_PACKAGES), (name, where[name])
        owner = run(["dpkg", "-S", where[name]], check=False).stdout
        assert owner.startswith("python3-"), (name, owner)
    first = Path("/usr/bin/mailwarden").read_text().splitlines()[0]
    assert first == "#!/usr/bin/python3"


def test_the_unit_suite_passes_on_the_installed_package(installed):
    """The unit and adapter tests of this checkout, importing the installed
    mailwarden and Debian 12's libraries (only test tools that Debian has too
    old come from PyPI: scripts/install-debian-venv)."""
    assert DEBIAN_VENV_PYTHON.exists(), "make deps-test makes .venv-debian"
    # -P and --import-mode=append: the checkout comes after dist-packages on
    # sys.path, so `import mailwarden` is the installed package
    script = ("import sys, pytest, mailwarden\n"
              "print('mailwarden from', mailwarden.__file__, flush=True)\n"
              "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-m', 'not e2e',\n"
              "                      '--import-mode=append', 'tests/unit', 'tests/milter']))\n")
    started = time.monotonic()
    done = subprocess.run([str(DEBIAN_VENV_PYTHON), "-P", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800,
                          env={**ENV, "PATH": f"{DEBIAN_VENV_PYTHON.parent}:{SYSTEM_PATH}"})
    took = time.monotonic() - started
    tail = done.stdout[-6000:] + done.stderr[-3000:]
    assert f"mailwarden from {DIST_PACKAGES}mailwarden/__init__.py" in done.stdout, tail
    assert done.returncode == 0, tail
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    print(f"unit suite on the installed package: {summary} ({took:.0f} s)")


def _set(text: str, settings: dict) -> str:
    """``text`` with ``{(section, key): value}`` set where each key stands."""
    section, done, out = None, set(), []
    for line in text.splitlines(keepends=True):
        header = re.match(r"\[([^\]]+)\]\s*$", line)
        key = re.match(r"([A-Za-z_]\w*)\s*=", line)
        if header:
            section = header.group(1)
        elif key and (section, key.group(1)) in settings:
            line = f"{key.group(1)} = {settings[(section, key.group(1))]}\n"
            done.add((section, key.group(1)))
        out.append(line)
    assert done == set(settings), set(settings) - done
    return "".join(out)


def _unit_service() -> dict:
    found = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def _accepts(proc, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"mailwarden exited with {proc.returncode}:\n{log.read_text()}")
    if not SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(SOCKET))
            return True
        except OSError:
            return False


def test_the_unit_s_command_filters_a_message_through_postfix(installed, postfix, sink,
                                                              dns_server):
    # the admin's edits: this host's authserv-id, and (tests only) the test DNS
    CONFIG.write_text(_set(CONFIG.read_text(), {
        ("authserv", "id"): AUTHSERV_ID,
        ("dns", "nameservers"): "127.0.0.1",
        ("dns", "port"): str(dns_server.port),
        ("dns", "timeout"): "1s",
    }))
    unit = _unit_service()
    assert unit["RuntimeDirectory"] == "mailwarden" and "User" not in unit
    # what systemd does before ExecStart: the runtime directory, the umask
    RUNTIME.mkdir(mode=int(unit["RuntimeDirectoryMode"], 8))
    os.chmod(RUNTIME, int(unit["RuntimeDirectoryMode"], 8))
    umask = int(unit["UMask"], 8)
    log = installed.built.dir / "mailwarden.log"
    proc = None
    old = {k: postfix.settings.get(k) for k in ("smtpd_milters", "non_smtpd_milters")}
    try:
        run(shlex.split(unit["ExecStartPre"]), preexec_fn=lambda: os.umask(umask))
        with open(log, "wb") as out:
            proc = subprocess.Popen(shlex.split(unit["ExecStart"]), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd="/",
                                    preexec_fn=lambda: os.umask(umask))
        wait_until(lambda: _accepts(proc, log), 30, "mailwarden on /run/mailwarden/milter.sock")

        # root opened the socket for group postfix, then the process became mailwarden
        user = pwd.getpwnam("mailwarden")
        info = SOCKET.stat()
        assert (grp.getgrgid(info.st_gid).gr_name, stat.S_IMODE(info.st_mode)) == \
            ("postfix", 0o660)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        assert set(uids) == {str(user.pw_uid)}, status

        address = f"unix:{SOCKET}"
        postfix.postconf(smtpd_milters=address, non_smtpd_milters=address)
        postfix.restart()
        data, msgid = make_message("through the Debian package", sender="alice@mw-none.example")
        result = smtp_send(postfix.smtp_port, xclient=RELAY, helo=RELAY["HELO"],
                           mail_from="alice@mw-none.example", rcpts=["bob@rcpt.example"],
                           data=data)
        assert result.accepted, f"{result}\n{log.read_text()[-3000:]}"
        got = sink.wait_for_match(msgid.encode(), timeout=30)
        ours = [v for v in got.header_values("Authentication-Results")
                if v.lower().startswith(AUTHSERV_ID + ";")]
        assert len(ours) == 1, got.header_values("Authentication-Results")
        for result_text in ("iprev=pass", "spf=pass", "dmarc=pass"):
            assert result_text in ours[0], ours[0]

        # the DMARC record, written as mailwarden under /var/lib/mailwarden
        records = STATE / "dmarc.sqlite"
        assert records.stat().st_uid == user.pw_uid
        with sqlite3.connect(f"file:{records}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT header_from, result, queue_id FROM dmarc_message").fetchall()
        assert [(r[0], r[1]) for r in rows] == [("mw-none.example", "pass")], rows
        assert rows[0][2], "no queue id recorded"
    finally:
        if any(old.values()):
            postfix.postconf(**{k: v for k, v in old.items() if v is not None})
            postfix.restart()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # what systemd does when the service stops
        shutil.rmtree(RUNTIME, ignore_errors=True)
    assert proc.returncode == 0, log.read_text()[-3000:]


# -- removed, purged --------------------------------------------------------

def _owners(path: str) -> set:
    """The packages dpkg says ``path`` belongs to."""
    done = run(["dpkg-query", "-S", path], check=False)
    owners = set()
    for line in done.stdout.splitlines():
        names, _, listed = line.partition(": ")
        if listed == path:
            owners.update(n.strip().split(":")[0] for n in names.split(","))
    return owners


def _left_over(paths) -> list:
    """Those of the package's ``paths`` that still exist, directories other
    packages share left out."""
    left = []
    for path in paths:
        p = Path(path)
        if not p.exists() and not p.is_symlink():
            continue
        if p.is_dir() and _owners(path) - {"mailwarden"}:
            continue                    # /usr/bin, /etc, ...: someone else's too
        left.append(path)
    return left


def test_remove_then_purge_leaves_only_the_system_user(installed):
    files = installed.files
    edited = CONFIG.read_text()
    run([*APT, "remove", "mailwarden"])
    assert dpkg_status() == "deinstall ok config-files"
    # remove: the program goes, the configuration (edited or not) and the
    # DMARC records stay
    assert not Path("/usr/bin/mailwarden").exists()
    assert not Path(f"{DIST_PACKAGES}mailwarden").exists(), "py3clean left files"
    assert CONFIG.read_text() == edited
    assert sorted(_left_over(files)) == sorted([str(CONFIG.parent), str(CONFIG), str(STATE)])

    run([*APT, "purge", "mailwarden"])
    assert dpkg_status() == ""
    assert _left_over(files) == []
    for gone in (CONFIG.parent, STATE, RUNTIME, ENABLED_LINK,
                 Path("/var/lib/systemd/deb-systemd-helper-enabled/mailwarden.service.dsh-also")):
        assert not gone.exists() and not gone.is_symlink(), gone
    # nothing anywhere of the package's own belongs to its user any more
    user = pwd.getpwnam("mailwarden")          # Debian leaves system users
    owned = run(["find", "/etc", "/var", "/run", "-xdev", "-uid",
                 str(user.pw_uid)], check=False).stdout.split()
    assert owned == [], owned
