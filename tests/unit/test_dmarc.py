"""dmarc on the fake resolver (tests/data/zones/auth.zone)."""

from __future__ import annotations

import sqlite3

import pytest

from tests import dkimkeys
from tests.unit.authcase import (RELAY, STRANGER, ar_header, dmarc_of, engine_for, message, of,
                                 props, run)


# -- DMARC -------------------------------------------------------------------

def test_dmarc_aligned_spf_only():
    v = run(mail_from="x@mw-reject.example", msg=message("a@mw-reject.example"))
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("pass", "DMARC_PASS")
    assert v.action == "accept"
    assert "dmarc=pass header.from=mw-reject.example policy.dmarc=reject" in ar_header(v)


def test_dmarc_aligned_dkim_only(keys):
    signed = dkimkeys.sign(message("a@mw-reject.example"), keys["ed"], "ed", "mw-reject.example")
    v = run(zone_extra=keys["zone"], ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=signed)
    assert dmarc_of(v).result == "pass"
    assert v.action == "accept"


@pytest.mark.parametrize("domain,action,symbol", [
    ("mw-none.example", "accept", "DMARC_FAIL_NONE"),
    ("mw-quar.example", "quarantine", "DMARC_FAIL_QUARANTINE"),
    ("mw-reject.example", "reject", "DMARC_FAIL_REJECT"),
    ("mw-pct.example", "quarantine", "DMARC_FAIL_QUARANTINE"),     # pct=0: one step milder
    ("mw-nop.example", "accept", "DMARC_FAIL_NONE"),               # no p=, a rua: p=none
])
def test_dmarc_neither_aligned(domain, action, symbol):
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=message(f"a@{domain}"))
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("fail", symbol)
    assert v.action == action
    if action == "reject":
        assert v.reply.line() == \
            "550 5.7.1 Message rejected: it fails the DMARC policy of mw-reject.example"


def test_dmarc_pct_is_no_longer_sampled():
    # RFC 9989 removed pct: p=reject; pct=50 rejects every failing message,
    # and the A-R comment says the tag was ignored
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@mw-pct50.example"))
    assert v.action == "reject"
    (policy,) = [p for p in dmarc_of(v).properties if p[0] == "policy.dmarc"]
    assert policy == ("policy.dmarc", "reject",
                      "p=reject from _dmarc.mw-pct50.example by tree walk, pct=50 ignored, "
                      "dis=reject")


def test_dmarc_subdomain_uses_sp():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@news.mw-sub.example"))
    r = dmarc_of(v)
    assert r.symbol == "DMARC_FAIL_QUARANTINE" and v.action == "quarantine"
    assert props(r)["policy.dmarc"] == "quarantine"


def test_dmarc_nonexistent_subdomain_uses_np():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@ghost.mw-sub.example"))
    assert dmarc_of(v).symbol == "DMARC_FAIL_REJECT" and v.action == "reject"


def test_dmarc_subdomain_with_its_own_record():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@own.mw-sub.example"))
    assert dmarc_of(v).symbol == "DMARC_FAIL_NONE" and v.action == "accept"


def test_dmarc_relaxed_and_strict_spf_alignment():
    relaxed = run(mail_from="x@mail.mw-reject.example", msg=message("a@mw-reject.example"))
    assert dmarc_of(relaxed).result == "pass"
    strict = run(mail_from="x@mail.mw-strict.example", msg=message("a@mw-strict.example"))
    assert dmarc_of(strict).result == "fail" and strict.action == "reject"


def test_dmarc_relaxed_and_strict_dkim_alignment(keys):
    def signed(domain):
        return dkimkeys.sign(message(f"a@{domain.split('.', 1)[1]}"), keys["ed"], "ed", domain)
    relaxed = run(zone_extra=keys["zone"], ip=STRANGER, mail_from="",
                  msg=signed("mail.mw-reject.example"))
    assert dmarc_of(relaxed).result == "pass"
    strict = run(zone_extra=keys["zone"], ip=STRANGER, mail_from="",
                 msg=signed("mail.mw-strict.example"))
    assert dmarc_of(strict).result == "fail"


def test_dmarc_organizational_domain_under_multi_label_suffix():
    # co.uk publishes psd=y: the walk from news.mwshop.co.uk stops there and
    # takes mwshop.co.uk, one label below, as the organizational domain
    ok = run(mail_from="bounce@mwshop.co.uk", msg=message("a@news.mwshop.co.uk"))
    assert dmarc_of(ok).result == "pass"
    bad = run(ip=STRANGER, mail_from="bounce@mwshop.co.uk", msg=message("a@news.mwshop.co.uk"))
    assert dmarc_of(bad).result == "fail" and bad.action == "reject"   # p=reject of mwshop.co.uk


def test_dmarc_several_records_mean_none():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=message("a@mw-two.example"))
    assert dmarc_of(v).result == "none" and v.action == "accept"


def test_dmarc_no_record_is_none():
    v = run(ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
            msg=message("a@spf-none.mw-auth.example"))
    assert dmarc_of(v).result == "none"


