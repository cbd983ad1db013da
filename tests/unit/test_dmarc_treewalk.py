"""RFC 9989: the DNS tree walk (mailwarden.orgdomain) and the dmarc check's
policy discovery, alignment and tags on it (zone: tests/data/zones/auth.zone).

The walk is checked against the RFC's own examples (§4.10, §4.10.2,
Appendix B.4) and, with hypothesis, against a reference model written
straight from the steps of §4.10 and the selection rules of §4.10.1 and
§4.10.2, over label counts and psd= placements.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.checks.dmarc import parse_record
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine
from mailwarden.orgdomain import WALK_LIMIT, dmarc_tags, tree_walk, walk_names
from tests import dkimkeys
from tests.unit.authcase import (BASE, RELAY, STRANGER, ZONE, ar_header, dmarc_of, message, of,
                                 props, run)


def lookup_in(published: dict, asked: list = None):
    """A lookup over {name: [TXT, ...]} (names without ``_dmarc.``)."""
    def lookup(qname):
        assert qname.startswith("_dmarc.")
        if asked is not None:
            asked.append(qname)
        return published.get(qname[len("_dmarc."):], [])
    return lookup


# -- the walk: the RFC's examples ---------------------------------------------

def test_walk_names_follow_the_eight_label_shortcut():
    # §4.10: "a.b.c.d.e.f.g.h.i.j.mail.example.com" asks exactly these eight
    assert walk_names("a.b.c.d.e.f.g.h.i.j.mail.example.com") == (
        "a.b.c.d.e.f.g.h.i.j.mail.example.com", "g.h.i.j.mail.example.com",
        "h.i.j.mail.example.com", "i.j.mail.example.com", "j.mail.example.com",
        "mail.example.com", "example.com", "com")
    assert walk_names("a.mail.example.com") == (
        "a.mail.example.com", "mail.example.com", "example.com", "com")
    assert walk_names("Example.COM.") == ("example.com", "com")
    assert walk_names("com") == ("com",)
    eight = "1.2.3.4.5.6.7.example"
    assert walk_names(eight) == (eight,) + tuple(
        ".".join(eight.split(".")[i:]) for i in range(1, 8))


def test_rfc_b41_highest_record_is_the_organizational_domain():
    published = {"example.com": ["v=DMARC1; p=reject"],
                 "signing.example.com": ["v=DMARC1; p=none"]}
    asked: list = []
    author = tree_walk("example.com", lookup_in(published, asked))
    assert asked == ["_dmarc.example.com", "_dmarc.com"]
    assert (author.organizational, author.policy_domain, author.source) == \
        ("example.com", "example.com", "author")
    signing = tree_walk("signing.example.com", lookup_in(published))
    assert signing.organizational == "example.com"
    assert signing.policy_domain == "signing.example.com"


def test_rfc_b42_deep_walk():
    published = {"example.com": ["v=DMARC1; p=reject"]}
    asked: list = []
    walk = tree_walk("a.b.c.d.e.f.g.h.i.j.k.example.com", lookup_in(published, asked))
    assert asked == ["_dmarc.a.b.c.d.e.f.g.h.i.j.k.example.com", "_dmarc.g.h.i.j.k.example.com",
                     "_dmarc.h.i.j.k.example.com", "_dmarc.i.j.k.example.com",
                     "_dmarc.j.k.example.com", "_dmarc.k.example.com", "_dmarc.example.com",
                     "_dmarc.com"]
    assert (walk.organizational, walk.policy_domain, walk.source) == \
        ("example.com", "example.com", "organizational")


def test_rfc_b43_psd_y():
    published = {"bank.example": ["v=DMARC1; p=reject; psd=y"],
                 "giant.bank.example": ["v=DMARC1; p=quarantine"]}
    giant = tree_walk("giant.bank.example", lookup_in(published))
    assert (giant.organizational, giant.policy_domain, giant.stop) == \
        ("giant.bank.example", "giant.bank.example", "bank.example")
    mail = tree_walk("mail.giant.bank.example", lookup_in(published))
    assert (mail.organizational, mail.policy_domain, mail.source) == \
        ("giant.bank.example", "giant.bank.example", "organizational")
    asked: list = []
    mega = tree_walk("mail.mega.bank.example", lookup_in(published, asked))
    assert mega.organizational == "mega.bank.example"
    # no record at the organizational domain: the PSD's record applies
    assert (mega.policy_domain, mega.source, mega.psd) == ("bank.example", "psd", "y")
    assert asked[-1] == "_dmarc.bank.example"          # psd=y stops the walk


def test_rfc_4102_examples():
    both = {"mail.example.com": ["v=DMARC1; p=none"], "example.com": ["v=DMARC1; p=none"]}
    assert tree_walk("a.mail.example.com", lookup_in(both)).organizational == "example.com"
    psd_n = {"mail.example.com": ["v=DMARC1; p=none; psd=n"],
             "example.com": ["v=DMARC1; p=none"]}
    asked: list = []
    walk = tree_walk("a.mail.example.com", lookup_in(psd_n, asked))
    assert walk.organizational == "mail.example.com" and walk.stop == "mail.example.com"
    assert "_dmarc.example.com" not in asked
    only_com = {"com": ["v=DMARC1; p=reject; psd=y"]}
    walk = tree_walk("a.mail.example.com", lookup_in(only_com))
    assert walk.organizational == "example.com"
    assert (walk.policy_domain, walk.source) == ("com", "psd")


def test_walk_discards_several_records_and_other_txt():
    published = {"x.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
                 "example.com": ["v=spf1 -all", "v=DMARC1; p=quarantine"]}
    walk = tree_walk("x.example.com", lookup_in(published))
    assert walk.found == (("example.com", "v=DMARC1; p=quarantine"),)
    assert (walk.policy_domain, walk.source) == ("example.com", "organizational")


def test_walk_psd_y_at_the_start_is_its_own_organizational_domain():
    published = {"gov.example": ["v=DMARC1; p=reject; psd=y"]}
    walk = tree_walk("gov.example", lookup_in(published))
    assert walk.asked == ("gov.example",)
    assert (walk.organizational, walk.policy_domain, walk.source) == \
        ("gov.example", "gov.example", "author")


def test_walk_without_records():
    walk = tree_walk("a.b.example", lookup_in({}))
    assert (walk.organizational, walk.policy_domain, walk.source, walk.policy_record) == \
        ("a.b.example", "", "", "")


def test_walk_stops_at_a_failed_lookup_only_where_it_reads():
    def lookup(qname):
        if qname == "_dmarc.com":
            return None                         # SERVFAIL or timeout
        return {"_dmarc.example.com": ["v=DMARC1; p=reject; psd=n"],
                "_dmarc.own.other.com": ["v=DMARC1; p=quarantine"]}.get(qname, [])
    # psd=n stops the walk before _dmarc.com: its failure is never read
    walk = tree_walk("a.example.com", lookup)
    assert (walk.organizational, walk.failed) == ("example.com", "")
    # no record below the failure: nothing is known
    walk = tree_walk("a.other.com", lookup)
    assert (walk.failed, walk.policy_record, walk.organizational) == ("com", "", "")
    # the domain's own record is known whatever is above it; its
    # organizational domain is not
    walk = tree_walk("own.other.com", lookup)
    assert (walk.failed, walk.policy_domain, walk.source, walk.organizational) == \
        ("com", "own.other.com", "author", "")


def test_dmarc_tags():
    assert dmarc_tags("v=DMARC1; P = reject ;sp=none; p=none; 1x=2; bad; psd=Y") == \
        {"p": "reject", "sp": "none", "psd": "Y"}


# -- the walk against a reference model of the RFC text ------------------------

def reference(domain: str, published: dict) -> tuple:
    """§4.10 steps 1-7, §4.10.2's selection and §4.10.1's preference order,
    written as the text reads: (names asked, organizational domain, policy
    domain or '')."""
    def valid(name):
        records = [t for t in published.get(name, []) if t.startswith("v=DMARC1")]
        return records[0] if len(records) == 1 else None

    def psd_of(text):
        value = dict(part.strip().split("=", 1) for part in text.split(";")[1:]
                     if "=" in part).get("psd", "u")
        return value if value in ("y", "n") else "u"

    labels = domain.split(".")
    asked, found = [domain], []
    record = valid(domain)                                  # steps 1-2
    if record:
        found.append(domain)
    if not (record and psd_of(record) in "yn"):
        x = len(labels)                                     # step 3
        keep = x - 1 if x < 8 else 7                        # step 4
        while keep >= 1:                                    # steps 5-7
            target = ".".join(labels[x - keep:])
            asked.append(target)
            record = valid(target)
            if record:
                found.append(target)
                if psd_of(record) in "yn":
                    break
            keep -= 1
    org = None
    for name in sorted(found, key=lambda n: -n.count(".")):   # longest to shortest
        if psd_of(valid(name)) == "n":
            org = name
            break
        if psd_of(valid(name)) == "y" and name != domain:
            org = ".".join(labels[-(len(name.split(".")) + 1):])
            break
    if org is None:
        org = min(found, key=lambda n: n.count(".")) if found else domain
    if domain in found:
        policy = domain
    elif org in found:
        policy = org
    else:
        policy = next((n for n in found if psd_of(valid(n)) == "y"), "")
    return tuple(asked), org, policy


PUBLISHED = st.sampled_from([
    None, None, None,                                  # most names publish nothing
    ["v=DMARC1; p=reject"], ["v=DMARC1; p=none; psd=u"],
    ["v=DMARC1; p=reject; psd=y"], ["v=DMARC1; p=quarantine; psd=n"],
    ["v=DMARC1; p=none", "v=DMARC1; p=reject; psd=n"],  # two: discarded
    ["v=spf1 -all"], ["v=DMARC1; psd=x"],
])


@given(st.integers(min_value=1, max_value=14).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(PUBLISHED, min_size=n, max_size=n))))
def test_walk_matches_the_reference_model(case):
    n, placements = case
    domain = ".".join(f"l{i}" for i in range(n - 1, 0, -1)) + ("." if n > 1 else "") + "test"
    labels = domain.split(".")
    published = {".".join(labels[i:]): records
                 for i, records in enumerate(placements) if records}
    asked: list = []
    walk = tree_walk(domain, lookup_in(published, asked))
    want_asked, want_org, want_policy = reference(domain, published)
    assert walk.asked == want_asked
    assert asked == [f"_dmarc.{name}" for name in want_asked]
    assert len(walk.asked) <= WALK_LIMIT
    assert walk.organizational == want_org
    assert walk.policy_domain == want_policy
    assert domain == walk.organizational or domain.endswith("." + walk.organizational)


# -- the check on the tree walk ------------------------------------------------

def comment(result) -> str:
    return next(p[2] for p in result.properties if p[0] == "policy.dmarc")


NOT_ALIGNED = "x@spf-none.mw-auth.example"


@pytest.mark.parametrize("author", ["a.b.c.mw-walk.example",
                                    "a.b.c.d.e.f.g.h.mw-walk.example"])
def test_policy_found_by_the_tree_walk(author):
    bad = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message(f"a@{author}"))
    r = dmarc_of(bad)
    assert (r.symbol, bad.action) == ("DMARC_FAIL_REJECT", "reject")
    assert comment(r) == "p=reject from _dmarc.mw-walk.example by tree walk, dis=reject"
    ok = run(mail_from="bounce@mw-walk.example", msg=message(f"a@{author}"))
    assert dmarc_of(ok).result == "pass" and ok.action == "accept"
    assert f"dmarc=pass header.from={author} policy.dmarc=reject (p=reject from " \
           "_dmarc.mw-walk.example by tree walk, dis=none)" in ar_header(ok)


def test_a_record_below_without_psd_does_not_split_the_organization(keys):
    # B.4.1: signing.mw-walk.example has a record, but mw-walk.example has the
    # fewest labels: a signature by d=signing.mw-walk.example aligns
    signed = dkimkeys.sign(message("a@mw-walk.example"), keys["ed"], "ed",
                           "signing.mw-walk.example")
    v = run(zone_extra=keys["zone"] + "\n" + keys["ed"].zone_line("ed", "signing.mw-walk.example"),
            ip=STRANGER, mail_from=NOT_ALIGNED, msg=signed)
    assert of(v, "dkim")[0].result == "pass"
    assert dmarc_of(v).result == "pass"


def test_psd_n_makes_an_organization_of_its_own():
    # with the PSL both names are under mw-walk.example and would align; psd=n
    # at dept.mw-walk.example makes that the organizational domain
    v = run(mail_from="bounce@mw-walk.example", msg=message("a@x.dept.mw-walk.example"))
    r = dmarc_of(v)
    assert (r.result, r.symbol, v.action) == ("fail", "DMARC_FAIL_NONE", "accept")
    assert comment(r) == "p=none from _dmarc.dept.mw-walk.example by tree walk, dis=none"
    ok = run(mail_from="bounce@dept.mw-walk.example", msg=message("a@x.dept.mw-walk.example"))
    assert dmarc_of(ok).result == "pass"


def test_psd_y_tenants_do_not_align_and_np_covers_names_that_do_not_exist():
    # mega.mw-psd.example's SPF covers the stranger; giant is another organization
    v = run(ip=STRANGER, mail_from="bounce@mega.mw-psd.example",
            msg=message("a@giant.mw-psd.example"))
    assert of(v, "spf")[0].result == "pass"
    r = dmarc_of(v)
    assert (r.result, v.action) == ("fail", "accept")
    assert comment(r).startswith("p=none from _dmarc.giant.mw-psd.example")
    ok = run(mail_from="bounce@mail.giant.mw-psd.example", msg=message("a@giant.mw-psd.example"))
    assert dmarc_of(ok).result == "pass"
    # no record at mega.mw-psd.example: the PSD's applies, sp absent -> p
    v = run(ip=RELAY, mail_from=NOT_ALIGNED, msg=message("a@mega.mw-psd.example"))
    assert comment(dmarc_of(v)) == "p=none from _dmarc.mw-psd.example by tree walk, dis=none"
    # a name that does not exist (NXDOMAIN): np=reject
    v = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@ghost.mw-psd.example"))
    r = dmarc_of(v)
    assert (r.symbol, v.action) == ("DMARC_FAIL_REJECT", "reject")
    assert comment(r) == "np=reject from _dmarc.mw-psd.example by tree walk, dis=reject"


def test_t_y_applies_the_next_weaker_policy():
    v = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@mw-test.example"))
    r = dmarc_of(v)
    assert (r.symbol, v.action) == ("DMARC_FAIL_QUARANTINE", "quarantine")
    assert props(r)["policy.dmarc"] == "quarantine"
    assert comment(r) == "p=reject from _dmarc.mw-test.example by tree walk, t=y, " \
                         "dis=quarantine"


def test_pct_0_is_taken_as_t_y_unless_t_is_given():
    v = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@mw-pct.example"))
    r = dmarc_of(v)
    assert (r.symbol, v.action) == ("DMARC_FAIL_QUARANTINE", "quarantine")
    assert comment(r) == "p=reject from _dmarc.mw-pct.example by tree walk, " \
                         "pct=0 taken as t=y, dis=quarantine"
    v = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@mw-pctt.example"))
    r = dmarc_of(v)
    assert (r.symbol, v.action) == ("DMARC_FAIL_REJECT", "reject")
    assert comment(r) == "p=reject from _dmarc.mw-pctt.example by tree walk, " \
                         "pct=0 ignored, t=n present, dis=reject"


def test_invalid_np_without_rua_means_no_dmarc_processing_and_unknown_tags_are_ignored():
    v = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@mw-badnp.example"))
    r = dmarc_of(v)
    assert (r.result, v.action) == ("none", "accept")
    assert "no valid policy and no rua=" in r.reason
    v = run(ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@mw-unknown.example"))
    assert (dmarc_of(v).symbol, v.action) == ("DMARC_FAIL_REJECT", "reject")


@pytest.mark.parametrize("text,expect", [
    ("v=DMARC1; p=reject", dict(p="reject", t="n", psd="u", historic=(), transition="")),
    ("v=DMARC1; p=reject; pct=0", dict(t="y", pct=0, historic=("pct",),
                                       transition="pct=0 taken as t=y")),
    ("v=DMARC1; p=reject; pct=0; t=n", dict(t="n", transition="pct=0 ignored, t=n present")),
    ("v=DMARC1; p=reject; pct=20; rf=afrf; ri=60",
     dict(t="n", pct=20, historic=("pct", "rf", "ri"), transition="pct=20 ignored")),
    ("v=DMARC1; p=reject; pct=100", dict(t="n", transition="")),
    ("v=DMARC1; p=reject; t=Y; psd=N", dict(t="y", psd="n")),
    ("v=DMARC1; p=reject; t=maybe; psd=x", dict(t="n", psd="u")),
    ("v=DMARC1; rua=mailto:d@example.com", dict(p="none", assumed_none="no valid p= and a "
                                                "rua=: taken as p=none")),
    ("v=DMARC1; p=reject; sp=bad; rua=https://r.example/x", dict(p="none", sp=None)),
    ("v=DMARC1; p=reject; np=bad", None),
    ("v=DMARC1; sp=reject", None),
    ("v=DMARC1; rua=not a uri", None),
])
def test_parse_record_rfc9989(text, expect):
    record = parse_record("example.com", text)
    if expect is None:
        assert record is None
        return
    for key, value in expect.items():
        assert getattr(record, key) == value, key


# -- what the reports get, and what the walk costs ------------------------------

class Spy:
    def __init__(self):
        self.rows = []

    def record(self, ctx, *row, facts=None):
        self.rows.append((row, facts))

    def close(self):
        pass


def test_facts_handed_to_the_history_writer():
    cfg = loads(BASE)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    dmarc = next(c for c in engine.checks if c.name == "dmarc")
    dmarc.history = Spy()
    try:
        run(engine=engine, ip=STRANGER, mail_from=NOT_ALIGNED,
            msg=message("a@ghost.mw-psd.example"))
        run(engine=engine, ip=STRANGER, mail_from=NOT_ALIGNED, msg=message("a@mw-pct.example"))
    finally:
        engine.close()
    (_row, ghost), (row, pct) = dmarc.history.rows
    assert (ghost.discovery_method, ghost.record_name, ghost.policy_domain, ghost.source,
            ghost.organizational_domain, ghost.psd, ghost.policy_tag, ghost.requested,
            ghost.testing, ghost.policy) == \
        ("treewalk", "_dmarc.mw-psd.example", "mw-psd.example", "psd", "ghost.mw-psd.example",
         "y", "np", "reject", False, "reject")
    assert ghost.walk == ("ghost.mw-psd.example", "mw-psd.example")
    assert (pct.testing, pct.policy, pct.transition, pct.historic) == \
        (True, "quarantine", "pct=0 taken as t=y", ("pct",))
    assert row[3:5] == ("quarantine", "policy_test_mode")      # disposition, override


BROKEN_PARENT = "_dmarc.example. SERVFAIL\n"


def test_a_failing_parent_does_not_hide_the_authors_own_record():
    # _dmarc.example fails: the From domain's own record still applies, and an
    # identical SPF domain aligns without the organizational domain
    v = run("", BROKEN_PARENT, mail_from="x@mw-reject.example", msg=message("a@mw-reject.example"))
    assert dmarc_of(v).result == "pass"
    v = run("", BROKEN_PARENT, ip=STRANGER, mail_from=NOT_ALIGNED,
            msg=message("a@mw-reject.example"))
    assert (dmarc_of(v).symbol, v.action) == ("DMARC_FAIL_REJECT", "reject")
    # relaxed alignment needs the organizational domain: unknown -> temperror
    v = run("", BROKEN_PARENT, mail_from="x@mail.mw-reject.example",
            msg=message("a@mw-reject.example"))
    assert dmarc_of(v).result == "temperror"
    # no record of its own: the policy depends on the failed lookup
    v = run("", BROKEN_PARENT, ip=STRANGER, mail_from=NOT_ALIGNED,
            msg=message("a@a.b.c.mw-walk.example"))
    r = dmarc_of(v)
    assert r.result == "temperror" and "_dmarc.example" in r.reason


class Counting(ZoneBackend):
    def __init__(self, text):
        super().__init__(text)
        self.asked = []

    def lookup(self, name, rdtype, timeout):
        self.asked.append((name, rdtype))
        return super().lookup(name, rdtype, timeout)


def test_a_deep_from_costs_at_most_eight_policy_lookups():
    author = ".".join(f"x{i}" for i in range(30)) + ".mw-walk.example"
    cfg = loads(BASE)
    backend = Counting(ZONE)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=backend),
                    hostname="mx.test.example")
    try:
        v = run(engine=engine, ip=STRANGER, mail_from=NOT_ALIGNED, msg=message(f"a@{author}"))
    finally:
        engine.close()
    assert dmarc_of(v).symbol == "DMARC_FAIL_REJECT"
    policy = [n for n, t in backend.asked if n.startswith("_dmarc.")]
    assert len(policy) == len(set(policy)) == 8, policy


def test_an_unrelated_identifier_costs_no_walk():
    # MAIL FROM spf-none.mw-auth.example is not under mw-walk.example: it
    # cannot share its organizational domain, so it is not walked
    cfg = loads(BASE)
    backend = Counting(ZONE)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=backend),
                    hostname="mx.test.example")
    try:
        run(engine=engine, ip=STRANGER, mail_from="x@mw-reject.example",
            msg=message("a@mw-walk.example"))
    finally:
        engine.close()
    asked = {n for n, t in backend.asked if n.startswith("_dmarc.")}
    assert asked == {"_dmarc.mw-walk.example", "_dmarc.example"}, asked


def test_history_rows_carry_the_rfc_9989_facts_the_schema_has(tmp_path):
    import sqlite3
    db = tmp_path / "dmarc.sqlite"
    cfg = loads(BASE + f"[check.dmarc]\nhistory = {db}\n")
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example")
    try:
        for author in ("ghost.mw-psd.example", "mw-pct.example", "mw-test.example"):
            run(engine=engine, ip=STRANGER, mail_from=NOT_ALIGNED, msg=message(f"a@{author}"))
    finally:
        engine.close()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM dmarc_message ORDER BY id").fetchall()
    conn.close()
    got = [(r["header_from"], r["policy_domain"], r["discovery_method"], r["policy_tag"],
            r["testing"], r["disposition"], r["override"], r["override_comment"]) for r in rows]
    assert got == [
        ("ghost.mw-psd.example", "mw-psd.example", "treewalk", "np", "n", "reject", "", ""),
        ("mw-pct.example", "mw-pct.example", "treewalk", "p", "n", "quarantine",
         "policy_test_mode", "pct=0 taken as t=y"),
        ("mw-test.example", "mw-test.example", "treewalk", "p", "y", "quarantine",
         "policy_test_mode", ""),
    ]
