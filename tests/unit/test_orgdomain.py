"""The organizational domain (mailwarden.orgdomain) and everything that uses it.

The Public Suffix List is read with its private section: tenants of a
private suffix (``eu.org``, ``github.io``, ``blogspot.com``) are
organizations of their own, so one tenant's SPF or DKIM never aligns with
another tenant's From.  The DMARC tests run the real engine on
``tests/data/zones/auth.zone``.
"""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden import orgdomain
from mailwarden.config import DnsOptions
from mailwarden.dmarc_report import Destination, authorized
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.orgdomain import organizational, public_suffix, registered_domain
from tests import dkimkeys
from tests.unit.auditcase import ZONE as AUDIT_ZONE
from tests.unit.auditcase import audit, find
from tests.unit.authcase import RELAY, STRANGER, dmarc_of, message, of, run

PACKAGE = Path(__file__).resolve().parents[2] / "mailwarden"


# -- the organizational domain ------------------------------------------------

@pytest.mark.parametrize("name,org", [
    # tenants of private suffixes: each its own organization
    ("attacker.eu.org", "attacker.eu.org"),
    ("victim.eu.org", "victim.eu.org"),
    ("ceo.mail.victim.eu.org", "victim.eu.org"),
    ("a.at.eu.org", "a.at.eu.org"),                 # at.eu.org is a suffix of its own
    ("x.github.io", "x.github.io"),
    ("www.x.github.io", "x.github.io"),
    ("a.b.blogspot.com", "b.blogspot.com"),
    ("eu.org", "eu.org"),                           # a suffix is its own organization
    ("github.io", "github.io"),
    ("blogspot.com", "blogspot.com"),
    # ICANN names: as before
    ("example.com", "example.com"),
    ("a.b.example.com", "example.com"),
    ("a.news.mwshop.co.uk", "mwshop.co.uk"),
    ("mwshop.co.uk", "mwshop.co.uk"),
    ("co.uk", "co.uk"),
    ("com", "com"),
    ("www.bund.de", "bund.de"),
    ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com"),
    # unknown top-level domains: the default rule "*"
    ("mail.corp.internal", "corp.internal"),
    ("corp.internal", "corp.internal"),
    ("internal", "internal"),
    ("deep.sub.mw-sub.example", "mw-sub.example"),
    ("a.b.test", "b.test"),
    ("foo.localhost", "foo.localhost"),
    ("a.b.foo.localhost", "foo.localhost"),
    # spelling
    ("Ceo.Victim.EU.org.", "victim.eu.org"),
    ("", ""),
])
def test_organizational(name, org):
    assert organizational(name) == org


def test_tenants_of_a_private_suffix_are_two_organizations():
    assert organizational("attacker.eu.org") != organizational("victim.eu.org")
    assert organizational("evil.github.io") != organizational("bank.github.io")
    assert organizational("a.blogspot.com") != organizational("b.blogspot.com")
    # ... and a tenant's own subdomains stay in its organization
    assert organizational("bounce.victim.eu.org") == organizational("victim.eu.org")


@pytest.mark.parametrize("name,suffix", [
    ("a.b.eu.org", "eu.org"), ("x.github.io", "github.io"), ("a.co.uk", "co.uk"),
    ("x.corp.internal", "internal"), ("internal", "internal"), ("a.test", "test"),
])
def test_public_suffix(name, suffix):
    assert public_suffix(name) == suffix


_LABEL = st.from_regex(r"mw[a-z0-9]{0,8}(-[a-z0-9]{1,6})?", fullmatch=True)
_ICANN = st.sampled_from(["com", "net", "org", "de", "co.uk", "org.uk", "com.au", "co.jp",
                          "fr", "nl"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_LABEL, min_size=1, max_size=5), _ICANN)
def test_icann_names_keep_their_organizational_domain(labels, suffix):
    """Names under ICANN suffixes with no private entry below them: the
    organizational domain is the label right under the suffix, as before."""
    name = ".".join(labels + [suffix])
    assert organizational(name) == f"{labels[-1]}.{suffix}"


_ANY_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_ANY_SUFFIX = st.sampled_from(["com", "eu.org", "at.eu.org", "github.io", "blogspot.com",
                               "co.uk", "internal", "example", "test", "localhost",
                               "compute.amazonaws.com", "s3.amazonaws.com", "onion"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_ANY_LABEL, min_size=0, max_size=5), _ANY_SUFFIX)
