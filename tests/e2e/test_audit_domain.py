"""``mailwarden audit DOMAIN`` against a real DNS server (unbound on loopback)
serving tests/data/zones/audit_domains.zone."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from mailwarden.cli import main

from tests.harness import BlackholeDns

DATA = Path(__file__).resolve().parents[1] / "data"
ZONE_FILE = DATA / "zones" / "audit_domains.zone"

# every test domain of the zone, each audited the same way over both paths
DOMAINS = sorted({line.split()[1].rstrip(".") for line in
                  ZONE_FILE.read_text(encoding="utf-8").splitlines()
                  if line.startswith("; ") and " " not in line[2:].strip()})


def config_for(tmp_path, port, timeout="2s"):
    path = tmp_path / "mailwarden.ini"
    path.write_text("[authserv]\nid = mx.audit.example\n"
                    f"[dns]\nnameservers = 127.0.0.1\nport = {port}\ntimeout = {timeout}\n")
    return path


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mailwarden", "audit", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_good_domain_table_over_real_dns(dns_server, tmp_path):
    config = config_for(tmp_path, dns_server.port)
    keys = {}
    for name in ("dkim-rsa2048.pem", "dkim-ed25519.key"):
        keys[name] = tmp_path / name
        shutil.copy(DATA / "audit" / name, keys[name])
        os.chmod(keys[name], 0o600)      # the key loader refuses group-readable keys
    done = run("-c", str(config), "good.audit.example", "--selector", "ed",
               "--key", f"s2048:{keys['dkim-rsa2048.pem']}",
               "--key", f"ed:{keys['dkim-ed25519.key']}")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "mailwarden audit good.audit.example"
    assert lines[-1] == "32 ok, 0 warn, 0 fail"
    # RFC 9989's tree walk, name by name, and the organizational domain it gives
    walk = [line for line in lines if line.split()[:4] == ["dmarc", "ok", "tree", "walk"]]
    assert [line.split()[4] for line in walk] == \
        ["_dmarc.good.audit.example:", "_dmarc.audit.example:", "_dmarc.example:"], walk
    assert any(line.split()[:3] == ["rdns", "ok", "2001:db8:a0d1::242"] for line in lines)
    assert any(line.split()[:3] == ["dkim", "ok", "s2048._domainkey.good.audit.example"]
               and "matches the local key" in line for line in lines)


def test_arc_sealing_keys_over_real_dns(dns_server, tmp_path):
    """The ARC key of [check.arc] keys matches what DNS publishes; an Ed25519
    record asked for with --arc-selector fails (RFC 8617: rsa-sha256 only)."""
    key = tmp_path / "arc-rsa2048.pem"
    shutil.copy(DATA / "audit" / "dkim-rsa2048.pem", key)
    os.chmod(key, 0o600)
    config = config_for(tmp_path, dns_server.port)
    with open(config, "a", encoding="utf-8") as fh:
        fh.write(f"[check.arc]\nkeys = good.audit.example:arc:{key}\n")
    done = run("-c", str(config), "good.audit.example", "--selector", "s2048",
               "--arc-selector", "arc-ed", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert "errors" not in doc
    # the selectors given first, then those of the configuration's keys
    assert [(f["level"], f["subject"], f["message"]) for f in doc["findings"]
            if f["area"] == "arc"] == [
        ("fail", "arc-ed._domainkey.good.audit.example",
         "Ed25519 key: RFC 8617 defines rsa-sha256 alone for ARC, and verifiers refuse a "
         "seal made with any other algorithm; publish an RSA key for sealing"),
        ("ok", "arc._domainkey.good.audit.example", "RSA key of 2048 bits"),
        ("ok", "arc._domainkey.good.audit.example",
         f"published key matches the local key {key}")]
    assert [(f["area"], f["subject"]) for f in doc["findings"] if f["level"] != "ok"] == [
        ("arc", "arc-ed._domainkey.good.audit.example")]


def test_failing_domain_exits_1_with_json(dns_server, tmp_path):
    config = config_for(tmp_path, dns_server.port)
    done = run("-c", str(config), "spf11.audit.example", "--selector", "s2048", "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert [(f["area"], f["level"], f["subject"]) for f in doc["findings"]
            if f["level"] != "ok"] == [("spf", "fail", "dns lookups")]


def test_unanswered_lookups_exit_2(tmp_path):
    with BlackholeDns() as hole:
        config = config_for(tmp_path, hole.port, timeout="300ms")
        done = run("-c", str(config), "good.audit.example", "--json", timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert any(e.startswith("good.audit.example/MX: timeout") for e in doc["errors"])


def _audit_json(args) -> tuple:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["audit", *args, "--json", "--selector", "s2048"])
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize("domain", DOMAINS)
def test_real_dns_gives_the_same_findings_as_the_zone(dns_server, tmp_path, domain):
    """The unit tests' in-process zone and a real server agree, fault by fault."""
    config = config_for(tmp_path, dns_server.port)
    real_code, real = _audit_json(["-c", str(config), domain])
    zone_code, zone = _audit_json(["--zone", str(ZONE_FILE), domain])
    assert "errors" not in real
    assert real["findings"] == zone["findings"]
    assert real_code == zone_code
