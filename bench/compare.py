#!/usr/bin/env python3
"""mailwarden against its peers on one Postfix, side by side, in one table.

One private Postfix on loopback relays to Postfix's ``smtp-sink``;
Postfix's ``smtp-source`` sends the same DKIM-signed message (``--length``
bytes, three URLs) in ``--sessions`` parallel sessions.  One round measures
each setup one after the other:

* ``postfix``: no milter;
* ``null``: a do-nothing pymilter milter (``bench/nullmilter.py``);
* ``peers``: Debian's OpenDKIM (verify) then OpenDMARC (with its own SPF);
* ``rspamd``: Debian's rspamd, two proxy workers scanning in milter
  self-scan mode (no normal worker, no controller), run as root with a
  private LOCAL_CONFDIR, DBDIR, RUNDIR and LOGDIR under the work directory
  (/etc/rspamd is only read; ``rspamd_files()`` writes the config): its DNS
  the bench's unbound, mail from 127.0.0.1 checked (``check_local``), its
  default modules less those that need the internet or Redis
  (``RSPAMD_OFF``: fuzzy_check, asn, multimap, whitelist, greylist,
  ratelimit, reputation, neural, ...; Bayes without its Redis, so skipped;
  phishtank off; the maps it would fetch over HTTPS read from the
  package's local copies), its rbl module asking the bench's lists in
  place of the real ones, and an Authentication-Results header from its
  milter_headers module.  Its Hyperscan database is compiled once a run
  (the cache is shared by its setups, and a start before the first round
  fills it) and a start waits until it is loaded;
* ``mailwarden``: every inbound check on: iprev, helo, iplist, dnsbl (two IP
  lists, one domain list), limits, spf, dkim, dmarc, uribl (two lists),
  size, relay, submission;

each of the milters on a UNIX socket and on TCP (``inet:``); and
``mailwarden-untuned-tcp``: mailwarden on TCP without its TCP tuning
(``bench/untuned.py``), the "before" of that tuning.  DNS is one
unbound on 127.0.0.153:53 serving ``bench/compare.zone`` and the DKIM key
made for the run (port 53, because OpenDMARC and libspf2 can only use
resolv.conf: OpenDMARC runs in its own mount namespace whose
/etc/resolv.conf names that server).  A figure is messages per second from
the first connection until the sink holds every message; a run where one is
missing is reported INCOMPLETE (and the exit status is 1), and a sample of
what reached the sink is checked for each milter's Authentication-Results
(``EXPECTED``: rspamd's must show spf, dkim and dmarc pass).  CPU is that of
the milter's processes and all their descendants; memory is the sum of
their peak RSS (shared pages counted once in each process) and of their PSS
at the end of the run (shared pages divided among them).

``--vary-senders`` sends each message from a sender domain of its own,
bench-sender-N.example, whose SPF, DKIM key (the run's key, published for
each domain) and DMARC records are added to the zone: what a milter caches
per domain cannot help, so this shows the uncached cost.  smtp-source
sends one file with one envelope sender, so that run starts one
smtp-source a message (``-s 1 -m 1``), ``--sessions`` at a time, for every
setup alike: each message still has an SMTP session of its own, as
smtp-source gives it in the default run.

The peers are installed with apt-get when missing.  Run as root from the
repository (``make bench-compare``):

    .venv/bin/python bench/compare.py [--messages 1000] [--rounds 3] [--vary-senders]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dkim as dkimpy                                    # noqa: E402
import dns.exception                                     # noqa: E402
import dns.message                                       # noqa: E402
import dns.query                                         # noqa: E402

from mailwarden.genkey import make_key, zone_line        # noqa: E402
from tests.harness import (                          # noqa: E402
    DnsServer, HarnessError, Mailwarden, Postfix, free_port, wait_until,
)
from throughput import SmtpSink, parse_set, process_usage, sbin     # noqa: E402

BENCH = Path(__file__).resolve().parent
DNS_ADDRESS = "127.0.0.153"
DOMAIN = "bench-sender.example"
SELECTOR = "bench"
HELO = f"mta.{DOMAIN}"
SENDER = f"news@{DOMAIN}"
RCPT = "someone@rcpt.bench.example"
AUTHSERV = "mx.test.example"
# --vary-senders: message i comes from news@bench-sender-<i>.example (an
# organizational domain of its own), whose records are those
# bench/compare.zone has for DOMAIN
SPF_RECORD = "v=spf1 ip4:127.0.0.1 -all"
DMARC_RECORD = "v=DMARC1; p=reject; adkim=r; aspf=r"
PEER_PACKAGES = ("opendkim", "opendkim-tools", "opendmarc", "dbconfig-no-thanks")
RSPAMD_PACKAGES = ("rspamd",)
SETUPS = ("postfix", "null-unix", "null-tcp", "peers-unix", "peers-tcp",
          "rspamd-unix", "rspamd-tcp",
          "mailwarden-unix", "mailwarden-tcp", "mailwarden-untuned-tcp")

# every inbound check on, the lists in bench/compare.zone; the client
# (127.0.0.1) is a stranger, so nothing is skipped for it
MAILWARDEN_SETTINGS = {
    "milter": {"log_level": "info"},
    "dns": {"nameservers": DNS_ADDRESS, "port": "53", "timeout": "2s"},
    "relay": {"trusted_networks": "", "local_domains": "rcpt.bench.example"},
    "check.dnsbl.bl1": {"zone": "bl1.bench.example", "kind": "ip",
                        "codes": "127.0.0.2:SBL"},
    "check.dnsbl.bl2": {"zone": "bl2.bench.example", "kind": "ip",
                        "codes": "127.0.0.2:SBL"},
    "check.dnsbl.dbl": {"enabled": "yes", "zone": "dbl.bench.example"},
    "check.limits": {"concurrent_per_ip": "1000", "connections_per_ip": "1000000/1m",
                     "messages_per_sender": "1000000/1m",
                     "recipients_per_sender": "1000000/1m",
                     "recipients_per_message": "100", "exempt": "allowlisted"},
    "check.uribl": {"enabled": "yes", "lists": "ul1, ul2"},
    "check.uribl.ul1": {"zone": "ul1.bench.example", "match": "codes",
                        "codes": "127.0.0.2:UL1_LISTED"},
    "check.uribl.ul2": {"zone": "ul2.bench.example", "match": "codes",
                        "codes": "127.0.0.2:UL2_LISTED"},
}


# --------------------------------------------------------------------------
# the message


def make_signed_message(length: int, private_pem: bytes, domain: str = DOMAIN) -> bytes:
    """A DKIM-signed message of about ``length`` bytes with three URLs, from
    news@``domain``, signed for ``domain``."""
    lines = [
        "Hello,", "",
        "our catalogue is at https://www.shop-one.example/catalogue?id=42 and",
        "the news at https://news.two-shop.example/today.html; write to us via",
        "http://three-links.example/contact .", "",
    ]
    filler = "The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = "\r\n".join(lines) + "\r\n"
    missing = max(0, length - 600 - len(body))
    body += filler * -(-missing // len(filler))        # whole lines, linear for 20 MB too
    head = (f"From: Bench News <news@{domain}>\r\nTo: <{RCPT}>\r\n"
            "Subject: the weekly bench letter\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
            f"Message-ID: <bench.1@{domain}>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n")
    message = (head + "\r\n" + body).encode("ascii")
    signature = dkimpy.sign(message, SELECTOR.encode(), domain.encode(), private_pem,
                            canonicalize=(b"relaxed", b"relaxed"),
                            include_headers=[b"from", b"to", b"subject", b"date",
                                             b"message-id", b"mime-version",
                                             b"content-type"])
    return signature + message


def vary_domains(count: int) -> list:
    """``count`` sender domains of their own, for ``--vary-senders``."""
    return [f"bench-sender-{i}.example" for i in range(1, count + 1)]


def sender_zone(domains, key_txt: str) -> str:
    """Zone lines that make each of ``domains`` a sender like DOMAIN: SPF
    for 127.0.0.1, a DMARC record (p=reject) and the DKIM key ``key_txt``
    under SELECTOR (one key for all: what differs is where it is found)."""
    lines = []
    for domain in domains:
        lines += [f'{domain}. TXT "{SPF_RECORD}"', f'_dmarc.{domain}. TXT "{DMARC_RECORD}"',
                  zone_line(domain, SELECTOR, key_txt)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# DNS on port 53 of a loopback address of its own


class BenchDns(DnsServer):
    """The harness's unbound, on ``DNS_ADDRESS``:53 (what resolv.conf can name)."""

    def __init__(self, workdir, zone_text: str):
        super().__init__(workdir, zone_text=zone_text, zone_files=[BENCH / "compare.zone"])
        self.port = 53

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text(encoding="utf-8")
        text = text.replace("interface: 127.0.0.1\n", f"interface: {DNS_ADDRESS}\n", 1)
        self.config_path.write_text(text, encoding="utf-8")

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"unbound exited with {self._proc.returncode}: "
                               f"{self.log_text()[-2000:]} (is port 53 of {DNS_ADDRESS} taken?)")
        try:
            dns.query.udp(dns.message.make_query("ready.invalid.", "A"), DNS_ADDRESS,
                          port=53, timeout=0.2)
            return True
        except (dns.exception.Timeout, OSError):
            return False