def test_organizational_domain_properties(labels, suffix):
    """Whatever the name: the organizational domain is a whole-label tail of
    it, at least two labels long unless the name is a public suffix, its own
    organizational domain, and every name between the two shares it."""
    name = ".".join(labels + [suffix])
    org = organizational(name)
    assert name == org or name.endswith("." + org)
    assert organizational(org) == org
    extra = name[:-len(org)].rstrip(".").split(".") if name != org else []
    for i in range(len(extra)):
        assert organizational(".".join(extra[i:] + [org])) == org
    if name != public_suffix(name):
        assert org.count(".") >= 1


@pytest.mark.parametrize("text", ["1\x00", "1.2.3\x00", "0\x00.example.com"])
def test_a_nul_after_a_digit_gives_an_answer(text):
    # tldextract < 3.2 raised ValueError from socket.inet_aton there
    for fn in (organizational, public_suffix, registered_domain):
        assert isinstance(fn(text), str)
    assert registered_domain("1\x00") == ""


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_an_answer_not_an_exception(text):
    for fn in (organizational, public_suffix, registered_domain):
        assert isinstance(fn(text), str)


# -- the block lists' registered domain: their conventions kept ------------------

@pytest.mark.parametrize("host,reg", [
    ("a.b.example.co.uk", "example.co.uk"),
    ("a.b.blogspot.com", "b.blogspot.com"),
    ("x.github.io", "x.github.io"),
    ("intranet", ""),                       # unknown TLD: nothing to look up
    ("foo.local", ""),
    ("test", "test"),                       # RFC 5782 TEST entry, looked up as it is
    ("invalid", "invalid"),
    ("uribl-hit.example", "uribl-hit.example"),
    ("com", "com"),
])
def test_registered_domain_for_block_lists(host, reg):
    assert registered_domain(host) == reg


# -- one reader of the list ---------------------------------------------------------

