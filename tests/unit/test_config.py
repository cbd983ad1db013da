import os

import pytest

from mailwarden import cli
from mailwarden.config import AuthservOptions, ConfigError, DnsOptions, PolicyOptions, load, \
    loads
from mailwarden.options import parse_seconds, parse_size, parse_socket

GOOD = """\
[authserv]
id = mx.example.org
"""

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def error_of(text: str, path="t.ini") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(text, path)
    return info.value


def test_minimal_config_gets_defaults():
    cfg = loads(GOOD)
    assert cfg.authserv.id == "mx.example.org"
    assert cfg.milter.socket == "inet:8894@127.0.0.1"
    assert cfg.policy.reject_score == 15.0
    assert cfg.checks["size"].max_size == 25 * 1024 * 1024
    assert cfg.scores["IPREV_FAIL"] == 1.0


def test_shipped_config_is_valid_and_matches_defaults():
    cfg = load(os.path.join(ROOT, "conf", "mailwarden.ini"))
    assert cfg.milter.socket == "inet:8894@127.0.0.1"
    # every key the sample sets is its documented default: spot-check a few
    assert cfg.dns.timeout == 2.0 and cfg.dns.message_deadline == 10.0
    assert cfg.checks["iprev"].max_names == 10


@pytest.mark.parametrize("text,line,section,key,words", [
    ("[authserv]\nid = mx.example.org\n[bogus]\nx = 1\n", 3, "bogus", None, "unknown section"),
    ("[authserv]\nid = mx.example.org\n[dns]\ntimeoutt = 2s\n", 4, "dns", "timeoutt", "unknown key"),
    ("[authserv]\nid = mx.example.org\n[dns]\nport = abc\n", 4, "dns", "port", "whole number"),
    ("[authserv]\nid = mx.example.org\n[dns]\nport = 70000\n", 4, "dns", "port", "at most"),
    ("[authserv]\nid = mx.example.org\n[check.iplist]\n\nblock = 10.0.0.0/33\n", 5, "check.iplist",
     "block", "not an IP address or CIDR"),
    ("[authserv]\nid = mx.example.org\n[policy]\ndry_run = maybe\n", 4, "policy", "dry_run", "yes or no"),
    ("[milter]\nlog = stderr\n", None, "authserv", "id", "missing"),
    ("[authserv]\nid = \n", 2, "authserv", "id", "missing"),
    ("[authserv]\nid = mx.example.org\n[scores]\nNO_SUCH_SYMBOL = 3\n", 4, "scores",
     "NO_SUCH_SYMBOL", "unknown symbol"),
    ("[authserv]\nid = mx.example.org\n[check.nosuch]\nenabled = yes\n", 3, "check.nosuch", None,
     "unknown check"),
    ("[authserv]\nid = mx.example.org\n[dns]\nport = 1\nport = 2\n", 5, "dns", "port", "twice"),
    ("[authserv]\nid = mx.example.org\n[milter]\nsocket = tcp:1\n", 4, "milter", "socket", "expected"),
    ("[authserv]\nid = mx.example.org\n[dns]\nnameservers = 127.0.0.1 nohost\n", 4, "dns",
     "nameservers", "not an IP address"),
    ("x = 1\n", 1, None, None, "before any [section]"),
    ("[authserv]\nid = -mx.example.org\n", 2, "authserv", "id", "not a host name"),
    ("[authserv]\nid = mx.example.org\n[policy]\nstatus_header = X Status\n", 4, "policy",
     "status_header", "not a header field name"),
    ("[authserv]\nid = mx.example.org\n[dmarc_report]\ndomain = ../mx.example.org\n", 4,
     "dmarc_report", "domain", "not a host name"),
])
def test_bad_config_is_located(text, line, section, key, words):
    err = error_of(text)
    assert err.line == line
    assert err.section == section
    assert err.key == key
    assert words in err.message
    prefix = f"t.ini:{line or 0}:"     # a key that is absent has no line
    assert str(err).startswith(prefix)
    if key:
        assert f"[{section}] {key}:" in str(err)


def test_thresholds_must_be_ordered():
    err = error_of(GOOD + "[policy]\nreject_score = 3\n")
    assert err.section == "policy" and "thresholds" in err.message


@pytest.mark.parametrize("options,key,words", [
    (AuthservOptions(), "id", "missing"),
    (AuthservOptions(id="mx example"), "id", "not a host name"),
    (PolicyOptions(reject_score=3.0), None, "thresholds"),
    (PolicyOptions(status_header="X:Status"), "status_header", "not a header field name"),
    (DnsOptions(nameservers=("localhost",)), "nameservers", "not an IP address"),
    (DnsOptions(decisive_reserve=200), "decisive_reserve", "less than message_budget"),
])
def test_core_sections_check_their_keys_together(options, key, words):
    # each section's own resolve(), as a check's Options does: not the loader
    def error(k, message):
        return ValueError(k, message)
    with pytest.raises(ValueError) as info:
        options.resolve(error)
    assert info.value.args[0] == key and words in info.value.args[1]
    good = type(options)(id="mx.example.org") if key == "id" else type(options)()
    assert good.resolve(error) is good


def test_scores_override_defaults_case_insensitively():
    cfg = loads(GOOD + "[scores]\niprev_fail = 4.5\n")
    assert cfg.scores["IPREV_FAIL"] == 4.5


def test_list_file_errors_point_into_the_list_file(tmp_path):
    listing = tmp_path / "block.txt"
    listing.write_text("# comment\n192.0.2.0/24\n\nnot-a-network\n")
    err = error_of(GOOD + f"[check.iplist]\nblock_file = {listing}\n")
    assert err.path == str(listing) and err.line == 4
    missing = tmp_path / "missing.txt"
    err = error_of(GOOD + f"[check.iplist]\nblock_file = {missing}\n")
    assert err.line == 4 and err.key == "block_file" and "cannot read" in err.message


def test_values_parse():
    assert parse_size("10M") == 10 * 1024 * 1024
    assert parse_size("512k") == 512 * 1024
    assert parse_seconds("250ms") == 0.25
    assert parse_seconds("2m") == 120
    assert parse_socket("inet:127.0.0.1:8894") == "inet:8894@127.0.0.1"
    assert parse_socket("inet:8894@localhost") == "inet:8894@localhost"
    assert parse_socket("inet6:[::1]:8894") == "inet6:8894@::1"
    assert parse_socket("unix:/run/mailwarden/milter.sock") == "unix:/run/mailwarden/milter.sock"


def test_check_config_command(tmp_path, capsys):
    good = tmp_path / "good.ini"
    good.write_text(GOOD)
    assert cli.main(["check-config", "-c", str(good)]) == 0
    bad = tmp_path / "bad.ini"
    bad.write_text(GOOD + "[dns]\ntimeout = soon\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["check-config", "-c", str(bad)])
    assert info.value.code == 2
    assert f"{bad}:4: [dns] timeout:" in capsys.readouterr().err