# --------------------------------------------------------------------------
# milters


def install_peers(packages=PEER_PACKAGES, programs=("opendkim", "opendmarc")) -> None:
    """apt-get install ``packages`` unless every one of ``programs`` is there."""
    if all(shutil.which(p) for p in programs):
        return
    print("installing the peers: " + " ".join(packages), flush=True)
    # where the package starts its own service (rspamd's on localhost:11332-4),
    # the bench's instances do not use it: they have sockets of their own
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL,
                       check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)


def _libmilter_address(postfix_address: str) -> str:
    """Postfix's inet:HOST:PORT is libmilter's inet:PORT@HOST."""
    if postfix_address.startswith("inet:"):
        host, _, port = postfix_address[len("inet:"):].rpartition(":")
        return f"inet:{port}@{host}"
    return postfix_address


def _reachable(address: str) -> bool:
    import socket
    if address.startswith("inet:"):
        host, _, port = address[len("inet:"):].rpartition(":")
        family, target = socket.AF_INET, (host, int(port))
    else:
        family, target = socket.AF_UNIX, address[len("unix:"):]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(target)
            return True
        except OSError:
            return False


def descendants(pid: int) -> list:
    """``pid`` and every process below it, parents first (the children of
    each of a process's threads, read from /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        out.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(p) for p in children.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return out


def process_pss(pid: int) -> float:
    """Proportional set size of a process now, in MB (shared pages divided
    among the processes that map them): what a group of forked processes
    costs, where the sum of their RSS counts shared pages once each."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Daemon:
    """One milter process in the foreground, stopped by its pid."""

    start_timeout = 20.0       # seconds until its socket answers

    def __init__(self, name: str, argv: list, address: str, log_path: Path):
        self.name, self.argv, self.address, self.log_path = name, argv, address, log_path
        self.proc = None

    def start(self) -> "Daemon":
        if self.address.startswith("unix:"):
            Path(self.address[5:]).unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-1500:]}")
            return _reachable(self.address)
        wait_until(ready, self.start_timeout, f"{self.name} on {self.address}")
        return self

    @property
    def pids(self) -> list:
        """The process and all its descendants (unshare runs OpenDMARC as a
        child; rspamd's main process forks its workers)."""
        if self.proc is None:
            return []
        return descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def opendkim(workdir: Path, address: str) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "internal").write_text("192.0.2.255\n")
    conf = workdir / "opendkim.conf"
    conf.write_text("\n".join([
        "Mode v",
        f"Socket {_libmilter_address(address).replace('unix:', 'local:')}",
        "Syslog no",
        "Background no",
        "UMask 000",
        f"PidFile {workdir / 'opendkim.pid'}",
        f"Nameservers {DNS_ADDRESS}",
        f"AuthservID {AUTHSERV}",
        # 127.0.0.1 is "internal" by default: its mail would not be verified
        f"InternalHosts {workdir / 'internal'}",
        "AlwaysAddARHeader yes",
    ]) + "\n")
    return Daemon("opendkim", [shutil.which("opendkim"), "-f", "-x", str(conf)], address,
                  workdir / "opendkim.log")