def _list_readers(path: Path) -> list:
    """Where a module imports tldextract, names TLDExtract or the list's file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tldextract"
                                                for a in node.names):
            found.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tldextract"):
            found.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "TLDExtract":
            found.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id == "TLDExtract":
            found.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                "tld_set_snapshot" in node.value or node.value == "tldextract"):
            found.append(node.lineno)
    return found


def test_no_module_but_orgdomain_reads_the_public_suffix_list():
    users = {str(p.relative_to(PACKAGE.parent)): lines
             for p in sorted(PACKAGE.rglob("*.py")) if (lines := _list_readers(p))}
    assert set(users) == {"mailwarden/orgdomain.py"}, users


def test_the_list_is_read_once_without_tldextract_even_when_threads_race(monkeypatch):
    """tldextract (and the requests and urllib3 it imports) is never loaded:
    only its bundled copy of the list is read, once, whatever the threads do."""
    import subprocess
    import sys
    code = ("import sys; from mailwarden import orgdomain; "
            "assert orgdomain.organizational('a.victim.eu.org') == 'victim.eu.org'; "
            "print(sorted(m for m in ('tldextract', 'requests', 'urllib3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"

    read = []
    real = orgdomain._load_rules

    def counting(text):
        read.append(len(text))
        return real(text)

    monkeypatch.setattr(orgdomain, "_load_rules", counting)
    monkeypatch.setattr(orgdomain, "_rules", None)
    for fn in (organizational, public_suffix, registered_domain):
        fn.cache_clear()
    start = threading.Barrier(8)
    answers = []

    def work(i):
        start.wait(timeout=10)
        answers.append(organizational(f"n{i}.victim.eu.org"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert answers == ["victim.eu.org"] * 8
    assert len(read) == 1 and read[0] > 100_000
    for fn in (organizational, public_suffix, registered_domain):
        fn.cache_clear()


def test_a_missing_list_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(orgdomain, "_SNAPSHOT", "no-such-file")
    with pytest.raises(RuntimeError, match="Public Suffix List is missing"):
        orgdomain._snapshot_path()


# publicsuffix.org's own test vectors (tests/test_psl.txt), the ASCII ones:
# the registrable domain, or None where the name is a public suffix itself
PSL_VECTORS = [
    ("example.com", "example.com"), ("www.example.com", "example.com"), ("com", None),
    ("example", None), ("example.example", "example.example"),
    ("b.example.example", "example.example"), ("a.b.example.example", "example.example"),
    ("biz", None), ("domain.biz", "domain.biz"), ("b.domain.biz", "domain.biz"),
    ("a.b.domain.biz", "domain.biz"), ("b.example.com", "example.com"),
    ("a.b.example.com", "example.com"), ("uk.com", None), ("example.uk.com", "example.uk.com"),
    ("b.example.uk.com", "example.uk.com"), ("a.b.example.uk.com", "example.uk.com"),
    ("test.ac", "test.ac"), ("mm", None), ("c.mm", None), ("b.c.mm", "b.c.mm"),
    ("a.b.c.mm", "b.c.mm"), ("jp", None), ("test.jp", "test.jp"), ("www.test.jp", "test.jp"),
    ("ac.jp", None), ("test.ac.jp", "test.ac.jp"), ("www.test.ac.jp", "test.ac.jp"),
    ("kyoto.jp", None), ("test.kyoto.jp", "test.kyoto.jp"), ("ide.kyoto.jp", None),
    ("b.ide.kyoto.jp", "b.ide.kyoto.jp"), ("a.b.ide.kyoto.jp", "b.ide.kyoto.jp"),
    ("c.kobe.jp", None), ("b.c.kobe.jp", "b.c.kobe.jp"), ("a.b.c.kobe.jp", "b.c.kobe.jp"),
    ("city.kobe.jp", "city.kobe.jp"), ("www.city.kobe.jp", "city.kobe.jp"),
    ("ck", None), ("test.ck", None), ("b.test.ck", "b.test.ck"), ("a.b.test.ck", "b.test.ck"),
    ("www.ck", "www.ck"), ("www.www.ck", "www.ck"), ("us", None), ("test.us", "test.us"),
    ("www.test.us", "test.us"), ("ak.us", None), ("test.ak.us", "test.ak.us"),
    ("www.test.ak.us", "test.ak.us"), ("k12.ak.us", None),
    ("test.k12.ak.us", "test.k12.ak.us"), ("www.test.k12.ak.us", "test.k12.ak.us"),
    ("xn--85x722f.com.cn", "xn--85x722f.com.cn"),
    ("xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("www.xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("shishi.xn--55qx5d.cn", "shishi.xn--55qx5d.cn"), ("xn--55qx5d.cn", None),
    ("xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"),
    ("www.xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"),
    ("shishi.xn--fiqs8s", "shishi.xn--fiqs8s"), ("xn--fiqs8s", None),
]


@pytest.mark.parametrize("name,registrable", PSL_VECTORS)
def test_the_public_suffix_lists_own_test_vectors(name, registrable):
    # city.kobe.jp: the vectors' list had "!city.kobe.jp"; the list bundled
    # now may differ only where the vectors' domains were since re-ruled
    assert organizational(name) == (registrable or name)


def _reference(rules: frozenset, name: str) -> str:
    """publicsuffix.org's algorithm word for word: every rule that matches,
    an exception first, else the one with the most labels; '' for none."""
    labels = name.split(".")
    matching = []
    for rule in rules:
        body = rule.lstrip("!").split(".")
        if len(body) > len(labels):
            continue
        if all(r == "*" or r == n for r, n in zip(reversed(body), reversed(labels))):
            matching.append(rule)
    exceptions = [r for r in matching if r.startswith("!")]
    if exceptions:
        return exceptions[0][1:].partition(".")[2]
    if not matching:
        return ""
    count = max(r.count(".") for r in matching) + 1
    return ".".join(labels[-count:])


def test_every_rule_is_read_as_the_lists_algorithm_says():
    """Names made from every rule of the list (the rule, and one and two
    labels under it) against a literal reading of the algorithm."""
    rules = orgdomain._list()
    by_tld: dict = {}
    for rule in rules:
        by_tld.setdefault(rule.rpartition(".")[2], set()).add(rule)
    checked = 0
    for rule in sorted(rules):
        if not rule.isascii():
            continue
        base = rule.lstrip("!").replace("*.", "x.")
        for name in (base, "a." + base, "www.city." + base):
            candidates = by_tld.get(name.rpartition(".")[2], set())
            assert orgdomain._split(name)[0] == _reference(frozenset(candidates), name), name
            checked += 1
    assert checked > 25_000


def test_the_list_read_is_the_one_tldextract_ships():
    """tldextract itself reads the same file (a test dependency only): the
    two agree on almost every name; where they differ, tldextract's suffix
    tree stops at a name some longer rule passes through (a wildcard beside
    it: ``in.futurecms.at``), and the list's algorithm is followed here."""
    tldextract = pytest.importorskip("tldextract")
    ex = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None,
                               include_psl_private_domains=True,
                               extra_suffixes=("test", "example", "invalid"))
    names = [rule.lstrip("!").replace("*.", "x.") for rule in orgdomain._list()]
    names += ["a." + n for n in names]
    differ = [n for n in names if ex(n).suffix != orgdomain._split(n)[0]]
    assert len(differ) <= len(names) // 500, differ[:20]


