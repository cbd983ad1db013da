"""Relay, submission and DKIM signing through the real Postfix, and ``scan`` agreeing.

Clients are presented with XCLIENT; ``LOGIN=alice`` makes Postfix hand the
milter ``{auth_authen}`` = alice, as after a real SMTP AUTH.  Most tests that
accept authenticated mail send without TLS and turn ``require_tls_for_auth``
off; one shows the refusal with it on, and one sends with STARTTLS first
(the milter then sees ``{tls_version}``) with it on.
The DKIM public keys are in ``tests/data/zones/outbound.zone``, served by
the session's unbound; dkimpy verifies what the sink receives against them.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil

import dkim
import pytest

from tests.hostile import RELAY_TRICKS as TRICKS
from tests.harness import ROOT, make_message, smtp_send

OUTSIDE = {"ADDR": "198.51.100.71", "NAME": "[UNAVAILABLE]", "HELO": "outside.elsewhere.example"}


def alice(login="alice"):
    return dict(OUTSIDE, LOGIN=login)


@pytest.fixture(scope="module", autouse=True)
def routing_left_to_the_milter(postfix):
    """Postfix refuses sender-specified routing (``%``, ``!``, ``@`` in the
    local part) from untrusted clients itself (``allow_untrusted_routing =
    no``): allow it here, so that what refuses the tricks is mailwarden."""
    with postfix.settings_changed(allow_untrusted_routing="yes"):
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Keys (mode 0600, as the loader demands) and the login map."""
    base = tmp_path_factory.mktemp("outbound")
    for name in ("outbound-rsa2026.private", "outbound-ed2026.private"):
        shutil.copy(ROOT / "tests/data/keys" / name, base / name)
        os.chmod(base / name, 0o600)
    (base / "logins").write_text("alice: alice@outbound.example\n"
                                 "bob: bob@outbound.example\n")
    return base


def settings(files, tls="no", sign=True):
    out = {
        "relay": {"local_domains": "outbound.example", "trusted_networks": "127.0.0.0/8"},
        "check.submission": {"sender_login_map": str(files / "logins"),
                             "require_tls_for_auth": tls},
    }
    if sign:
        out["check.dkim_sign"] = {
            "keys": f"outbound.example:rsa2026:{files}/outbound-rsa2026.private "
                    f"outbound.example:ed2026:{files}/outbound-ed2026.private"}
    return out


def send(postfix, client, *, mail_from="alice@outbound.example", rcpts, sender=None,
         subject="outbound"):
    data, msgid = make_message(subject, sender=sender or mail_from, to=rcpts[0])
    result = smtp_send(postfix.smtp_port, xclient=client, helo=client["HELO"],
                       mail_from=mail_from, rcpts=rcpts, data=data)
    return result, data, msgid


def scan(mw, data, client, *, mail_from="alice@outbound.example", rcpts):
    return mw.scan(data, client_ip=client["ADDR"], helo=client["HELO"], mail_from=mail_from,
                   rcpts=rcpts, auth=client.get("LOGIN", ""))


# -- relay ---------------------------------------------------------------------

def test_relay_tricks_refused_from_outside_accepted_with_auth(postfix, sink, mailwarden, files):
    mw = mailwarden(settings(files, sign=False))
    # one transaction, every trick a recipient of its own: each is answered alone
    result, data, msgid = send(postfix, OUTSIDE, rcpts=TRICKS)
    rcpt_replies = [(code, text) for command, code, text in result.replies if command == "RCPT"]
    assert len(rcpt_replies) == len(TRICKS)
    for rcpt, (code, text) in zip(TRICKS, rcpt_replies):
        assert code == 554 and text.startswith("5.7.1") and "Relay access denied" in text, \
            f"{rcpt}: {code} {text}\n{mw.log_text()[-2000:]}"
    assert result.accepted_rcpts == [] and result.stage == "rcpt"
    assert mw.log_text().count("relay denied") >= len(TRICKS)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda rcpt: scan(mw, data, OUTSIDE, rcpts=[rcpt]), TRICKS))
    for rcpt, out in zip(TRICKS, outs):
        assert out["action"] == "reject" and out["smtp_reply"].startswith("554 5.7.1"), (rcpt, out)

    result, data, msgid = send(postfix, alice(), rcpts=TRICKS)
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    assert result.accepted_rcpts == TRICKS
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert len(got.rcpts) == len(TRICKS)
    out = scan(mw, data, alice(), rcpts=TRICKS)
    assert out["action"] not in ("reject", "tempfail") and out["smtp_reply"] is None, out
    assert not [r for r in out["results"] if r["check"] == "relay"]


