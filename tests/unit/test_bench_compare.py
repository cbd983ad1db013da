"""bench/compare.py's pure parts: rspamd's private config, the zone and the
messages of ``--vary-senders``, and the process accounting."""

import os
import re
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from mailwarden.genkey import make_key
from tests.harness import zone_to_local_data

BENCH = Path(__file__).resolve().parents[2] / "bench"
# compare.py imports its sibling throughput.py as the bench scripts do; the
# bench folder leaves the path again, so that its modules shadow nothing
sys.path.insert(0, str(BENCH))
try:
    import compare  # noqa: E402
finally:
    sys.path.remove(str(BENCH))


def test_rspamd_proxy_scans_itself_on_the_unix_socket():
    files = compare.rspamd_files("unix:/w/run/rspamd.sock")
    proxy = files["override.d/worker-proxy.inc"]
    assert 'bind_socket = "/w/run/rspamd.sock mode=0666";' in proxy
    assert "milter = yes;" in proxy
    assert re.search(r'upstream "local" \{[^}]*self_scan = yes;', proxy)
    assert "count = 2;" in proxy
    for worker in ("normal", "controller", "fuzzy"):
        assert "enabled = false;" in files[f"override.d/worker-{worker}.inc"]


def test_rspamd_on_tcp_binds_the_postfix_address():
    files = compare.rspamd_files("inet:127.0.0.1:12345", workers=3)
    assert 'bind_socket = "127.0.0.1:12345";' in files["override.d/worker-proxy.inc"]
    assert "count = 3;" in files["override.d/worker-proxy.inc"]


@pytest.mark.parametrize("address", ["local:/x.sock", '/x"y.sock', 'unix:/a"b.sock',
                                     "unix:/a\\b.sock"])
def test_rspamd_refuses_what_it_cannot_write(address):
    with pytest.raises(ValueError):
        compare.rspamd_files(address)


def test_rspamd_asks_only_the_bench_dns_and_scans_local_mail():
    options = compare.rspamd_files("unix:/s")["local.d/options.inc"]
    assert 'nameserver = ["127.0.0.153:53"]' in options
    assert "check_local = true;" in options and "check_authed = true;" in options
    headers = compare.rspamd_files("unix:/s")["local.d/milter_headers.conf"]
    assert 'use = ["authentication-results"];' in headers


def test_rspamd_reaches_nothing_beyond_loopback():
    files = compare.rspamd_files("unix:/s")
    # no map over HTTP(S): the maps left are the package's local copies
    assert not [name for name, text in files.items() if re.search(r"https?://", text)]
    for module in compare.RSPAMD_OFF:
        assert files[f"override.d/{module}.conf"] == "enabled = false;\n"
    assert {"fuzzy_check", "asn", "multimap", "whitelist", "greylist", "ratelimit",
            "reputation", "neural"} <= set(compare.RSPAMD_OFF)
    assert "phishtank_enabled = false;" in files["override.d/phishing.conf"]
    assert "enabled = false;" in files["local.d/dmarc.conf"]          # no reports


def test_rspamd_lists_are_the_bench_zones():
    rbl = compare.rspamd_files("unix:/s")["override.d/rbl.conf"]
    zone = (BENCH / "compare.zone").read_text()
    names = re.findall(r'rbl = "([^"]+)"', rbl)
    assert names == ["bl1.bench.example", "bl2.bench.example", "dbl.bench.example",
                     "ul1.bench.example", "ul2.bench.example"]
    for name in names:
        assert f".{name}." in zone               # each list has its test point there
    assert rbl.count("exclude_local = false;") == len(names)
    assert rbl.count("{") == rbl.count("}")


def test_vary_senders_zone_gives_each_domain_spf_dmarc_and_key():
    domains = compare.vary_domains(3)
    assert domains == ["bench-sender-1.example", "bench-sender-2.example",
                       "bench-sender-3.example"]
    assert compare.DOMAIN not in domains
    key = "v=DKIM1; k=rsa; p=" + "A" * 400            # longer than one TXT string
    text = compare.sender_zone(domains, key)
    records = zone_to_local_data(text)
    assert len(records) == 9
    for domain in domains:
        owners = [r for r in records if r.split()[0] in
                  (f"{domain}.", f"_dmarc.{domain}.", f"bench._domainkey.{domain}.")]
        assert len(owners) == 3
    assert sum("v=spf1 ip4:127.0.0.1 -all" in r for r in records) == 3
    assert sum("v=DMARC1; p=reject" in r for r in records) == 3


def test_a_varied_message_is_signed_for_its_own_domain():
    private, txt = make_key("rsa", 2048)
    message = compare.make_signed_message(2000, private, "bench-sender-7.example")
    assert b"From: Bench News <news@bench-sender-7.example>" in message
    assert b" d=bench-sender-7.example;" in message
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name)
        return txt.encode()
    assert dkim.verify(message, dnsfunc=dnsfunc)
    assert asked == [b"bench._domainkey.bench-sender-7.example."]
    assert len(message) >= 2000


def test_descendants_and_pss_see_a_child():
    child = subprocess.Popen(["sleep", "30"])
    try:
        pids = compare.descendants(os.getpid())
        assert pids[0] == os.getpid() and child.pid in pids
        assert compare.process_pss(os.getpid()) > 1.0
    finally:
        child.kill()
        child.wait()
