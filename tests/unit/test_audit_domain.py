"""``mailwarden audit DOMAIN`` on the test zone audit_domains.zone: one
well-configured domain, and one domain per fault whose only problems are the
ones that fault should cause."""

from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import pytest

from mailwarden.audit.domain import configured_keys
from mailwarden.audit.findings import EXIT_ERROR, EXIT_FAIL, EXIT_OK, FAIL, OK, WARN
from mailwarden.cli import main

from tests.unit.auditcase import DATA, ZONE, ZONE_FILE, audit, find  # noqa: F401


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The test keys, mode 0600 as the key loader insists (git keeps 0644)."""
    target = tmp_path_factory.mktemp("audit-keys")
    for path in (DATA / "audit").iterdir():
        if path.suffix in (".pem", ".key"):
            shutil.copy(path, target / path.name)
            os.chmod(target / path.name, 0o600)
    return target


# -- the well-configured domain --------------------------------------------------

def test_good_domain_has_no_problem_in_any_area(keys):
    RSA2048, ED25519 = str(keys / "dkim-rsa2048.pem"), str(keys / "dkim-ed25519.key")
    report = audit("good.audit.example", selectors=("ed",),
                   keys=(("s2048", RSA2048), ("ed", ED25519)))
    assert report.problems() == []
    assert report.errors == []
    assert {f.area for f in report.findings} == {
        "mx", "rdns", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt"}
    assert find(report, "mx", "good.audit.example", OK)[0].message.startswith("2 MX hosts")
    for address in ("198.51.100.241", "198.51.100.242", "2001:db8:a0d1::241",
                    "2001:db8:a0d1::242"):
        assert find(report, "rdns", address, OK)
    assert find(report, "spf", "dns lookups", OK)[0].message.startswith("2 of at most 10")
    assert find(report, "spf", "all", OK)[0].message.startswith("-all")
    dkim = [f.message for f in find(report, "dkim", "s2048._domainkey.good.audit.example", OK)]
    assert dkim == ["RSA key of 2048 bits",
                    f"published key matches the local key {RSA2048}"]
    ed = [f.message for f in find(report, "dkim", "ed._domainkey.good.audit.example", OK)]
    assert ed == ["Ed25519 key (RFC 8463)", f"published key matches the local key {ED25519}"]
    assert find(report, "dmarc", "p", OK)[0].value == "reject"
    assert find(report, "dmarc",
                "good.audit.example._report._dmarc.audit-reports.example", OK)
    sts = find(report, "mta-sts", "mta-sts.good.audit.example", OK)[0]
    assert "was not fetched" in sts.message


# -- one domain per fault ----------------------------------------------------------

FAULTS = [
    # MX
    ("onemx", [("mx", WARN, "onemx.audit.example")], "one MX host: no failover"),
    ("nomx", [("mx", FAIL, "nomx.audit.example")], "no MX record and no address"),
    ("nullmix", [("mx", FAIL, "nullmix.audit.example")], "null MX (RFC 7505) next to other"),
    ("mxcname", [("mx", FAIL, "mx-alias.audit.example")],
     "MX target is an alias (CNAME to mx1.audit.example)"),
    ("mxip", [("mx", FAIL, "198.51.100.241")], "MX target is an IP address"),
    ("mxnoaddr", [("mx", FAIL, "mx-none.audit.example")], "MX host has no A or AAAA record"),
    ("mxprivate", [("mx", FAIL, "mx-private.audit.example")],
     "MX host resolves to an address the internet cannot reach"),
    ("mxsameaddr", [("mx", WARN, "mxsameaddr.audit.example")],
     "every MX host has the same address"),
    # reverse DNS
    ("noptr", [("rdns", FAIL, "198.51.100.243")], "no PTR record"),
    ("badptr", [("rdns", FAIL, "198.51.100.244")],
     "PTR elsewhere.audit.example does not resolve back to the address"),
    # SPF
    ("spf11", [("spf", FAIL, "dns lookups")],
     "11 DNS-querying terms through includes: over 10 receivers return permerror"),
    ("spftwo", [("spf", FAIL, "spftwo.audit.example")], "2 SPF records: receivers return permerror"),
    ("spfnone", [("spf", FAIL, "spfnone.audit.example")], "no SPF record"),
    ("spfsyntax", [("spf", FAIL, "spfsyntax.audit.example")],
     "syntax error: ip4:198.51.100.300: '198.51.100.300' is not an IPv4 address"),
    ("spfvoid", [("spf", FAIL, "void lookups")], "3 lookups find no record"),
    ("spfneutral", [("spf", WARN, "all")], "?all: hosts not listed are neutral"),
    ("spfpassall", [("spf", FAIL, "all")], "+all: every host on the internet passes SPF"),
    ("spfnoall", [("spf", WARN, "all")], "no 'all' and no redirect"),
    ("spfptr", [("spf", WARN, "spfptr.audit.example")], "'ptr' mechanism"),
    ("spfinclnone", [("spf", FAIL, "spfinclnone.audit.example")],
     "include:nospf.audit.example: nospf.audit.example publishes no SPF record"),
    ("spfloop", [("spf", FAIL, "_spfloop.audit.example")],
     "include:spfloop.audit.example: a loop back to spfloop.audit.example"),
    ("spfinclopen", [("spf", FAIL, "spfinclopen.audit.example")],
     "include:_spfopen.audit.example: that record ends in +all"),
    # DMARC
    ("dmarcnone", [("dmarc", WARN, "p"), ("dmarc", FAIL, "rua")], "p=none: monitoring only"),
    ("dmarcmissing", [("dmarc", FAIL, "_dmarc.dmarcmissing.audit.example")], "no DMARC record"),
    ("dmarctwo", [("dmarc", FAIL, "_dmarc.dmarctwo.audit.example")],
     "2 DMARC records: receivers ignore them all"),
    ("dmarcsyntax", [("dmarc", FAIL, "_dmarc.dmarcsyntax.audit.example")],
     "syntax error: p=rejected: expected none, quarantine or reject"),
    ("dmarcpct", [("dmarc", WARN, "pct")], "pct=25: removed by RFC 9989 (historic)"),
    ("dmarcri", [("dmarc", WARN, "ri")], "ri=3600: removed by RFC 9989 (historic)"),
    ("dmarctesting", [("dmarc", WARN, "t")],
     "t=y: testing: receivers apply the next weaker policy than reject"),
    ("dmarcsp", [("dmarc", WARN, "sp")], "sp=none is weaker than p=reject"),
    ("dmarcnorua", [("dmarc", WARN, "rua")], "no rua=: you get no aggregate reports"),
    ("dmarcext", [("dmarc", FAIL, "dmarcext.audit.example._report._dmarc.audit-reports.example")],
     "report address at audit-reports.example is not authorised"),
    ("dmarcrualost", [("dmarc", WARN, "nomail.audit.example"),
                      ("tls-rpt", WARN, "nomail.audit.example")],
     "report address domain nomail.audit.example has no MX and no address"),
    # MTA-STS and TLS-RPT
    ("stsnone", [("mta-sts", WARN, "_mta-sts.stsnone.audit.example"),
                 ("tls-rpt", WARN, "_smtp._tls.stsnone.audit.example")], "no MTA-STS record"),
    ("stsbad", [("mta-sts", FAIL, "_mta-sts.stsbad.audit.example")],
     "syntax error: id=not-alnum!: 1 to 32 letters and digits"),
    ("stsnohost", [("mta-sts", FAIL, "mta-sts.stsnohost.audit.example")],
     "the policy host does not resolve"),
    ("tlsrptbad", [("tls-rpt", FAIL, "_smtp._tls.tlsrptbad.audit.example")],
     "syntax error: rua=: 'ftp://audit.example/reports' is not a mailto: or https: URI"),
]


@pytest.mark.parametrize("label,expected,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_gives_exactly_its_finding(label, expected, message):
    report = audit(f"{label}.audit.example")
    assert report.problems() == expected
    area, level, subject = expected[0]
    messages = [f.message for f in find(report, area, subject, level)]
    assert any(m.startswith(message) for m in messages), messages
    assert report.errors == []


def test_dmarc_p_none_without_rua_says_why():
    report = audit("dmarcnone.audit.example")
    rua = find(report, "dmarc", "rua", FAIL)[0]
    assert rua.message.startswith("p=none and no rua=: the record neither protects nor reports")


def test_spf_lookup_count_is_broken_down_per_record():
    report = audit("spf11.audit.example")
    lookups = find(report, "spf", "dns lookups", FAIL)[0]
    assert lookups.value == ("spf11.audit.example 2, _spf11a.audit.example 3, "
                             "_spf11b.audit.example 3, _spf11c.audit.example 3")
    assert find(report, "spf", "syntax", OK)[0].message == \
        "valid (4 records through include/redirect)"


def test_spf_void_lookups_are_named():
    report = audit("spfvoid.audit.example")
    assert find(report, "spf", "void lookups", FAIL)[0].value == (
        "a:gone1.audit.example (gone1.audit.example), a:gone2.audit.example "
        "(gone2.audit.example), mx:gone3.audit.example (gone3.audit.example)")


# -- configurations that are fine -------------------------------------------------

def test_null_mx_is_recognised():
    report = audit("nullmx.audit.example")
    assert report.problems() == []
    assert find(report, "mx", "nullmx.audit.example", OK)[0].message == \
        "null MX (RFC 7505): the domain accepts no mail"
    assert not [f for f in report.findings if f.area == "rdns"]


def test_equal_preferences_are_explained_as_load_sharing():
    report = audit("mxequal.audit.example")
    assert report.problems() == []
    assert find(report, "mx", "preferences", OK)[0].message == \
        "10: mx1.audit.example, mx2.audit.example (primary, load shared at random)"


def test_backup_preference_is_explained():
    report = audit("good.audit.example")
    assert find(report, "mx", "preferences", OK)[0].message == (
        "10: mx1.audit.example (primary); 20: mx2.audit.example (backup); "
        "a backup is tried only when every lower preference fails")


def test_spf_redirect_is_followed_to_its_all():
    report = audit("spfredirect.audit.example")
    assert report.problems() == []
    assert find(report, "spf", "all", OK)[0].message.startswith("-all")
    assert find(report, "spf", "dns lookups", OK)[0].message.startswith("1 of at most 10")


def test_spf_exists_with_macros_is_counted_not_resolved():
    report = audit("spfmacro.audit.example")
    assert report.problems() == []
    assert find(report, "spf", "dns lookups", OK)[0].message.startswith("2 of at most 10")
    assert not any("%{" in name for name, _ in report.backend.queries)


def test_subdomain_inherits_the_organizational_domain_dmarc_record():
    report = audit("sub.audit-org.test")
    assert report.problems() == []
    record = find(report, "dmarc", "_dmarc.audit-org.test", OK)[0]
    assert record.message.startswith("no record at _dmarc.sub.audit-org.test: the "
                                     "organizational domain's record applies")
    assert find(report, "dmarc", "sp", OK)[0].value == "quarantine"


def test_tree_walk_shown_for_the_domain_and_its_parents():
    report = audit("sub.audit-org.test")
    walk = [f.message for f in find(report, "dmarc", "tree walk", OK)]
    assert walk == ["_dmarc.sub.audit-org.test: no single DMARC record",
                    "_dmarc.audit-org.test: a record, psd=u",
                    "_dmarc.test: no single DMARC record"]
    assert find(report, "dmarc", "organizational domain", OK)[0].value == "audit-org.test"


def test_psd_n_and_psd_y_read_as_rfc_9989_says():
    report = audit("x.dept.audit-org.test")
    assert report.problems() == []
    walk = [f.message for f in find(report, "dmarc", "tree walk", OK)]
    assert walk[-1] == "_dmarc.dept.audit-org.test: a record, psd=n: the walk stops here"
    assert find(report, "dmarc", "organizational domain", OK)[0].value == "dept.audit-org.test"
    assert find(report, "dmarc", "psd", OK)[0].value == "n"
    report = audit("tenant.audit-psd.test")
    assert report.problems() == []
    assert find(report, "dmarc", "organizational domain", OK)[0].value == \
        "tenant.audit-psd.test"
    record = find(report, "dmarc", "_dmarc.audit-psd.test", OK)[0]
    assert "the public suffix domain's record (psd=y) applies" in record.message
    assert find(report, "dmarc", "np", OK)[0].value == "reject"


def test_nonexistent_domain_stops_after_mx():
    report = audit("nowhere.audit.example")
    assert [(f.area, f.level, f.subject, f.message) for f in report.findings] == [
        ("mx", FAIL, "nowhere.audit.example", "the domain does not exist (NXDOMAIN)")]


# -- DKIM keys ---------------------------------------------------------------------

DKIM_FAULTS = [
    ("s1024", (), WARN, "RSA key of 1024 bits: weak; use 2048 bits"),
    ("s512", (), FAIL, "RSA key of 512 bits: verifiers must reject keys under 1024 bits"),
    ("revoked", (), FAIL, "key revoked (empty p=)"),
    ("nosuch", (), FAIL, "no key published"),
    ("garbled", (), FAIL, "p= is not an RSA public key"),
    ("sha1", (), FAIL, "h= excludes sha256"),
    ("testing", (), WARN, "testing mode (t=y)"),
    ("k-dsa", (), FAIL, "unknown key type k=dsa"),
    ("s2048", (("s2048", "dkim-rsa2048-other.pem"),), FAIL,
     "published key does not match the local key"),
    ("ed", (("ed", "dkim-rsa2048.pem"),), FAIL, "local key {keys}/dkim-rsa2048.pem is rsa, "
     "the published key is ed25519"),
    ("s2048", (("s2048", "missing.pem"),), FAIL, "local key {keys}/missing.pem: cannot read"),
    ("s2048", (("s2048", "notakey.pem"),), FAIL,
     "local key {keys}/notakey.pem: neither an RSA or Ed25519 private key"),
    ("s2048", (("s2048", "open.pem"),), FAIL,
     "local key {keys}/open.pem: a private key must not be accessible to group or others"),
]


@pytest.mark.parametrize("selector,key_files,level,message", DKIM_FAULTS,
                         ids=[f"{f[0]}-{i}" for i, f in enumerate(DKIM_FAULTS)])
def test_each_dkim_fault_gives_exactly_its_finding(selector, key_files, level, message, keys):
    (keys / "notakey.pem").write_text("hello\n")
    os.chmod(keys / "notakey.pem", 0o600)
    shutil.copy(keys / "dkim-rsa2048.pem", keys / "open.pem")
    os.chmod(keys / "open.pem", 0o644)
    local = [(s, str(keys / name)) for s, name in key_files]
    message = message.format(keys=keys)
    # s2048 as well, so that an Ed25519 key is never the only one
    report = audit("good.audit.example", selectors=("s2048", selector), keys=local)
    subject = f"{selector}._domainkey.good.audit.example"
    assert report.problems() == [("dkim", level, subject)]
    assert any(f.message.startswith(message) for f in find(report, "dkim", subject, level))


def test_pkcs1_and_pkcs8_rsa_keys_both_match(keys):
    for path in ("dkim-rsa2048.pem", "dkim-rsa2048-pkcs1.pem"):
        report = audit("good.audit.example", selectors=(),
                       keys=(("s2048", str(keys / path)),))
        assert report.problems() == []
        assert find(report, "dkim", "s2048._domainkey.good.audit.example", OK)[-1].message == \
            f"published key matches the local key {keys / path}"


def test_ed25519_key_as_pem_matches_the_same_seed(keys):
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    seed = base64.b64decode((keys / "dkim-ed25519.key").read_text())
    pem = ed25519.Ed25519PrivateKey.from_private_bytes(seed).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    path = keys / "ed25519-pkcs8.pem"
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    report = audit("good.audit.example", keys=(("ed", str(path)),))
    assert report.problems() == []
    assert find(report, "dkim", "ed._domainkey.good.audit.example", OK)[-1].message == \
        f"published key matches the local key {path}"


def test_ed25519_only_is_a_warning():
    report = audit("good.audit.example", selectors=("ed",))
    assert report.problems() == [("dkim", WARN, "good.audit.example")]


def test_no_selector_is_a_warning():
    report = audit("good.audit.example", selectors=())
    assert report.problems() == [("dkim", WARN, "good.audit.example")]
    assert find(report, "dkim", "good.audit.example")[0].message.startswith("no selector given")


def test_selectors_and_key_paths_from_a_dkim_sign_config():
    RSA2048, ED25519 = "/k/rsa.pem", "/k/ed.key"
    config = SimpleNamespace(checks={"dkim_sign": SimpleNamespace(keys=(
        f"good.audit.example:s2048:{RSA2048}", f"other.example:x:{ED25519}",
        ("good.audit.example", "ed", ED25519)))})
    assert configured_keys(config, "good.audit.example") == [("s2048", RSA2048),
                                                             ("ed", ED25519)]
    assert configured_keys(SimpleNamespace(checks={}), "good.audit.example") == []


# -- lookups that fail -------------------------------------------------------------

def test_servfail_is_an_error_not_a_finding_about_the_domain():
    report = audit("good.audit.example", zone=ZONE + "\n_dmarc.good.audit.example SERVFAIL\n")
    assert report.problems() == [("dmarc", FAIL, "_dmarc.good.audit.example")]
    assert report.errors == ["_dmarc.good.audit.example/TXT: servfail"]


def test_timeout_inside_an_spf_include_is_an_error():
    report = audit("good.audit.example", zone=ZONE + "\n_spf.audit.example TIMEOUT\n")
    assert ("spf", FAIL, "good.audit.example") in report.problems()
    assert report.errors and report.errors[0].startswith("_spf.audit.example/TXT: timeout")


# -- the command -------------------------------------------------------------------

def run_cli(capsys, *args):
    code = main(["audit", "--zone", str(ZONE_FILE), *args])
    return code, capsys.readouterr().out


def test_cli_table_for_the_good_domain(capsys, keys):
    code, out = run_cli(capsys, "good.audit.example", "--key", f"s2048:{keys}/dkim-rsa2048.pem")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0] == "mailwarden audit good.audit.example"
    assert lines[1].split() == ["AREA", "RESULT", "SUBJECT", "FINDING"]
    assert lines[-1] == "30 ok, 0 warn, 0 fail"
    assert "\033[" not in out          # no colour when not on a terminal


def test_cli_json_and_exit_1_on_a_failing_finding(capsys):
    code, out = run_cli(capsys, "spf11.audit.example", "--selector", "s2048", "--json")
    assert code == EXIT_FAIL
    doc = json.loads(out)
    assert doc["target"] == "mailwarden audit spf11.audit.example"
    failing = [(f["area"], f["subject"]) for f in doc["findings"] if f["level"] == FAIL]
    assert failing == [("spf", "dns lookups")]
    assert doc["summary"]["fail"] == 1 and "errors" not in doc


def test_cli_exit_2_when_lookups_fail(capsys, tmp_path):
    zone = tmp_path / "broken.zone"
    zone.write_text("broken.audit.example SERVFAIL\n")
    code = main(["audit", "--zone", str(zone), "broken.audit.example", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == EXIT_ERROR
    assert "broken.audit.example/MX: servfail" in doc["errors"]


def test_cli_uses_dns_settings_of_a_config_file(capsys, tmp_path):
    # an address nothing listens on: every lookup times out, quickly
    config = tmp_path / "mailwarden.ini"
    config.write_text("[authserv]\nid = mx.example.org\n[dns]\nnameservers = 127.0.0.1\n"
                      "port = 9\ntimeout = 200ms\n")
    code = main(["audit", "-c", str(config), "good.audit.example", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == EXIT_ERROR
    assert any(e.startswith("good.audit.example/MX: ") for e in doc["errors"])


def test_cli_refuses_a_bad_domain(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "not a domain"])
    assert exc.value.code == 2


def test_cli_reads_signing_keys_from_the_dkim_sign_section(capsys, keys, tmp_path):
    config = tmp_path / "mailwarden.ini"
    config.write_text("[authserv]\nid = mx.example.org\n[check.dkim_sign]\n"
                      f"keys = good.audit.example:s2048:{keys}/dkim-rsa2048.pem "
                      f"good.audit.example:ed:{keys}/dkim-ed25519.key "
                      f"other.example:x:{keys}/dkim-rsa1024.pem\n")
    code, out = run_cli(capsys, "-c", str(config), "good.audit.example", "--json")
    assert code == EXIT_OK
    matched = [f["subject"] for f in json.loads(out)["findings"]
               if f["message"].startswith("published key matches the local key")]
    assert matched == ["s2048._domainkey.good.audit.example", "ed._domainkey.good.audit.example"]


# -- ARC sealing keys --------------------------------------------------------------

def arc_findings(report):
    return [(f.level, f.subject, f.message) for f in report.findings if f.area == "arc"]


def test_no_arc_selector_gives_no_arc_finding():
    report = audit("good.audit.example")
    assert arc_findings(report) == []


def test_arc_rsa_key_is_judged_and_matched_like_a_dkim_key(keys):
    RSA2048 = str(keys / "dkim-rsa2048.pem")
    report = audit("good.audit.example", arc_keys=(("arc", RSA2048),))
    assert report.problems() == []
    assert arc_findings(report) == [
        (OK, "arc._domainkey.good.audit.example", "RSA key of 2048 bits"),
        (OK, "arc._domainkey.good.audit.example",
         f"published key matches the local key {RSA2048}")]


ARC_FAULTS = [
    ("arc-ed", (), FAIL, "Ed25519 key: RFC 8617 defines rsa-sha256 alone for ARC"),
    # the DKIM audit's judgement of RSA sizes, unchanged
    ("s1024", (), WARN, "RSA key of 1024 bits: weak; use 2048 bits"),
    ("s512", (), FAIL, "RSA key of 512 bits: verifiers must reject keys under 1024 bits"),
    ("nosuch", (), FAIL, "no key published: ARC seals with this selector cannot be verified"),
    ("revoked", (), FAIL, "key revoked (empty p=): ARC seals with this selector fail"),
    ("garbled", (), FAIL, "p= is not an RSA public key"),
    ("testing", (), WARN, "testing mode (t=y): verifiers may ignore its ARC seals"),
    ("arc", (("arc", "dkim-rsa2048-other.pem"),), FAIL,
     "published key does not match the local key {keys}/dkim-rsa2048-other.pem: "
     "ARC seals will not verify"),
    ("arc", (("arc", "missing.pem"),), FAIL, "local key {keys}/missing.pem: cannot read"),
]


@pytest.mark.parametrize("selector,key_files,level,message", ARC_FAULTS,
                         ids=[f"{f[0]}-{i}" for i, f in enumerate(ARC_FAULTS)])
def test_each_arc_fault_gives_exactly_its_finding(selector, key_files, level, message, keys):
    local = [(s, str(keys / name)) for s, name in key_files]
    report = audit("good.audit.example", arc_selectors=(selector,), arc_keys=local)
    subject = f"{selector}._domainkey.good.audit.example"
    # the DKIM selector s2048 is fine: the fault is the ARC key's alone
    assert report.problems() == [("arc", level, subject)]
    messages = [f.message for f in find(report, "arc", subject, level)]
    assert any(m.startswith(message.format(keys=keys)) for m in messages), messages


def test_an_ed25519_dkim_key_is_fine_where_the_same_record_cannot_seal():
    """One record, two uses: good for DKIM (RFC 8463), refused for ARC."""
    report = audit("good.audit.example", selectors=("s2048", "ed"), arc_selectors=("ed",))
    assert report.problems() == [("arc", FAIL, "ed._domainkey.good.audit.example")]
    assert find(report, "dkim", "ed._domainkey.good.audit.example", OK)
    assert find(report, "arc", "ed._domainkey.good.audit.example", FAIL)[0].value == "k=ed25519"
    # asked once for both
    assert report.backend.queries.count(("ed._domainkey.good.audit.example", "TXT")) == 1


def test_arc_lookup_failure_makes_the_audit_incomplete():
    report = audit("good.audit.example", arc_selectors=("arc",),
                   zone=ZONE + "\narc._domainkey.good.audit.example SERVFAIL\n")
    assert report.problems() == [("arc", FAIL, "arc._domainkey.good.audit.example")]
    assert report.errors == ["arc._domainkey.good.audit.example/TXT: servfail"]


def test_sealing_keys_from_an_arc_config():
    config = SimpleNamespace(checks={
        "dkim_sign": SimpleNamespace(keys=(("good.audit.example", "s2048", "/k/dkim.pem"),)),
        "arc": SimpleNamespace(keys=(("good.audit.example", "arc", "/k/arc.pem"),
                                     ("other.example", "arc", "/k/other.pem")))})
    assert configured_keys(config, "good.audit.example", "arc") == [("arc", "/k/arc.pem")]
    assert configured_keys(config, "good.audit.example") == [("s2048", "/k/dkim.pem")]


def test_cli_arc_selector_fails_an_ed25519_key(capsys):
    code, out = run_cli(capsys, "good.audit.example", "--arc-selector", "arc",
                        "--arc-selector", "arc-ed", "--json")
    assert code == EXIT_FAIL
    doc = json.loads(out)
    arc = [(f["level"], f["subject"]) for f in doc["findings"] if f["area"] == "arc"]
    assert arc == [(OK, "arc._domainkey.good.audit.example"),
                   (FAIL, "arc-ed._domainkey.good.audit.example")]


def test_cli_arc_key_option_matches_the_published_key(capsys, keys):
    code, out = run_cli(capsys, "good.audit.example", "--arc-key",
                        f"arc:{keys}/dkim-rsa2048.pem", "--json")
    assert code == EXIT_OK
    arc = [f["message"] for f in json.loads(out)["findings"] if f["area"] == "arc"]
    assert arc == ["RSA key of 2048 bits",
                   f"published key matches the local key {keys}/dkim-rsa2048.pem"]


def test_cli_reads_sealing_keys_from_the_arc_section(capsys, keys, tmp_path):
    config = tmp_path / "mailwarden.ini"
    config.write_text("[authserv]\nid = mx.example.org\n[check.arc]\n"
                      f"keys = good.audit.example:arc:{keys}/dkim-rsa2048.pem\n")
    code, out = run_cli(capsys, "-c", str(config), "good.audit.example", "--json")
    assert code == EXIT_OK
    arc = [(f["subject"], f["message"]) for f in json.loads(out)["findings"]
           if f["area"] == "arc"]
    assert arc == [("arc._domainkey.good.audit.example", "RSA key of 2048 bits"),
                   ("arc._domainkey.good.audit.example",
                    f"published key matches the local key {keys}/dkim-rsa2048.pem")]


def test_cli_an_ed25519_sealing_key_in_the_config_is_refused_as_at_start_up(capsys, keys,
                                                                            tmp_path):
    config = tmp_path / "mailwarden.ini"
    config.write_text("[authserv]\nid = mx.example.org\n[check.arc]\n"
                      f"keys = good.audit.example:arc-ed:{keys}/dkim-ed25519.key\n")
    code = main(["audit", "--zone", str(ZONE_FILE), "-c", str(config), "good.audit.example"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "[check.arc] keys" in err and "RFC 8617" in err