def test_local_recipient_from_outside_accepted(postfix, sink, mailwarden, files):
    mw = mailwarden(settings(files, sign=False))
    result, data, msgid = send(postfix, OUTSIDE, mail_from="carol@elsewhere.example",
                               rcpts=["bob@outbound.example", "victim@elsewhere.example"])
    assert result.accepted, result
    assert result.accepted_rcpts == ["bob@outbound.example"]
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert [r.strip("<>") for r in got.rcpts] == ["bob@outbound.example"]
    out = scan(mw, data, OUTSIDE, mail_from="carol@elsewhere.example",
               rcpts=["bob@outbound.example", "victim@elsewhere.example"])
    assert out["action"] not in ("reject", "tempfail")


# -- submission ----------------------------------------------------------------

def test_sender_login_map(postfix, sink, mailwarden, files):
    mw = mailwarden(settings(files, sign=False))
    rcpts = ["friend@elsewhere.example"]

    result, data, msgid = send(postfix, alice(), rcpts=rcpts)
    assert result.accepted, result
    sink.wait_for_match(msgid.encode(), timeout=30)
    assert scan(mw, data, alice(), rcpts=rcpts)["smtp_reply"] is None

    # another user's address in MAIL FROM
    result, data, _ = send(postfix, alice(), mail_from="bob@outbound.example", rcpts=rcpts)
    assert (result.stage, result.code, result.enhanced) == ("mail", 553, "5.7.1"), result
    out = scan(mw, data, alice(), mail_from="bob@outbound.example", rcpts=rcpts)
    assert out["smtp_reply"].startswith("553 5.7.1"), out

    # MAIL FROM right, header From forged
    result, data, msgid = send(postfix, alice(), rcpts=rcpts, sender="bob@outbound.example")
    assert (result.stage, result.code, result.enhanced) == ("data", 553, "5.7.1"), result
    assert "bob@outbound.example" in result.text
    out = scan(mw, data, alice(), rcpts=rcpts)
    assert out["smtp_reply"].startswith("553 5.7.1 From address <bob@outbound.example>"), out
    postfix.wait_queue_empty(timeout=30)
    assert sink.find(msgid.encode()) == []
    assert "submission refused for login alice" in mw.log_text()


def test_auth_policy_holds_when_main_cf_sends_no_auth_macros(postfix, sink, mailwarden, files):
    """mailwarden asks Postfix for the macros it reads (SETSYMLIST): a main.cf
    whose lists leave out {auth_authen} and the queue id still gives it both."""
    with postfix.settings_changed(milter_mail_macros="{mail_addr}",
                                  milter_end_of_data_macros="{mail_addr}"):
        mw = mailwarden(settings(files, sign=False))
        result, _, _ = send(postfix, alice(), mail_from="bob@outbound.example",
                            rcpts=["friend@elsewhere.example"])
        assert (result.stage, result.code, result.enhanced) == ("mail", 553, "5.7.1"), result
        assert "submission refused for login alice" in mw.log_text()
        result, _, msgid = send(postfix, alice(), rcpts=["friend@elsewhere.example"])
        assert result.accepted, result
        sink.wait_for_match(msgid.encode(), timeout=30)
        verdict = [line for line in mw.log_text().splitlines() if "action=" in line][-1]
        queue_id = result.text.split()[-1]           # "2.0.0 Ok: queued as QUEUEID"
        assert f"{queue_id}: action=" in verdict and "auth=alice" in verdict, verdict