def opendmarc(workdir: Path, address: str) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ignore").write_text("192.0.2.255\n")
    (workdir / "resolv.conf").write_text(f"nameserver {DNS_ADDRESS}\n")
    conf = workdir / "opendmarc.conf"
    conf.write_text("\n".join([
        f"Socket {_libmilter_address(address).replace('unix:', 'local:')}",
        "Syslog false",
        "Background false",
        "UMask 000",
        f"PidFile {workdir / 'opendmarc.pid'}",
        f"AuthservID {AUTHSERV}",
        f"TrustedAuthservIDs {AUTHSERV}",
        # 127.0.0.1 is ignored by default: its mail would not be judged
        f"IgnoreHosts {workdir / 'ignore'}",
        "SPFSelfValidate true",
        "SPFIgnoreResults true",
        "RejectFailures false",
    ]) + "\n")
    # OpenDMARC and libspf2 resolve through /etc/resolv.conf alone: give them
    # one of their own in a private mount namespace
    script = (f"mount --bind {workdir / 'resolv.conf'} /etc/resolv.conf && "
              f"exec {shutil.which('opendmarc')} -f -c {conf}")
    return Daemon("opendmarc", ["unshare", "--mount", "--propagation", "private",
                                "sh", "-c", script], address, workdir / "opendmarc.log")