def test_dmarc_dns_timeout_tempfails_or_accepts_per_policy():
    args = dict(mail_from="x@mw-dnsfail.example", msg=message("a@mw-dnsfail.example"))
    v = run(**args)
    assert dmarc_of(v).result == "temperror"
    assert v.action == "tempfail" and v.reply.code == 451
    v = run("[check.dmarc]\ntempfail_on_error = no\n", **args)
    assert dmarc_of(v).result == "temperror" and v.action == "accept"
    v = run("[policy]\ntemperror_action = accept\n", **args)
    assert v.action == "accept"


def test_dmarc_temperror_of_an_aligned_identity_is_not_a_fail():
    signed = dkimkeys.sign(message("a@mw-reject.example"), dkimkeys.ed25519_key(), "slow",
                           "mw-reject.example")
    v = run("[policy]\ntemperror_action = accept\n", "slow._domainkey.mw-reject.example. SERVFAIL",
            ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=signed)
    assert of(v, "dkim")[0].result == "temperror"
    assert dmarc_of(v).result == "temperror"
    assert v.action == "accept"


def test_dmarc_two_from_fields_evaluate_both_domains():
    # SPF aligns with mw-reject.example (pass); mw-none.example fails (p=none):
    # the strictest outcome is the verdict, naming both domains
    msg = message("a@mw-reject.example", extra=b"From: b@mw-none.example\r\n")
    r = dmarc_of(run(mail_from="x@mw-reject.example", msg=msg))
    assert (r.result, r.symbol) == ("fail", "DMARC_FAIL_NONE")
    assert props(r)["header.from"] == "mw-none.example"
    assert "2 From header fields" in r.reason
    assert "mw-reject.example=pass, mw-none.example=fail" in r.reason


@pytest.mark.parametrize("sender", ["undisclosed-recipients:;", "nobody", "a@[192.0.2.1]"])
def test_dmarc_from_without_domain_refused_unless_relaxed(sender):
    msg = message().replace(b"From: Alice <a@mw-dkim.example>", b"From: " + sender.encode())
    v = run(mail_from="x@mw-reject.example", msg=msg)
    r = dmarc_of(v)
    assert (r.result, r.symbol) == ("permerror", "DMARC_BAD_FROM")
    assert v.action == "reject" and v.reply.line().startswith("550 5.7.1"), v.reply
    v = run("[check.dmarc]\nreject_bad_from = no\n", mail_from="x@mw-reject.example", msg=msg)
    assert dmarc_of(v).result == "permerror" and v.action != "reject"


def test_dmarc_missing_from_is_permerror():
    msg = b"To: bob@rcpt.example\r\nSubject: no from\r\n\r\nhi\r\n"
    assert dmarc_of(run(msg=msg)).result == "permerror"


@pytest.mark.parametrize("setting,action", [("quarantine", "quarantine"), ("score", "accept")])
def test_dmarc_enforcement_is_the_admins_choice(setting, action):
    v = run(f"[check.dmarc]\non_reject = {setting}\n[policy]\nreject_score = 100\n"
            "quarantine_score = 100\nadd_header_score = 50\n",
            ip=STRANGER, mail_from="x@spf-none.mw-auth.example", msg=message("a@mw-reject.example"))
    assert dmarc_of(v).symbol == "DMARC_FAIL_REJECT"
    assert v.action == action


def test_dmarc_never_rejects_authenticated_or_trusted_clients():
    for kw in ({"auth_user": "alice", "tls_version": "TLSv1.3"}, {"ip": "127.0.0.1"}):
        v = run(mail_from="x@spf-none.mw-auth.example", msg=message("a@mw-reject.example"),
                **{"ip": STRANGER, **kw})
        assert of(v, "dmarc") == [] and v.action == "accept"


def test_dmarc_history_records_what_reports_need(tmp_path, keys):
    db = tmp_path / "dmarc.sqlite"
    engine = engine_for(f"[check.dmarc]\nhistory = {db}\n", keys["zone"])
    signed = dkimkeys.sign(message("a@mw-reject.example"), keys["ed"], "ed", "mw-reject.example")
    run(engine=engine, mail_from="x@mw-reject.example", msg=signed)
    run(engine=engine, ip=STRANGER, mail_from="x@spf-none.mw-auth.example",
        msg=message("a@mw-reject.example"))
    run(engine=engine, msg=message("a@spf-none.mw-auth.example"))     # no policy: not recorded
    engine.close()
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM dmarc_message ORDER BY id").fetchall()
    assert [(r["header_from"], r["result"], r["disposition"], r["source_ip"]) for r in rows] == [
        ("mw-reject.example", "pass", "none", RELAY),
        ("mw-reject.example", "fail", "reject", STRANGER)]
    first = rows[0]
    assert (first["policy_domain"], first["p"], first["pct"], first["adkim"], first["aspf"],
            first["rua"], first["envelope_from"], first["spf_aligned"], first["dkim_aligned"]) == \
        ("mw-reject.example", "reject", 100, "r", "r", "mailto:dmarc@mw-reject.example",
         "mw-reject.example", 1, 1)
    assert [tuple(x) for x in conn.execute(
        "SELECT domain, selector, result FROM dmarc_dkim WHERE message_id = ?",
        (first["id"],))] == [("mw-reject.example", "ed", "pass")]
    assert [tuple(x) for x in conn.execute(
        "SELECT domain, scope, result FROM dmarc_spf WHERE message_id = ?",
        (rows[1]["id"],))] == [("spf-none.mw-auth.example", "mfrom", "none")]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