def test_authenticated_submission_without_tls_refused(postfix, sink, mailwarden, files):
    mw = mailwarden(settings(files, tls="yes", sign=False))
    result, data, _ = send(postfix, alice(), rcpts=["friend@elsewhere.example"])
    assert (result.stage, result.code, result.enhanced) == ("mail", 530, "5.7.0"), result
    out = scan(mw, data, alice(), rcpts=["friend@elsewhere.example"])
    assert out["smtp_reply"].startswith("530 5.7.0"), out
    # scan --tls presents a TLS session: accepted
    out = mw.scan(data, client_ip=OUTSIDE["ADDR"], helo=OUTSIDE["HELO"],
                  mail_from="alice@outbound.example", rcpts=["friend@elsewhere.example"],
                  auth="alice", extra_args=["--tls"])
    assert out["smtp_reply"] is None, out


# -- dkim_sign -----------------------------------------------------------------

def _verify(data, dns_server, count):
    d = dkim.DKIM(data)
    out = []
    for i in range(count):
        try:
            out.append(d.verify(idx=i, dnsfunc=dns_server.txt_lookup))
        except dkim.ValidationError:
            out.append(False)
    return out


def test_outbound_signed_rsa_and_ed25519_inbound_unsigned(postfix, sink, mailwarden, files,
                                                          dns_server):
    mw = mailwarden(settings(files))
    result, data, msgid = send(postfix, alice(), rcpts=["friend@elsewhere.example"],
                               sender="Alice <alice@outbound.example>")
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    sigs = got.header_values("DKIM-Signature")
    assert len(sigs) == 2, got.data[:2000]
    assert sorted(s.split("a=", 1)[1].split(";")[0] for s in sigs) == \
        ["ed25519-sha256", "rsa-sha256"]
    assert _verify(got.data, dns_server, 2) == [True, True]
    out = scan(mw, data, alice(), rcpts=["friend@elsewhere.example"])
    assert len([h for h in out["headers_added"] if h[0] == "DKIM-Signature"]) == 2
    assert "dkim_sign: signed" in mw.log_text()

    # inbound: an outside client writing to a local user, even with our From
    result, data, msgid = send(postfix, OUTSIDE, mail_from="carol@elsewhere.example",
                               rcpts=["bob@outbound.example"],
                               sender="alice@outbound.example")
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert got.header_values("DKIM-Signature") == []
    out = scan(mw, data, OUTSIDE, mail_from="carol@elsewhere.example",
               rcpts=["bob@outbound.example"])
    assert not [h for h in out["headers_added"] if h[0] == "DKIM-Signature"]


LOOPBACK = {"ADDR": "127.0.0.1", "NAME": "localhost", "HELO": "localhost"}
UNKNOWN = {"ADDR": "[UNAVAILABLE]", "NAME": "[UNAVAILABLE]", "HELO": "nowhere.example"}
TRUSTED_SIGNING = {"sign_trusted_networks": "127.0.0.1/32, ::1/128",
                   "sign_trusted_domains": "outbound.example"}


def _signatures(sink, msgid):
    return sink.wait_for_match(msgid.encode(), timeout=30).header_values("DKIM-Signature")