# -- DMARC: one tenant never aligns with another ----------------------------------

def test_spf_of_one_tenant_does_not_align_with_anothers_from():
    """a@attacker.eu.org passes SPF from the stranger; From is the victim's,
    p=reject: that is a DMARC fail, refused."""
    v = run(ip=STRANGER, mail_from="a@attacker.eu.org", msg=message("ceo@victim.eu.org"))
    spf = [r for r in of(v, "spf") if ("smtp.mailfrom", "a@attacker.eu.org") in
           [p[:2] for p in r.properties]]
    assert spf and spf[0].result == "pass"
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("fail", "DMARC_FAIL_REJECT")
    assert v.action == "reject"
    assert v.reply.line() == \
        "550 5.7.1 Message rejected: it fails the DMARC policy of victim.eu.org"


def test_dkim_of_one_tenant_does_not_align_with_anothers_from():
    key = dkimkeys.ed25519_key()
    signed = dkimkeys.sign(message("ceo@victim.eu.org"), key, "ed", "attacker.eu.org")
    v = run(zone_extra=key.zone_line("ed", "attacker.eu.org"), ip=STRANGER,
            mail_from="x@spf-none.mw-auth.example", msg=signed)
    (dkim,) = of(v, "dkim")
    assert dkim.result == "pass"
    assert dmarc_of(v).result == "fail" and v.action == "reject"


def test_a_tenants_subdomain_takes_the_tenants_policy_not_the_suffixs():
    """No record at _dmarc.mail.victim.eu.org: the policy is victim.eu.org's
    p=reject, never the p=none someone published at _dmarc.eu.org."""
    v = run(ip=STRANGER, mail_from="a@attacker.eu.org", msg=message("ceo@mail.victim.eu.org"))
    r = dmarc_of(v)
    assert r.result == "fail" and v.action == "reject"
    assert dict((p[0], p[1]) for p in r.properties)["policy.dmarc"] == "reject"


def test_a_tenant_still_aligns_with_its_own_subdomains():
    v = run(ip=RELAY, mail_from="bounce@mail.victim.eu.org", msg=message("ceo@victim.eu.org"))
    assert dmarc_of(v).result == "pass" and v.action == "accept"


def test_tenants_of_github_io_do_not_align():
    zone = ('evil.github.io. TXT "v=spf1 ip4:198.51.100.142 -all"\n'
            '_dmarc.bank.github.io. TXT "v=DMARC1; p=reject"\n')
    v = run(zone_extra=zone, ip=STRANGER, mail_from="a@evil.github.io",
            msg=message("ceo@bank.github.io"))
    assert dmarc_of(v).result == "fail" and v.action == "reject"


# -- dmarc-report: another tenant is an external destination ------------------------

def test_report_to_another_tenant_of_a_private_suffix_needs_its_authorization():
    # eu.org says psd=y; victim.eu.org publishes its own record, so the tree
    # walk makes it an organization (RFC 9990 compares tree-walk ones)
    zone = ('_dmarc.eu.org. TXT "v=DMARC1; p=none; psd=y"\n'
            '_dmarc.victim.eu.org. TXT "v=DMARC1; p=reject"\n'
            'victim.eu.org._report._dmarc.reports.eu.org. TXT "v=DMARC1"\n')
    resolver = Resolver(DnsOptions(), backend=ZoneBackend(zone))
    try:
        ok, why = authorized(resolver, "victim.eu.org", Destination("r@attacker.eu.org"))
        assert not ok and "victim.eu.org._report._dmarc.attacker.eu.org" in why
        assert authorized(resolver, "victim.eu.org", Destination("r@reports.eu.org")) == \
            (True, "")
        # same organization: no _report._dmarc record needed
        assert authorized(resolver, "mail.victim.eu.org",
                          Destination("dmarc@victim.eu.org")) == (True, "")
    finally:
        resolver.close()


