"""The uribl check on the lists' documented test points (fake resolver)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailwarden.checks.uribl import BUILTIN_LISTS, UriblCheck
from mailwarden.config import ConfigError, load, loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

ROOT = Path(__file__).resolve().parents[2]
ZONE = (ROOT / "tests" / "data" / "zones" / "uribl.zone").read_text()

BASE = """
[authserv]
id = mx.example.org
[check.uribl]
enabled = yes
{extra}
{sections}
"""

RHSBL = """
[check.uribl.rhsbl]
zone = rhsbl.mailwarden.test
match = codes
codes = 127.0.0.2:RHSBL_LISTED
"""


def scan(body: str, extra: str = "", sections: str = "", zone: str = ZONE,
         ctype: str = "text/html", client_ip: str = "198.51.100.7"):
    config = loads(BASE.format(extra=extra, sections=sections))
    backend = ZoneBackend(zone)
    engine = Engine(config, resolver=Resolver(config.dns, backend=backend))
    message = (f"From: a@sender.example\r\nTo: b@example.org\r\nSubject: t\r\n"
               f"Content-Type: {ctype}\r\n\r\n{body}\r\n").encode()
    try:
        verdict, _, msg = run_offline(engine, client_ip=client_ip, helo="mail.sender.example",
                                      mail_from="a@sender.example", rcpts=["b@example.org"],
                                      message=message)
        if msg is not None:
            msg.close()
    finally:
        engine.close()
    mine = [r for r in verdict.results if r.check == "uribl"]
    return verdict, mine, [q for q, _ in backend.queries if ".multi." in q or "dbl." in q
                           or "rhsbl." in q]


def symbols(results) -> set:
    return {r.symbol for r in results}


def test_surbl_test_point_gives_every_sub_list():
    verdict, results, _ = scan('<a href="http://test.surbl.org/">x</a>')
    assert symbols(results) == {"SURBL_PH", "SURBL_MW", "SURBL_ABUSE", "SURBL_CR"}
    assert all(r.result == "fail" and r.options == ("test.surbl.org",) for r in results)
    assert "test.surbl.org listed in multi.surbl.org" in results[0].reason
    assert verdict.action == "reject"              # 19 points by default
    assert "SURBL_PH[test.surbl.org]" in verdict.reply.text


def test_uribl_test_point_is_black_grey_red():
    _, results, _ = scan("see http://test.uribl.com/ now", ctype="text/plain")
    assert symbols(results) == {"URIBL_BLACK", "URIBL_GREY", "URIBL_RED"}


def test_dbl_test_point_is_spam_and_shows_in_the_status_header():
    verdict, results, _ = scan('<img src="https://dbltest.com/x.gif">')
    assert symbols(results) == {"DBL_SPAM"}
    assert verdict.action == "add_header"
    header = dict(verdict.headers_added)["X-Mailwarden-Status"]
    assert "DBL_SPAM(5.00)[dbltest.com]" in header


def test_rfc5782_test_and_invalid_on_a_list_added_in_ini():
    _, results, queries = scan("http://test/ and http://invalid/", ctype="text/plain",
                               extra="lists = rhsbl", sections=RHSBL)
    assert symbols(results) == {"RHSBL_LISTED"}
    assert results[0].options == ("test",)
    assert set(queries) == {"test.rhsbl.mailwarden.test", "invalid.rhsbl.mailwarden.test"}


def test_ip_hosts_are_looked_up_reversed_only_where_lists_take_ips():
    _, results, queries = scan('<a href="http://0x7f000002/">x</a>')
    assert symbols(results) == {"SURBL_PH", "SURBL_MW", "SURBL_ABUSE", "SURBL_CR"}
    assert results[0].options == ("127.0.0.2",)
    assert queries == ["2.0.0.127.multi.surbl.org"]


def test_clean_domains_are_not_listed():
    verdict, results, queries = scan('<a href="http://www.clean-domain.example.net/">x</a>')
    assert results == []
    # the registered domain, and the name one label below it (www aside)
    assert sorted(queries) == sorted(f"{name}.{zone}" for name in
                                     ("example.net", "clean-domain.example.net")
                                     for zone in ("dbl.spamhaus.org", "multi.surbl.org",
                                                  "multi.uribl.com"))
    assert not [s for s, _ in verdict.symbols if s.startswith(("SURBL", "URIBL", "DBL"))]


@pytest.mark.parametrize("host, symbol, result, words", [
    # a refused query is an error of weight 0, never a listing, never a
    # temporary failure (as the dnsbl check reads the same codes)
    ("blocked.surbl-refused.test", "SURBL_BLOCKED", "permerror", "error code 127.0.0.1"),
    ("refused.uribl-refused.test", "URIBL_BLOCKED", "permerror", "error code 127.0.0.1"),
    ("dbl-ipquery.test", "DBL_BLOCKED", "permerror", "error code 127.0.1.255"),
    ("dbl-publicresolver.test", "DBL_BLOCKED", "permerror", "error code 127.255.255.254"),
    ("dbl-wildcard.test", "DBL_BLOCKED", "permerror", "outside 127.0.0.0/8"),
    ("slow.surbl-timeout.test", "SURBL_FAIL", "temperror", "timeout"),
])
def test_refusals_errors_and_timeouts_are_not_listings(host, symbol, result, words):
    verdict, results, _ = scan(f'<a href="http://{host}/">x</a>')
    assert [(r.symbol, r.result) for r in results] == [(symbol, result)]
    assert words in results[0].reason
    assert results[0].tempfail is False            # a list outage does not hold mail
    assert verdict.action == "accept"


def test_grey_alone_is_scored_lightly():
    verdict, results, _ = scan('<a href="http://grey.uribl-grey.test/">x</a>')
    assert symbols(results) == {"URIBL_GREY"}
    assert dict(verdict.symbols)["URIBL_GREY"] == pytest.approx(0.5)


def test_a_list_with_reject_rejects_naming_the_domain():
    sections = """