def null_milter(workdir: Path, address: str) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    return Daemon("nullmilter", [sys.executable, str(BENCH / "nullmilter.py"),
                                 _libmilter_address(address)],
                  address, workdir / "nullmilter.log")


# rspamd's default modules that need the internet (rspamd.com's fuzzy
# servers, ASN zone and freemail/whitelist maps) or Redis; with them off,
# nothing it does leaves loopback
RSPAMD_OFF = ("fuzzy_check", "asn", "multimap", "whitelist", "rspamd_update",
              "greylist", "ratelimit", "reputation", "neural", "history_redis",
              "replies", "url_redirector", "bimi", "clickhouse", "elastic",
              "metadata_exporter", "metric_exporter", "dynamic_conf")
RSPAMD_CONFIG = Path("/etc/rspamd/rspamd.conf")
# its rbl module's rules in place of its defaults (which query the real
# lists): the lists mailwarden checks, each for the same kind of data
RSPAMD_LISTS = (
    ("BENCH_BL1", "bl1.bench.example", "ipv4 = true; from = true; received = false;"),
    ("BENCH_BL2", "bl2.bench.example", "ipv4 = true; from = true; received = false;"),
    ("BENCH_DBL", "dbl.bench.example", "ipv4 = false; from = false; helo = true; dkim = true;"),
    ("BENCH_UL1", "ul1.bench.example", "ipv4 = false; from = false; urls = true;"),
    ("BENCH_UL2", "ul2.bench.example", "ipv4 = false; from = false; urls = true;"),
)
# what rspamd's main process logs once its Hyperscan database is ready
RSPAMD_LOADED = "hyperscan database of"


def _ucl(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"not a plain UCL string: {value!r}")
    return f'"{value}"'


def rspamd_files(address: str, dns: str = DNS_ADDRESS, workers: int = 2) -> dict:
    """The files of a private LOCAL_CONFDIR for Debian's rspamd: {path: text}.

    The proxy worker scans in milter mode itself (``self_scan``), in
    ``workers`` processes on ``address`` (Postfix notation); the normal and
    controller workers are off (the proxy does not use them in this mode).
    Its DNS is ``dns``:53; the DNS lists are the bench's own, as
    mailwarden's; the maps that would be fetched over HTTPS are read from
    the package's local copies; the modules of ``RSPAMD_OFF`` are off.  Its
    milter_headers module adds an Authentication-Results header (authserv-id:
    Postfix's ``j`` macro, which is myhostname, mx.test.example).
    """
    if address.startswith("unix:"):
        bind = f"{address[len('unix:'):]} mode=0666"
    elif address.startswith("inet:"):
        bind = address[len("inet:"):]
    else:
        raise ValueError(f"not a milter address: {address!r}")
    files = {
        "override.d/worker-proxy.inc": "\n".join([
            f"bind_socket = {_ucl(bind)};",
            "milter = yes;",
            # self-scan: the proxy scans itself, with no normal worker behind
            'upstream "local" { default = yes; self_scan = yes; }',
            f"count = {workers};",
            "timeout = 120s;",
        ]) + "\n",
        "override.d/worker-normal.inc": "enabled = false;\n",
        "override.d/worker-controller.inc": "enabled = false;\n",
        "override.d/worker-fuzzy.inc": "enabled = false;\ncount = -1;\n",
        "local.d/options.inc": "\n".join([
            # 127.0.0.1 is a local address: without these, spf, dmarc and
            # others skip its mail
            "check_local = true;",
            "check_authed = true;",
            f"dns {{ nameserver = [{_ucl(dns + ':53')}]; }}",
        ]) + "\n",
        "override.d/logging.inc": 'level = "info";\n',
        "local.d/milter_headers.conf": "\n".join([
            'use = ["authentication-results"];',
            "skip_local = false;",
            "skip_authenticated = false;",
        ]) + "\n",
        "local.d/dkim.conf": "check_local = true;\ncheck_authed = true;\n",
        "local.d/dmarc.conf": "reporting { enabled = false; }\n",
        # the bench's lists (bench/compare.zone), those mailwarden checks;
        # exclude_local off: the client, 127.0.0.1, is looked up as any other
        "override.d/rbl.conf": "\n".join(
            ['url_whitelist = ["file://${CONFDIR}/maps.d/surbl-whitelist.inc"];', "rbls {"]
            + [f"  {name} {{ rbl = {_ucl(zone)}; exclude_local = false; ipv6 = false; "
               f"{checks} }}" for name, zone, checks in RSPAMD_LISTS]
            + ["}"]) + "\n",
        "override.d/surbl.conf": "rules { }\n",
        "override.d/phishing.conf": "\n".join([
            "phishtank_enabled = false;",
            "openphish_enabled = false;",
            "exceptions {",
            '  REDIRECTOR_FALSE = ["file://${CONFDIR}/maps.d/redirectors.inc"];',
            "}",
        ]) + "\n",
        "override.d/mime_types.conf":
            'file = ["file://${CONFDIR}/maps.d/mime_types.inc"];\n',
        "override.d/mid.conf": 'source { url = ["file://${CONFDIR}/maps.d/mid.inc"]; }\n',
        # Bayes is left as it is: it keeps its statistics in Redis, and with
        # no Redis server given its backend fails to start and every message
        # skips it ("skip statistics as SPAM class is missing")
    }
    for module in RSPAMD_OFF:
        files[f"override.d/{module}.conf"] = "enabled = false;\n"
    return files


