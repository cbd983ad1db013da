"""helo: every outcome with its own symbol, on the fake resolver."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.checks.helo import bare_address
from mailwarden.config import ConfigError
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.model import Connection, parse_client_address
from tests.unit.checkset import Engine, loads

BASE = "[authserv]\nid = mx.test.example\n[check.iprev]\nenabled = no\n"

ZONE = """
mail.sender.example. A 198.51.100.7
v6.sender.example. AAAA 2001:db8::25
dual.sender.example. A 203.0.113.1
dual.sender.example. AAAA 2001:db8::26
elsewhere.sender.example. A 203.0.113.200
alias.sender.example. CNAME mail.sender.example.
noaddr.sender.example. MX 10 mail.sender.example.
slow.sender.example. TIMEOUT
broken.sender.example. SERVFAIL
"""


def helo(name, ip="198.51.100.7", extra="", our_hostname=""):
    cfg = loads(BASE + "[check.helo]\nour_addresses = 192.0.2.25, 2001:db8:ffff::25\n"
                "our_names = mx2.test.example\n" + extra)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    conn = Connection(client_ip=parse_client_address(ip), client_name="unknown",
                      our_hostname=our_hostname)
    engine.connect(conn)
    verdict = engine.helo(conn, name)
    results = [r for r in conn.results if r.check == "helo"]
    engine.close()
    return verdict, results


@pytest.mark.parametrize("name,ip,symbols,result", [
    ("mail.sender.example", "198.51.100.7", ["HELO_FORWARD_MATCH"], "pass"),
    ("MAIL.Sender.Example", "198.51.100.7", ["HELO_FORWARD_MATCH"], "pass"),
    ("alias.sender.example", "198.51.100.7", ["HELO_FORWARD_MATCH"], "pass"),
    ("v6.sender.example", "2001:db8::25", ["HELO_FORWARD_MATCH"], "pass"),
    ("dual.sender.example", "IPv6:2001:db8::26", ["HELO_FORWARD_MATCH"], "pass"),
    ("elsewhere.sender.example", "198.51.100.7", ["HELO_FORWARD_MISMATCH"], "fail"),
    ("noaddr.sender.example", "198.51.100.7", ["HELO_NO_ADDRESS"], "fail"),
    ("nothing.sender.example", "198.51.100.7", ["HELO_NO_ADDRESS"], "fail"),
    ("slow.sender.example", "198.51.100.7", ["HELO_DNS_TEMPERROR"], "temperror"),
    ("broken.sender.example", "198.51.100.7", ["HELO_DNS_TEMPERROR"], "temperror"),
    ("[198.51.100.7]", "198.51.100.7", ["HELO_LITERAL_MATCH"], "pass"),
    ("[IPv6:2001:db8::25]", "2001:db8::25", ["HELO_LITERAL_MATCH"], "pass"),
    ("[203.0.113.9]", "198.51.100.7", ["HELO_LITERAL_MISMATCH"], "fail"),
    ("[192.0.2.25]", "198.51.100.7", ["HELO_OUR_ADDRESS", "HELO_LITERAL_MISMATCH"], "fail"),
    ("[IPv6:2001:db8:ffff::25]", "198.51.100.7",
     ["HELO_OUR_ADDRESS", "HELO_LITERAL_MISMATCH"], "fail"),
    ("[999.1.1.1]", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("[IPv6:1.2.3.4]", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("198.51.100.7", "198.51.100.7", ["HELO_BARE_IP"], "fail"),
    ("2001:db8::25", "2001:db8::25", ["HELO_BARE_IP"], "fail"),
    ("192.0.2.25", "198.51.100.7", ["HELO_BARE_IP", "HELO_OUR_ADDRESS"], "fail"),
    ("localhost", "198.51.100.7", ["HELO_NOT_FQDN"], "fail"),
    ("PC-17", "198.51.100.7", ["HELO_NOT_FQDN"], "fail"),
    ("mx.test.example", "198.51.100.7", ["HELO_OUR_NAME"], "fail"),
    ("MX2.test.example", "198.51.100.7", ["HELO_OUR_NAME"], "fail"),
    ("under_score.example", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("trailing.dot.example.", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("-lead.example", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("two..dots.example", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("a" * 64 + ".example", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("", "198.51.100.7", ["HELO_INVALID"], "fail"),
    ("bad\x00name.example", "198.51.100.7", ["HELO_INVALID"], "fail"),
])
def test_outcomes(name, ip, symbols, result):
    verdict, results = helo(name, ip)
    assert verdict is None                 # nothing rejects unless configured
    assert [r.symbol for r in results] == symbols
    assert results[0].result == result


def test_macro_j_is_our_name_too():
    _, results = helo("relay.test.example", our_hostname="relay.test.example")
    assert [r.symbol for r in results] == ["HELO_OUR_NAME"]


def test_reject_is_per_symbol():
    verdict, _ = helo("mx.test.example", extra="reject = HELO_OUR_NAME HELO_INVALID\n")
    assert verdict.action == "reject"
    assert verdict.reply.line() == ("550 5.7.1 HELO/EHLO mx.test.example rejected: "
                                    "mx.test.example is our own host name")
    verdict, _ = helo("localhost", extra="reject = HELO_OUR_NAME HELO_INVALID\n")
    assert verdict is None
    verdict, _ = helo("bad\rname", extra="reject = HELO_INVALID\n")
    assert "\r" not in verdict.reply.text


def test_trusted_and_allowlisted_clients_are_not_checked():
    assert helo("localhost", "127.0.0.1")[1] == []
    _, results = helo("localhost", "198.51.100.50",
                      extra="[check.iplist]\nallow = 198.51.100.50\n")
    assert results == []


def test_second_helo_replaces_the_first():
    cfg = loads(BASE)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    conn = Connection(client_ip=parse_client_address("198.51.100.7"))
    engine.connect(conn)
    engine.helo(conn, "localhost")
    engine.helo(conn, "mail.sender.example")
    engine.close()
    assert [r.symbol for r in conn.results if r.check == "helo"] == ["HELO_FORWARD_MATCH"]


def test_unknown_reject_symbol_is_located():
    with pytest.raises(ConfigError, match=r":6: \[check.helo\] reject: not a helo symbol"):
        loads(BASE + "[check.helo]\nreject = HELO_SILLY\n")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789.:abcdefx%", max_size=40), st.text(max_size=40),
                 st.ip_addresses().map(str)))
def test_bare_address_reads_what_ip_address_reads(text):
    try:
        expected = ipaddress.ip_address(text)
    except ValueError:
        expected = None
    assert bare_address(text) == expected