# -- audit: the same organizational domain as the dmarc check ---------------------

_AUDIT_EXTRA = """
sub.victim.eu.org.          MX    10 mx.victim.eu.org.
mx.victim.eu.org.           A     192.0.2.25
_dmarc.victim.eu.org.       TXT   "v=DMARC1; p=reject"
_dmarc.eu.org.              TXT   "v=DMARC1; p=none; psd=y"
sub.corp.internal.          MX    10 mx.corp.internal.
mx.corp.internal.           A     192.0.2.26
_dmarc.corp.internal.       TXT   "v=DMARC1; p=quarantine"
"""


def test_audit_of_a_tenants_subdomain_reads_the_tenants_record():
    report = audit("sub.victim.eu.org", selectors=(), zone=AUDIT_ZONE + _AUDIT_EXTRA)
    find(report, "dmarc", "_dmarc.victim.eu.org", "ok")
    assert find(report, "dmarc", "p")[0].value == "reject"
    # RFC 9989: the tree walk reads _dmarc.eu.org, whose psd=y stops it and
    # leaves victim.eu.org, one label below, as the organizational domain
    assert ("_dmarc.eu.org", "TXT") in report.backend.queries
    assert find(report, "dmarc", "organizational domain")[0].value == "victim.eu.org"


def test_audit_under_an_unknown_tld_takes_the_default_rule():
    """Behaviour change: the audit used to treat a name under an unknown TLD
    as its own organizational domain; like the dmarc check, the last label
    is now the suffix."""
    report = audit("sub.corp.internal", selectors=(), zone=AUDIT_ZONE + _AUDIT_EXTRA)
    record = find(report, "dmarc", "_dmarc.corp.internal", "ok")[0]
    assert record.message.startswith("no record at _dmarc.sub.corp.internal")


# -- the sender spells the names: case, trailing dots -------------------------------

def _case(text, flips):
    return "".join(c.upper() if f else c for c, f in zip(text, flips))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=32, max_size=32), st.booleans(),
       st.sampled_from(["attacker.eu.org", "eu.org", "sub.attacker.eu.org"]))
def test_no_spelling_of_a_tenant_aligns_with_another(flips, dot, envelope):
    """Whatever case and trailing dot the sender uses in From and MAIL FROM,
    a mail from another tenant (or from the suffix itself) does not pass
    victim.eu.org's DMARC."""
    header = _case("victim.eu.org", flips) + ("." if dot else "")
    v = run(ip=STRANGER, mail_from="a@" + _case(envelope, flips[13:]),
            msg=message("ceo@" + header))
    r = dmarc_of(v)
    assert (r.result, v.action) == ("fail", "reject"), (header, envelope, v.results)


# -- domain-name syntax and DMARC record recognition ----------------------------

@pytest.mark.parametrize("name, kwargs, ok", [
    ("example.com", {}, True),
    ("localhost", {}, True),                       # a host name may be one label
    ("localhost", {"multi_label": True}, False),
    ("192.0.2.1", {}, True),                       # digits are LDH
    ("192.0.2.1", {"multi_label": True}, False),   # toplabel all digits
    ("_spf.example.com", {}, False),
    ("_spf.example.com", {"underscore": True}, True),
    ("-a.example.com", {"underscore": True}, False),
    ("a-.example.com", {}, False),
    ("a--b.example.com", {}, True),
    ("a..example.com", {}, False),
    ("example.com.", {}, False),                   # callers strip a root dot
    ("", {}, False),
    ("a" * 63 + ".com", {}, True),
    ("a" * 64 + ".com", {}, False),
    (".".join(["a" * 63] * 4)[:253], {}, True),
    (".".join(["a" * 63] * 4)[:252] + ".b", {}, False),    # 254 characters
    ("exämple.com", {}, False),                    # U-labels are converted first
    ("ex ample.com", {}, False),
])
def test_is_domain(name, kwargs, ok):
    assert orgdomain.is_domain(name, **kwargs) is ok


@given(st.text(alphabet=st.sampled_from("ab9-_.Z\u00e9 "), max_size=80),
       st.booleans(), st.booleans())
