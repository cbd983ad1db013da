"""dnsbl: IP and domain lists, codes, errors, rejects, on the fake resolver."""

import pytest

from mailwarden.config import ConfigError
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import run_offline
from mailwarden.model import Connection, parse_client_address
from tests.unit.checkset import Engine, loads

BASE = "[authserv]\nid = mx.test.example\n[check.iprev]\nenabled = no\n"

LISTS = """
[check.dnsbl.zen]
zone = zen.test.example
codes = 127.0.0.2:SBL 127.0.0.3:CSS 127.0.0.4-127.0.0.7:XBL 127.0.0.9:DROP
        127.0.0.10-127.0.0.11:PBL
errors = 127.255.255.0/24
[check.dnsbl.other]
zone = bl.test.example
score = 1.5
ipv6 = no
[check.dnsbl.dbl]
zone = dbl.test.example
kind = domain
codes = 127.0.1.2:SPAM 127.0.1.4:PHISH 127.0.1.5:MALWARE 127.0.1.6:BOTNET
        127.0.1.102-127.0.1.106:ABUSED
errors = 127.0.1.255 127.255.255.0/24
"""

ZONE = """
; RFC 5782 test points
2.0.0.127.zen.test.example. A 127.0.0.2
2.0.0.127.zen.test.example. TXT "https://www.spamhaus.org/query/ip/127.0.0.2"
2.0.0.127.bl.test.example. A 127.0.0.2
test.dbl.test.example. A 127.0.1.2
test.dbl.test.example. TXT "https://www.spamhaus.org/query/domain/test"
; two codes at once: XBL and PBL
10.100.51.198.zen.test.example. A 127.0.0.4
10.100.51.198.zen.test.example. A 127.0.0.10
; a code the list's codes do not name
11.100.51.198.zen.test.example. A 127.0.0.77
; query refused (public resolver), an answer outside 127/8, a timeout
20.100.51.198.zen.test.example. A 127.255.255.254
21.100.51.198.zen.test.example. A 10.0.0.1
22.100.51.198.zen.test.example. TIMEOUT
23.100.51.198.zen.test.example. SERVFAIL
; IPv6 2001:db8::25 (reversed nibbles)
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test.example. A 127.0.0.3
; domains: listed by the full name or by the registered domain
mail.phish-host.co.uk.dbl.test.example. A 127.0.1.4
evil-registered.co.uk.dbl.test.example. A 127.0.1.5
ip-asked.example.dbl.test.example. A 127.0.1.255
abused.example.dbl.test.example. A 127.0.1.103
; iprev for the PTR target
30.100.51.198.in-addr.arpa. PTR mail.phish-host.co.uk.
mail.phish-host.co.uk. A 198.51.100.30
"""

MESSAGE = b"From: a@sender.example\r\nSubject: test\r\n\r\nHello.\r\n"


def make_engine(extra="", lists=LISTS, zone=ZONE):
    cfg = loads(BASE + lists + extra)
    backend = ZoneBackend(zone)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=backend),
                  hostname="mx.test.example"), backend


def scan(ip, extra="", **kw):
    engine, backend = make_engine(extra)
    kw.setdefault("mail_from", "a@sender.example")
    kw.setdefault("rcpts", ["b@test.example"])
    verdict, _, _ = run_offline(engine, client_ip=ip, message=MESSAGE, **kw)
    engine.close()
    return verdict, backend


def dnsbl(verdict):
    return sorted((r.symbol, r.result) for r in verdict.results if r.check == "dnsbl")


def test_rfc5782_test_points():
    verdict, _ = scan("127.0.0.2", mail_from="someone@test")
    assert dnsbl(verdict) == [("DBL_SPAM", "fail"), ("OTHER_LISTED", "fail"),
                              ("ZEN_SBL", "fail")]
    verdict, _ = scan("127.0.0.1", mail_from="someone@invalid", helo="invalid")
    assert dnsbl(verdict) == []


def test_ipv4_reversed_octets_and_several_codes():
    verdict, backend = scan("198.51.100.10")
    assert dnsbl(verdict) == [("ZEN_PBL", "fail"), ("ZEN_XBL", "fail")]
    assert ("10.100.51.198.zen.test.example", "A") in backend.queries