[check.uribl.dbl]
zone = dbl.spamhaus.org
match = codes
codes = 127.0.1.2:DBL_SPAM, 127.0.1.4:DBL_PHISH
errors = 127.0.1.255, 127.255.255.0/24
reject = yes
"""
    verdict, results, _ = scan('<a href="http://phish.dbl-phish.test/">x</a>', sections=sections)
    assert verdict.action == "reject"
    assert verdict.reply.line() == \
        "550 5.7.1 Message contains a link to dbl-phish.test, listed in dbl.spamhaus.org"
    assert symbols(results) == {"DBL_PHISH"}


def test_skipped_domains_are_never_queried():
    body = '<a href="https://mail.google.com/">g</a> <a href="http://dbltest.com/">d</a>'
    _, results, queries = scan(body)
    assert not any("google.com" in q for q in queries)
    assert symbols(results) == {"DBL_SPAM"}


def test_max_domains_bounds_the_queries():
    body = " ".join(f"http://d{i}.example{i}.com/" for i in range(40))
    _, _, queries = scan(body, extra="max_domains = 5", ctype="text/plain")
    assert len(queries) == 5 * 3


def test_trusted_clients_are_not_checked():
    _, results, queries = scan('<a href="http://dbltest.com/">x</a>', client_ip="127.0.0.1")
    assert results == [] and queries == []


def test_lookups_run_in_parallel_under_the_deadline():
    class Slow(ZoneBackend):
        def lookup(self, name, rdtype, timeout):
            time.sleep(0.05)
            return super().lookup(name, rdtype, timeout)

    config = loads(BASE.format(extra="", sections=""))
    engine = Engine(config, resolver=Resolver(config.dns, backend=Slow(ZONE)))
    body = " ".join(f"http://host.domain{i}.com/" for i in range(20))
    message = ("From: a@sender.example\r\nSubject: t\r\n\r\n" + body + "\r\n").encode()
    started = time.monotonic()
    try:
        run_offline(engine, client_ip="198.51.100.7", mail_from="a@sender.example",
                    rcpts=["b@example.org"], message=message)
    finally:
        engine.close()
    # 60 lookups of 50 ms each: far less than their sum when parallel
    assert time.monotonic() - started < 1.5


def test_shipped_ini_defines_the_built_in_lists_and_passes():
    config = load(str(ROOT / "conf" / "mailwarden.ini"))
    options = config.check("uribl")
    assert options.enabled is False and options.tempfail_on_error is False
    for name, builtin in BUILTIN_LISTS.items():
        shipped = options.subsections[name]
        assert (shipped.zone, shipped.match, dict(shipped.table), shipped.errors, shipped.ip) == \
            (builtin.zone, builtin.match, dict(builtin.table), builtin.errors, builtin.ip)
    for symbol in UriblCheck.symbols_for(options):
        assert symbol in config.scores


@pytest.mark.parametrize("sections, words", [
    ("[check.uribl.x]\nzone = x.test\nmatch = bitmask\ncodes = 3:X_BAD\n", "one bit"),
    ("[check.uribl.x]\nzone = x.test\nmatch = codes\ncodes = 2:X_BAD\n", "IPv4 answer"),
    ("[check.uribl.x]\nzone = x.test\n", "codes: missing"),
    ("[check.uribl.x]\ncodes = 2:X\n", "zone: missing"),
    ("[check.uribl.x]\nzone = x.test\ncodes = 2\n", "CODE:SYMBOL"),
])
def test_bad_list_definitions_are_refused_at_start_up(sections, words):
    with pytest.raises(ConfigError) as err:
        loads(BASE.format(extra="lists = x", sections=sections))
    assert words in str(err.value)


def test_an_undefined_list_name_is_refused():
    with pytest.raises(ConfigError) as err:
        loads(BASE.format(extra="lists = surbl, nosuchlist", sections=""))
    assert "[check.uribl] lists:" in str(err.value)


@pytest.mark.parametrize("name", ["charset-punycode-320k", "charset-python-codecs",
                                  "delimiters-2.6mb"])
def test_hostile_content_costs_bounded_work_with_uribl_on(name):
    """The content-parsing classes of the hostile corpus through the engine
    with uribl on: no pure-Python codec decodes a part (their Python steps
    are counted, and stopped past a budget) and the multipart delimiters
    are not all listed (peak memory traced, was +100 MB)."""
    import tracemalloc

    from tests.hostile import corpus
    from tests.unit.codecsteps import codec_steps

    item = {i.name: i for i in corpus(big=False)}[name]
    config = loads(BASE.format(extra="", sections=""))
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)))
    out = []

    def run():
        verdict, _, msg = run_offline(engine, client_ip="198.51.100.7",
                                      helo="mail.sender.example", mail_from="a@sender.example",
                                      rcpts=["b@example.org"], message=item.data)
        if msg is not None:
            msg.close()
        out.append(verdict)

    try:
        tracemalloc.start()
        try:
            steps = codec_steps(run)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        engine.close()
    assert steps <= 200, f"{steps} Python steps in codecs"
    # the engine holds the message and its body: a few copies of 2.6 MB at most
    assert peak < 8 * len(item.data) + (16 << 20), f"peak {peak / 1e6:.1f} MB"
    assert not [r for r in out[0].results if "internal error" in (r.reason or "")]
    # the link beside the hostile content is still found and looked up
    assert "SURBL_PH" in {r.symbol for r in out[0].results if r.check == "uribl"}