def test_is_domain_says_yes_only_to_names_the_dns_can_hold(text, underscore, multi):
    if orgdomain.is_domain(text, underscore=underscore, multi_label=multi):
        labels = text.split(".")
        assert len(text) <= 253 and all(1 <= len(x) <= 63 for x in labels)
        assert all(not x.startswith("-") and not x.endswith("-") for x in labels)
        assert text.isascii() and " " not in text
        assert underscore or "_" not in text
        assert not multi or (len(labels) >= 2 and not labels[-1].isdigit())
        assert all(orgdomain.is_label(x, underscore=underscore) for x in labels)


def _is_domain_by_labels(name, underscore, multi):
    """is_domain as it was, label by label: the whole-name match must agree."""
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if multi and (len(labels) < 2 or labels[-1].isdigit()):
        return False
    return all(orgdomain.is_label(x, underscore=underscore) for x in labels)


@settings(max_examples=500)
@given(st.one_of(st.text(alphabet=st.sampled_from("a9-_.Z\u00e9\n\u0663"), max_size=30),
                 st.lists(st.text(alphabet=st.sampled_from("ab-_"), min_size=0, max_size=66),
                          min_size=1, max_size=5).map(".".join)),
       st.booleans(), st.booleans())
def test_is_domain_matches_the_label_by_label_definition(text, underscore, multi):
    assert (orgdomain.is_domain(text, underscore=underscore, multi_label=multi)
            is _is_domain_by_labels(text, underscore, multi))


@pytest.mark.parametrize("text, ok", [
    ("v=DMARC1", True),
    ("v=DMARC1;", True),
    ("v=DMARC1; p=reject", True),
    ("v = DMARC1 ;p=none", True),
    ("v\t=\tDMARC1\t;p=none", True),
    ("V=DMARC1; p=none", True),        # "v" is an ABNF string: either case
    ("v=dmarc1; p=none", False),       # %s"DMARC1": case-sensitive
    ("v=DMARC10; p=none", False),
    ("v=DMARC1x", False),
    ("v=DMARC1 p=none", False),
    (" v=DMARC1; p=none", False),      # the version tag is first, nothing before it
    ("p=none; v=DMARC1", False),
    ("v=spf1 -all", False),
    ("", False),
])
def test_is_dmarc_record(text, ok):
    assert orgdomain.is_dmarc_record(text) is ok


@pytest.mark.parametrize("text, ok", [
    ("v=DMARC1; p=reject", True), ("V=DMARC1; p=reject", True),
    ("v=DMARC10; p=reject", False), (" v=DMARC1; p=reject", False),
    ("v=DMARC1x; p=reject", False),
])
def test_the_check_the_audit_and_the_reports_read_the_same_records(text, ok):
    """One answer to "is this a DMARC record", wherever it is asked: the
    dmarc check's parser, audit's record reading and dmarc-report's
    external-destination verification."""
    from mailwarden.audit.domain import DomainAudit
    from mailwarden.checks.dmarc import parse_record
    assert (parse_record("example.com", text) is not None) is ok
    zone = ZoneBackend(
        f'_dmarc.example.com. TXT "{text}"\n'
        f'example.com._report._dmarc.reports.example.net. TXT "{text}"\n')
    resolver = Resolver(DnsOptions(), backend=zone)
    try:
        _answer, records = DomainAudit(resolver, "example.com").dmarc_records("example.com")
        assert bool(records) is ok
        assert authorized(resolver, "example.com",
                          Destination("d@reports.example.net"))[0] is ok
    finally:
        resolver.close()


def _regex_literals(path: Path) -> list:
    """Line numbers of string constants that spell a DMARC version test or
    a domain-label pattern, i.e. a second copy of orgdomain's syntax."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if "DMARC1" in text and ("\\s" in text or "[ \\t]" in text or "startswith" in text):
                found.append(node.lineno)
            elif "{0,61}" in text or "{0,62}" in text:
                found.append(node.lineno)
    return found


def test_no_module_but_orgdomain_spells_domain_or_dmarc_record_syntax():
    users = {str(p.relative_to(PACKAGE.parent)): lines
             for p in sorted(PACKAGE.rglob("*.py")) if (lines := _regex_literals(p))}
    assert set(users) == {"mailwarden/orgdomain.py"}, users