def test_ipv6_reversed_nibbles_and_ipv6_no():
    verdict, backend = scan("2001:db8::25")
    assert dnsbl(verdict) == [("ZEN_CSS", "fail")]
    asked = [n for n, _ in backend.queries]
    assert ("5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
            ".zen.test.example") in asked
    assert not any(n.endswith(".bl.test.example") for n in asked)


def test_unnamed_code_is_listed():
    verdict, _ = scan("198.51.100.11")
    assert dnsbl(verdict) == [("ZEN_LISTED", "fail")]


@pytest.mark.parametrize("ip,symbol,result", [
    ("198.51.100.20", "ZEN_BLOCKED", "permerror"),
    ("198.51.100.21", "ZEN_BLOCKED", "permerror"),
    ("198.51.100.22", "ZEN_FAIL", "temperror"),
    ("198.51.100.23", "ZEN_FAIL", "temperror"),
])
def test_errors_are_never_listings(ip, symbol, result, caplog):
    verdict, _ = scan(ip)
    assert dnsbl(verdict) == [(symbol, result)]
    # a failed list does not hold mail back by default
    assert verdict.action == "accept"


def test_blocked_code_is_logged(caplog):
    scan("198.51.100.20")
    assert any("zen.test.example refused or broke the query" in r.getMessage()
               for r in caplog.records)


def test_scores_default_and_override():
    cfg = loads(BASE + LISTS + "[scores]\nZEN_SBL = 7\nDBL_ABUSED = 0.5\n")
    assert cfg.scores["ZEN_SBL"] == 7
    assert cfg.scores["ZEN_XBL"] == 3.0
    assert cfg.scores["OTHER_LISTED"] == 1.5
    assert cfg.scores["ZEN_BLOCKED"] == 0.0
    assert cfg.scores["DBL_ABUSED"] == 0.5
    with pytest.raises(ConfigError, match=r"\[scores\] ZEN_NOPE: unknown symbol"):
        loads(BASE + "[scores]\nZEN_NOPE = 1\n" + LISTS)


def test_reject_with_txt_reason():
    verdict, _ = scan("127.0.0.2")        # a list without reject only scores
    assert verdict.action != "reject"
    lists = LISTS.replace("errors = 127.255.255.0/24\n[check.dnsbl.other]",
                          "errors = 127.255.255.0/24\nreject = ZEN_SBL\n[check.dnsbl.other]")
    engine, _ = make_engine(lists=lists)
    conn = Connection(client_ip=parse_client_address("127.0.0.2"))
    verdict = engine.connect(conn)
    assert verdict.action == "reject"
    assert verdict.reply.line() == (
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.test.example; "
        "https://www.spamhaus.org/query/ip/127.0.0.2")
    # XBL is not in reject: scored only
    conn = Connection(client_ip=parse_client_address("198.51.100.10"))
    assert engine.connect(conn) is None
    engine.close()


def test_domain_lists_helo_sender_ptr():
    # iprev is off here: the MTA's name stands for the verified one
    verdict, backend = scan("198.51.100.30", helo="test", mail_from="x@abused.example",
                            client_name="mail.phish-host.co.uk")
    reasons = {r.symbol: r.reason for r in verdict.results if r.check == "dnsbl"}
    assert set(reasons) == {"DBL_SPAM", "DBL_PHISH", "DBL_ABUSED"}
    assert "HELO name test" in reasons["DBL_SPAM"]
    assert "client name mail.phish-host.co.uk" in reasons["DBL_PHISH"]
    assert "sender domain abused.example" in reasons["DBL_ABUSED"]


def test_registered_domain_is_asked_too():
    verdict, backend = scan("198.51.100.7", helo="mx.evil-registered.co.uk")
    assert dnsbl(verdict) == [("DBL_MALWARE", "fail")]
    asked = [n for n, _ in backend.queries]
    assert "mx.evil-registered.co.uk.dbl.test.example" in asked
    assert "evil-registered.co.uk.dbl.test.example" in asked


def test_dbl_ip_query_code_is_an_error():
    verdict, _ = scan("198.51.100.7", mail_from="x@ip-asked.example")
    assert dnsbl(verdict) == [("DBL_BLOCKED", "permerror")]