def test_unauthenticated_loopback_and_local_submission_signed_only_by_choice(
        postfix, sink, mailwarden, files, dns_server):
    """127/8 is trusted (it relays) but not signed by default: any local
    process reaches smtpd over loopback, and sendmail(1) mail reaches
    non_smtpd_milters as localhost[127.0.0.1].  With sign_trusted_networks
    and sign_trusted_domains both are signed, and nothing else is."""
    rcpts = ["friend@elsewhere.example"]
    mw = mailwarden(settings(files))
    result, data, msgid = send(postfix, LOOPBACK, rcpts=rcpts)
    assert result.accepted, result
    assert _signatures(sink, msgid) == []
    assert not [h for h in scan(mw, data, LOOPBACK, rcpts=rcpts)["headers_added"]
                if h[0] == "DKIM-Signature"]
    local, msgid = make_message("local submission", sender="alice@outbound.example",
                                to=rcpts[0])
    proc = postfix.sendmail("alice@outbound.example", rcpts, local)
    assert proc.returncode == 0, proc.stderr
    assert _signatures(sink, msgid) == []
    log = mw.log_text()
    assert "dkim_sign: not signed for outbound.example (trusted client)" in log
    assert "not in sign_trusted_networks" in log and "dkim_sign: signed" not in log

    # a client whose address Postfix does not know: libmilter itself refuses
    # such a connect (family inet, address "unknown"): never signed
    result, _, _ = send(postfix, UNKNOWN, rcpts=["bob@outbound.example"])
    assert not result.accepted and result.code == 451, result

    overrides = settings(files)
    overrides["check.dkim_sign"].update(TRUSTED_SIGNING)
    mw = mailwarden(overrides)
    result, data, msgid = send(postfix, LOOPBACK, rcpts=rcpts)
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert len(got.header_values("DKIM-Signature")) == 2
    assert _verify(got.data, dns_server, 2) == [True, True]
    assert len([h for h in scan(mw, data, LOOPBACK, rcpts=rcpts)["headers_added"]
                if h[0] == "DKIM-Signature"]) == 2
    local, msgid = make_message("local submission signed", sender="alice@outbound.example",
                                to=rcpts[0])
    proc = postfix.sendmail("alice@outbound.example", rcpts, local)
    assert proc.returncode == 0, proc.stderr
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert _verify(got.data, dns_server, 2) == [True, True]
    # another loopback address is trusted but not listed; a From domain not listed
    other = dict(LOOPBACK, ADDR="127.0.0.2")
    result, _, msgid = send(postfix, other, rcpts=rcpts)
    assert result.accepted and _signatures(sink, msgid) == [], result
    result, _, msgid = send(postfix, LOOPBACK, rcpts=rcpts, mail_from="x@lists.outbound.example",
                            sender="x@lists.outbound.example")
    assert result.accepted and _signatures(sink, msgid) == [], result


def test_authenticated_signed_only_for_its_own_from(postfix, sink, mailwarden, files):
    """The login map decides signing, whatever the policy does with the
    submission check's refusal (here: a dry run lets the message through)."""
    overrides = settings(files)
    overrides["policy"] = {"dry_run": "yes"}
    mw = mailwarden(overrides)
    rcpts = ["friend@elsewhere.example"]
    result, _, msgid = send(postfix, alice(), rcpts=rcpts, sender="bob@outbound.example")
    assert result.accepted, result                     # dry run: not refused
    assert _signatures(sink, msgid) == []
    assert "From address <bob@outbound.example> not owned by user alice" in mw.log_text()
    result, _, msgid = send(postfix, alice(), rcpts=rcpts)
    assert result.accepted and len(_signatures(sink, msgid)) == 2, result


def test_bad_key_stops_start_up(mailwarden, files, tmp_path):
    bad = tmp_path / "open.private"
    shutil.copy(files / "outbound-rsa2026.private", bad)
    os.chmod(bad, 0o644)
    overrides = settings(files)
    overrides["check.dkim_sign"] = {"keys": f"outbound.example:rsa2026:{bad}"}
    with pytest.raises(Exception) as err:
        mailwarden(overrides)
    assert str(bad) in str(err.value)


def test_simple_canonicalization_survives_postfix(postfix, sink, mailwarden, files, dns_server):
    """simple/simple hashes the DKIM-Signature field exactly as written: the
    milter and Postfix must deliver it byte for byte as it was signed."""
    overrides = settings(files)
    overrides["check.dkim_sign"]["canonicalization"] = "simple/simple"
    mailwarden(overrides)
    result, data, msgid = send(postfix, alice(), rcpts=["friend@elsewhere.example"])
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert got.data.startswith(b"DKIM-Signature: v=1; a="), got.data[:200]
    assert _verify(got.data, dns_server, 2) == [True, True]


def test_authenticated_submission_over_tls_accepted(postfix, sink, mailwarden, files):
    """With STARTTLS before XCLIENT the milter sees {tls_version}: require_tls_for_auth passes."""
    mw = mailwarden(settings(files, tls="yes", sign=False))
    data, msgid = make_message("over tls", sender="alice@outbound.example",
                               to="friend@elsewhere.example")
    result = smtp_send(postfix.smtp_port, xclient=alice(), helo=OUTSIDE["HELO"],
                       mail_from="alice@outbound.example", rcpts=["friend@elsewhere.example"],
                       data=data, starttls=True)
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    sink.wait_for_match(msgid.encode(), timeout=30)