class RspamdDaemon(Daemon):
    """Debian's rspamd with a private LOCAL_CONFDIR, DBDIR, RUNDIR and LOGDIR.

    /etc/rspamd is only read.  It runs as root (``--insecure``), so its
    files under ``workdir`` need no owner of their own.  ``dbdir`` is shared
    by the bench's rspamd setups: Hyperscan's compiled regexps are cached
    there, and a start waits until the proxy workers have them loaded, so
    that compiling them is not counted as work on the mail.
    """

    start_timeout = 180.0      # it reads and compiles its rules before it listens

    def __init__(self, workdir: Path, address: str, dbdir: Path):
        confdir = workdir / "conf"
        for name, text in rspamd_files(address).items():
            (confdir / name).parent.mkdir(parents=True, exist_ok=True)
            (confdir / name).write_text(text, encoding="utf-8")
        for sub in ("run", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        dbdir.mkdir(parents=True, exist_ok=True)
        self.rspamd_log = workdir / "log" / "rspamd.log"
        super().__init__("rspamd", [
            shutil.which("rspamd") or "/usr/bin/rspamd", "-f", "-i", "-c", str(RSPAMD_CONFIG),
            f"--var=LOCAL_CONFDIR={confdir}", f"--var=DBDIR={dbdir}",
            f"--var=RUNDIR={workdir / 'run'}", f"--var=LOGDIR={workdir / 'log'}",
        ], address, workdir / "rspamd.out")

    def start(self) -> "RspamdDaemon":
        self.rspamd_log.unlink(missing_ok=True)
        super().start()

        def loaded():
            if self.proc.poll() is not None:
                raise HarnessError(f"rspamd exited with {self.proc.returncode}: "
                                   f"{self.rspamd_log.read_text(errors='replace')[-1500:]}")
            try:
                return RSPAMD_LOADED in self.rspamd_log.read_text(errors="replace")
            except FileNotFoundError:
                return False
        # the first start compiles for some seconds; later ones read the cache
        wait_until(loaded, 180, "rspamd's Hyperscan database", interval=0.2)
        time.sleep(1.0)        # the workers load it once told so by the main process
        return self


class MailwardenDaemon(Daemon):
    """The harness's ``mailwarden run``, with the bench's settings on top."""

    def __init__(self, workdir: Path, address: str, extra: dict, untuned: bool = False):
        settings = {k: dict(v) for k, v in MAILWARDEN_SETTINGS.items()}
        for section, values in extra.items():
            settings.setdefault(section, {}).update(values)
        settings["milter"]["socket"] = address
        self.mw = Mailwarden(workdir, 53, settings,
                             socket_path=address[5:] if address.startswith("unix:") else None,
                             program=[sys.executable, str(BENCH / "untuned.py")] if untuned
                             else None)
        super().__init__("mailwarden", [], address, self.mw.log_path)

    def start(self) -> "MailwardenDaemon":
        self.mw.start()
        self.proc = self.mw._proc
        return self

    def stop(self) -> None:
        self.mw.stop()
        self.proc = None


# --------------------------------------------------------------------------
# runs


def usage(daemons: list) -> dict:
    """CPU seconds, the sum of the peak RSS (MB), PSS now (MB) and the number
    of processes of the milters' processes and their descendants."""
    cpu = peak = pss = 0.0
    count = 0
    for daemon in daemons:
        for pid in daemon.pids:
            try:
                c, p = process_usage(pid)
                s = process_pss(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            cpu += c
            peak += p
            pss += s
            count += 1
    return {"cpu": cpu, "rss": peak, "pss": pss, "processes": count}


def _smtp_source(postfix: Postfix, message_file: Path, sender: str, sessions: int,
                 messages: int, timeout: float) -> None:
    source = subprocess.run(
        [sbin("smtp-source"), "-s", str(sessions), "-m", str(messages),
         "-F", str(message_file), "-f", sender, "-t", RCPT, "-M", HELO,
         f"127.0.0.1:{postfix.smtp_port}"],
        capture_output=True, text=True, timeout=timeout)
    if source.returncode != 0:
        raise HarnessError(f"smtp-source failed: {source.stderr.strip()[:500]}")


def smtp_source_run(postfix: Postfix, sink: SmtpSink, tag: str, messages: list,
                    args) -> dict:
    """Send ``args.messages`` messages; ``messages`` is [(file, sender)].

    One message: one smtp-source sends it ``args.messages`` times in
    ``args.sessions`` sessions.  One a message (``--vary-senders``): one
    smtp-source a message (``-s 1 -m 1``), ``args.sessions`` of them at a
    time.  Either way each message has an SMTP session of its own, as
    smtp-source opens one a message."""
    sink.start(tag)
    try:
        start = time.monotonic()
        if len(messages) == 1:
            _smtp_source(postfix, *messages[0], args.sessions, args.messages, args.time_limit)
        else:
            with ThreadPoolExecutor(args.sessions) as pool:
                for done in [pool.submit(_smtp_source, postfix, path, sender, 1, 1,
                                         args.time_limit) for path, sender in messages]:
                    done.result()
        deadline = start + args.time_limit
        while sink.count() < args.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        count = sink.count()
    finally:
        sink.stop()
    postfix.wait_queue_empty(timeout=max(5.0, deadline - time.monotonic()))
    return {"msg_per_s": count / elapsed, "count": count,
            "complete": count == args.messages, "dump": sink.dump}


# what each milter must have written into a message that reached the sink
EXPECTED = {
    "peers": [r"dkim=pass", r"dmarc=pass"],
    # rspamd's milter_headers (its authserv-id is Postfix's j macro, myhostname)
    "rspamd": [rf"Authentication-Results: {re.escape(AUTHSERV)};", r"dkim=pass",
               r"spf=pass", r"dmarc=pass"],
    "mailwarden": [r"iprev=pass", r"spf=pass", r"dkim=pass", r"dmarc=pass",
                   r"X-Mailwarden-Status: No"],
}
EXPECTED["mailwarden-untuned"] = EXPECTED["mailwarden"]


def check_sample(setup: str, dump: Path) -> str:
    """'' when the first message at the sink shows the milter did its work."""
    kind = setup.rsplit("-", 1)[0]
    if kind not in EXPECTED:
        return ""
    data = dump.read_bytes().decode("utf-8", "replace")
    first = data.split("X-Client-Addr: ")[1] if "X-Client-Addr: " in data else ""
    head = re.sub(r"\r?\n[ \t]+", " ", first.split("\n\n", 1)[0])
    missing = [p for p in EXPECTED[kind] if not re.search(p, head)]
    return f"missing {missing} in:\n{head[:3000]}" if missing else ""


def start_setup(setup: str, workdir: Path, addresses: dict, extra: dict) -> list:
    kind, _, transport = setup.rpartition("-")
    if setup == "postfix":
        return []
    if kind == "null":
        return [null_milter(workdir / setup, addresses["null", transport]).start()]
    if kind == "peers":
        return [opendkim(workdir / setup, addresses["opendkim", transport]).start(),
                opendmarc(workdir / setup, addresses["opendmarc", transport]).start()]
    if kind == "rspamd":
        return [RspamdDaemon(workdir / setup, addresses["rspamd", transport],
                             workdir / "rspamd-db").start()]
    return [MailwardenDaemon(workdir / setup, addresses[kind, transport], extra,
                             untuned=kind == "mailwarden-untuned").start()]


def warm_up_rspamd(workdir: Path, address: str) -> None:
    """Start and stop rspamd once, so that it compiles its Hyperscan database
    into the cache its setups share before any of them is measured: the
    first start's compiling (in its main process and Hyperscan helper) would
    count in that setup's peak RSS and PSS."""
    warm = RspamdDaemon(workdir / "rspamd-warm-up", address, workdir / "rspamd-db")
    try:
        warm.start()
    except (HarnessError, OSError) as exc:
        print(f"rspamd warm-up FAILED: {exc}", flush=True)
    finally:
        warm.stop()


def addresses_for(workdir: Path) -> dict:
    out = {}
    for name in ("null", "opendkim", "opendmarc", "rspamd", "mailwarden", "mailwarden-untuned"):
        out[name, "unix"] = f"unix:{workdir / 'run' / (name + '.sock')}"
        out[name, "tcp"] = f"inet:127.0.0.1:{free_port()}"
    return out


def per_round(figures: dict, setup: str, base: str) -> list:
    """msg/s of ``setup`` over that of ``base``, for each round that has both.

    A ratio is taken within a round (its setups run back to back), and the
    table shows the median of those: the machine's drift from one round to
    the next stays out of it."""
    bases = {r["round"]: r["msg_per_s"] for r in figures.get(base) or []}
    return [r["msg_per_s"] / bases[r["round"]] for r in figures.get(setup) or []
            if bases.get(r["round"])]


def report(figures: dict, args) -> bool:
    def median(setup, key="msg_per_s"):
        runs = figures.get(setup) or []
        return statistics.median(r[key] for r in runs) if runs else None

    print(f"\n{args.messages} messages of {args.length} bytes (DKIM-signed, 3 URLs), "
          f"{args.sessions} sessions, median of {args.rounds} round(s)"
          + (", each from a sender domain of its own (one smtp-source a message)"
             if args.vary_senders else "") + "\n")
    print(f"{'setup':22s} {'msg/s':>7s} {'/postfix':>8s} {'/null':>6s} {'/peers':>7s} "
          f"{'/rspamd':>7s} {'range':>11s} {'at sink':>12s} {'CPU ms/msg':>10s} "
          f"{'peak RSS':>9s} {'PSS':>8s} {'procs':>5s}")
    ok = True
    for setup in args.setups:
        runs = figures.get(setup) or []
        if not runs:
            print(f"{setup:22s} every run failed")
            ok = False
            continue
        rate = median(setup)
        transport = setup.rsplit("-", 1)[-1]
        ratios = []
        for other in ("postfix", f"null-{transport}", f"peers-{transport}",
                      f"rspamd-{transport}"):
            within = per_round(figures, setup, other) if setup != "postfix" else []
            ratios.append(f"{statistics.median(within):.2f}" if within else "-")
        at_sink = f"{sum(r['count'] for r in runs)}/{args.messages * len(runs)}"
        complete = all(r["complete"] for r in runs)
        ok &= complete
        cpu = f"{median(setup, 'cpu_ms'):.2f}" if setup != "postfix" else "-"
        rss = f"{max(r['rss_mb'] for r in runs):.1f} MB" if setup != "postfix" else "-"
        pss = f"{max(r['pss_mb'] for r in runs):.1f} MB" if setup != "postfix" else "-"
        procs = str(max(r["processes"] for r in runs)) if setup != "postfix" else "-"
        rates = [r["msg_per_s"] for r in runs]
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        print(f"{setup:22s} {rate:7.1f} {ratios[0]:>8s} {ratios[1]:>6s} {ratios[2]:>7s} "
              f"{ratios[3]:>7s} {spread:>11s} {at_sink:>12s} {cpu:>10s} {rss:>9s} "
              f"{pss:>8s} {procs:>5s}"
              + ("" if complete else "  INCOMPLETE"))
    # the targets, with every round's ratio shown
    print()
    for label, setup, base, want in (
            ("target 1: mailwarden / OpenDKIM+OpenDMARC (unix)", "mailwarden-unix",
             "peers-unix", 1.2),
            ("target 1: mailwarden / rspamd (unix)", "mailwarden-unix", "rspamd-unix", 1.5),
            ("target 1: mailwarden / do-nothing milter (unix)", "mailwarden-unix",
             "null-unix", 0.9),
            ("target 2: mailwarden tcp / unix", "mailwarden-tcp", "mailwarden-unix", 0.9),
            ("target 2, before (untuned): mailwarden tcp / unix", "mailwarden-untuned-tcp",
             "mailwarden-unix", 0.9)):
        ratios = per_round(figures, setup, base)
        if ratios:
            print(f"{label} = {statistics.median(ratios):.2f} (want >= {want}; rounds: "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run (1000)")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    parser.add_argument("--length", type=int, default=4096, help="message size, bytes (4096)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; median reported (3)")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds one run may take at most (120)")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="comma-separated subset of: " + ", ".join(SETUPS))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a mailwarden setting on top of the bench's (repeat)")
    parser.add_argument("--vary-senders", action="store_true",
                        help="each message from a sender domain of its own (SPF, DKIM "
                             "key and DMARC records made for the run): nothing a milter "
                             "caches per domain helps")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if os.geteuid() != 0:
        raise SystemExit("run as root: the private Postfix needs it")
    if unknown := set(args.setups) - set(SETUPS):
        raise SystemExit(f"unknown setups: {', '.join(sorted(unknown))}")
    if not 1 <= args.messages <= 100_000 or not 1 <= args.sessions <= 200 \
            or not 1 <= args.rounds <= 20 or not 1000 <= args.length <= 10_000_000:
        raise SystemExit("--messages 1..100000, --sessions 1..200, --rounds 1..20, "
                         "--length 1000..10000000")
    if any(s.startswith("peers") for s in args.setups):
        install_peers()
    if any(s.startswith("rspamd") for s in args.setups):
        install_peers(RSPAMD_PACKAGES, ("rspamd",))
    extra = parse_set(args.set)

    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-compare-"))
    os.chmod(workdir, 0o755)
    (workdir / "run").mkdir()
    os.chmod(workdir / "run", 0o777)
    private, txt = make_key("rsa", 2048)
    domains = vary_domains(args.messages) if args.vary_senders else [DOMAIN]
    messages = []
    for number, domain in enumerate(domains, 1):
        message_file = workdir / "messages" / f"{number}.eml"
        message_file.parent.mkdir(exist_ok=True)
        # smtp-source sends each line with CRLF after it
        message_file.write_bytes(
            make_signed_message(args.length, private, domain).replace(b"\r\n", b"\n"))
        messages.append((message_file, f"news@{domain}"))
    zone = zone_line(DOMAIN, SELECTOR, txt) + "\n"
    if args.vary_senders:
        zone += sender_zone(domains, txt)
    figures: dict = {}
    failed: list = []
    dns_server = sink = postfix = None
    daemons: list = []
    try:
        dns_server = BenchDns(workdir / "dns", zone).start()
        sink = SmtpSink(workdir)
        addresses = addresses_for(workdir)
        # the contrib milter settings (protocol, macros, default action)
        postfix = Postfix(workdir / "postfix", sink.port,
                          milter_socket=addresses["mailwarden", "unix"])
        if any(s.startswith("rspamd") for s in args.setups):
            warm_up_rspamd(workdir, addresses["rspamd", "unix"])
        for round_no in range(1, args.rounds + 1):
            for setup in args.setups:
                postfix.stop()
                for daemon in daemons:
                    daemon.stop()
                daemons = []
                try:
                    daemons = start_setup(setup, workdir, addresses, extra)
                    milters = ", ".join(d.address for d in daemons)
                    postfix.postconf(smtpd_milters=milters, non_smtpd_milters=milters)
                    postfix.start()
                    cpu_before = usage(daemons)["cpu"]
                    result = smtp_source_run(postfix, sink, f"{setup}-{round_no}",
                                             messages, args)
                except (HarnessError, subprocess.TimeoutExpired, OSError) as exc:
                    print(f"round {round_no} {setup:22s} FAILED: {exc}", flush=True)
                    failed.append(setup)
                    continue
                after = usage(daemons)
                result["cpu_ms"] = 1000 * (after["cpu"] - cpu_before) / max(1, result["count"])
                result["rss_mb"], result["pss_mb"] = after["rss"], after["pss"]
                result["processes"] = after["processes"]
                result["round"] = round_no
                problem = check_sample(setup, result["dump"]) if result["count"] else ""
                if problem:
                    print(f"round {round_no} {setup}: the milters did not do their work: "
                          f"{problem}", flush=True)
                    failed.append(setup)
                figures.setdefault(setup, []).append(result)
                print(f"round {round_no} {setup:22s} {result['msg_per_s']:7.1f} msg/s  "
                      f"at sink {result['count']}/{args.messages}  "
                      f"CPU {result['cpu_ms']:.2f} ms/msg  peak RSS {after['rss']:.1f} MB  "
                      f"PSS {after['pss']:.1f} MB ({after['processes']} processes)",
                      flush=True)
    finally:
        for daemon in daemons:
            daemon.stop()
        if postfix is not None:
            postfix.stop()
        if dns_server is not None:
            dns_server.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ok = report(figures, args)
    if failed:
        print(f"failed runs: {', '.join(failed)}")
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