def test_ptr_name_comes_from_iprev_when_it_ran():
    text = BASE.replace("[check.iprev]\nenabled = no\n", "")
    cfg = loads(text + LISTS)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    # iprev fails for this client: the MTA's unverified name is not used
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.99",
                                client_name="mail.phish-host.co.uk", helo="",
                                mail_from="a@sender.example", rcpts=["b@test.example"],
                                message=MESSAGE)
    assert dnsbl(verdict) == []
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.30", helo="",
                                mail_from="a@sender.example", rcpts=["b@test.example"],
                                message=MESSAGE)
    assert dnsbl(verdict) == [("DBL_PHISH", "fail")]
    engine.close()


def test_allowlisted_skipped_and_authenticated_skipped_at_mail():
    verdict, backend = scan("127.0.0.2", extra="[check.iplist]\nallow = 127.0.0.2\n")
    assert dnsbl(verdict) == [] and backend.queries == []
    verdict, backend = scan("127.0.0.2", extra="[check.dnsbl]\nlookup_at = mail\n",
                            auth_user="alice", mail_from="a@test")
    assert dnsbl(verdict) == [] and backend.queries == []
    verdict, _ = scan("127.0.0.2", extra="[check.dnsbl]\nlookup_at = mail\n",
                      mail_from="a@test")
    assert dnsbl(verdict) == [("DBL_SPAM", "fail"), ("OTHER_LISTED", "fail"),
                              ("ZEN_SBL", "fail")]
    assert {r.stage.name for r in verdict.results if r.check == "dnsbl"} == {"MAIL"}


def test_all_lists_in_one_parallel_batch():
    calls = []
    engine, backend = make_engine()
    real = engine.resolver.query_keys          # what a session's query_many calls

    def spy(queries, timeout=None, **kwargs):
        calls.append(list(queries))
        return real(queries, timeout, **kwargs)
    engine.resolver.query_keys = spy
    conn = Connection(client_ip=parse_client_address("198.51.100.7"))
    engine.connect(conn)
    engine.close()
    dnsbl_calls = [c for c in calls if any(n.endswith("test.example") for n, _ in c)]
    assert dnsbl_calls == [[("7.100.51.198.zen.test.example", "A"),
                            ("7.100.51.198.bl.test.example", "A")]]


def test_disabled_list_keeps_its_symbols_known():
    lists = LISTS.replace("zone = bl.test.example\n", "zone = bl.test.example\nenabled = no\n")
    engine, backend = make_engine(lists=lists, extra="[scores]\nOTHER_LISTED = 2\n")
    engine.connect(Connection(client_ip=parse_client_address("127.0.0.2")))
    engine.close()
    assert not any(n.endswith(".bl.test.example") for n, _ in backend.queries)


@pytest.mark.parametrize("text,match", [
    ("[check.dnsbl.x]\nkind = ip\n", r"\[check.dnsbl.x\] zone: missing"),
    ("[check.dnsbl.x]\nzone = x.example\ncodes = 127.0.0.2\n",
     r":7: \[check.dnsbl.x\] codes: expected ADDRESS"),
    ("[check.dnsbl.x]\nzone = x.example\ncodes = 127.0.0.9-127.0.0.2:A\n", "backwards"),
    ("[check.dnsbl.x]\nzone = x.example\nreject = X_NOPE\n",
     r":7: \[check.dnsbl.x\] reject: X_NOPE is not a listing symbol"),
    ("[check.dnsbl.x]\nzone = x.example\nzones = y\n", r":7: \[check.dnsbl.x\] zones: unknown key"),
    ("[check.dnsbl.x]\nzone = x.example\n[check.dnsbl.y]\nzone = y.example\nprefix = X\n",
     "both make symbols X_"),
    ("[check.iprev.x]\nzone = x.example\n", r"check iprev has no sub-sections"),
    ("[check.dnsbl.x]\nzone = x.example\ntargets = body\n", "unknown target"),
])
def test_config_errors_are_located(text, match):
    with pytest.raises(ConfigError, match=match):
        loads(BASE + text)
