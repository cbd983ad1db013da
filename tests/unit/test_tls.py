"""tls: the session's TLS in Authentication-Results and the score, and
require_from enforced, through the engine, the adapter and ``scan``."""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import Milter
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden import cli
from mailwarden.authresults import HEADER
from mailwarden.checks import registry
from mailwarden.config import ConfigError, loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from mailwarden.metrics import TLS_LABELS, Metrics, tls_label
from mailwarden.milter import MailwardenMilter
from mailwarden.model import Stage, tls_name, tls_rank

from tests.milter.miltertest import Session
from .authcase import strict_parse

ONLY_TLS = {"tls": registry()["tls"]}
BASE = "[authserv]\nid = mx.test.example\n"
OUTSIDE = "198.51.100.7"           # not in [relay] trusted_networks
MESSAGE = b"From: a@sender.example\r\nSubject: test\r\n\r\nHello.\r\n"
TLS13 = {"tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_256_GCM_SHA384", "tls_bits": "256"}
REQUIRE = "[check.tls]\nrequire_from = bank.example, .partner.example\n"


def engine_for(ini: str = "") -> Engine:
    cfg = loads(BASE + ini, registry=ONLY_TLS)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend("")),
                  hostname="mx.test.example", registry=ONLY_TLS)


def run(ini: str = "", *, ip: str = OUTSIDE, mail_from: str = "a@sender.example",
        message: bytes = MESSAGE, **kw):
    engine = engine_for(ini)
    try:
        verdict, _, msg = run_offline(engine, client_ip=ip, mail_from=mail_from,
                                      rcpts=["b@test.example"], message=message, **kw)
        if msg is not None:
            msg.close()
        return verdict
    finally:
        engine.close()


def tls_results(verdict) -> list:
    return [r for r in verdict.results if r.check == "tls"]


def ar(verdict) -> str:
    return dict(verdict.headers_added)[HEADER]


def x_tls(verdict) -> list:
    """(result, {property: value}) of each x-tls entry, read back strictly."""
    header = strict_parse(ar(verdict))
    return [(r.result, {f"{p.type}.{p.name}": p.value for p in r.properties})
            for r in header.results if r.method == "x-tls"]


# -- what the session was ------------------------------------------------------

def test_tls13_is_recorded_as_authentication_milter_writes_it():
    verdict = run(**TLS13)
    assert ar(verdict) == ("mx.test.example;\n\tx-tls=pass smtp.version=TLSv1.3 "
                           "smtp.cipher=TLS_AES_256_GCM_SHA384 smtp.bits=256")
    (result,) = tls_results(verdict)
    assert (result.result, result.symbol, result.stage) == ("pass", "TLS_OK", Stage.MAIL)
    assert verdict.action == "accept" and verdict.score == 0.0


def test_cleartext_is_x_tls_none_and_scores_tls_none():
    verdict = run()
    assert ar(verdict) == "mx.test.example;\n\tx-tls=none"
    assert [r.symbol for r in tls_results(verdict)] == ["TLS_NONE"]
    assert verdict.score == 1.0
    status = dict(verdict.headers_added)["X-Mailwarden-Status"]
    assert "TLS_NONE(1.00)" in status


@pytest.mark.parametrize("version,written", [
    ("TLSv1", "TLSv1"), ("TLSv1.0", "TLSv1"), ("TLSv1.1", "TLSv1.1"), ("SSLv3", "SSLv3"),
    ("SSLv2", "SSLv2"),
])
def test_versions_before_tls12_are_old(version, written):
    verdict = run(tls_version=version, tls_cipher="AES128-SHA", tls_bits="128")
    assert x_tls(verdict) == [("pass", {"smtp.version": written, "smtp.cipher": "AES128-SHA",
                                        "smtp.bits": "128"})]
    assert [r.symbol for r in tls_results(verdict)] == ["TLS_OLD"]
    assert verdict.score == 0.5


def test_tls12_is_ok_and_a_missing_cipher_or_bits_is_left_out():
    verdict = run(tls_version="TLSv1.2")
    assert x_tls(verdict) == [("pass", {"smtp.version": "TLSv1.2"})]
    assert [r.symbol for r in tls_results(verdict)] == ["TLS_OK"]


def test_a_version_nobody_names_is_written_as_given_and_scored_old():
    verdict = run(tls_version="TLSv9.x", tls_cipher="X", tls_bits="128/128")
    # bits that are not a number are left out; the version is data
    assert x_tls(verdict) == [("pass", {"smtp.version": "TLSv9.x", "smtp.cipher": "X"})]
    assert [r.symbol for r in tls_results(verdict)] == ["TLS_OLD"]


@pytest.mark.parametrize("kw,ip", [({"auth_user": "alice", **TLS13}, OUTSIDE),
                                   ({"auth_user": "alice"}, OUTSIDE),
                                   ({}, "127.0.0.1"),
                                   ({"tls_version": "TLSv1"}, "127.0.0.1")])
def test_authenticated_and_trusted_clients_are_recorded_but_not_scored(kw, ip):
    verdict = run(ip=ip, **kw)
    (result,) = tls_results(verdict)
    assert result.symbol is None and verdict.score == 0.0
    assert x_tls(verdict)[0][0] == ("pass" if kw.get("tls_version") else "none")


def test_whitespace_for_a_version_is_cleartext():
    verdict = run(tls_version="  ")
    assert x_tls(verdict) == [("none", {})]


# -- what is required ----------------------------------------------------------

def test_a_listed_sender_in_cleartext_is_tempfailed_at_mail_from():
    verdict = run(REQUIRE, mail_from="alerts@bank.example")
    assert verdict.stage is Stage.MAIL and verdict.action == "tempfail"
    assert verdict.reply.line() == \
        "451 4.7.0 TLS TLSv1.2 or later required for mail from bank.example"
    refused = [r for r in tls_results(verdict) if r.reply is not None]
    assert [(r.symbol, r.method) for r in refused] == [("TLS_REQUIRED", None)]
    assert "this session is cleartext" in refused[0].reason


def test_a_listed_sender_over_tls_is_accepted():
    verdict = run(REQUIRE, mail_from="alerts@bank.example", **TLS13)
    assert verdict.action == "accept", verdict.reply
    assert x_tls(verdict)[0][0] == "pass"


def test_reject_makes_it_5xx():
    verdict = run(REQUIRE + "require_action = reject\n", mail_from="alerts@bank.example")
    assert verdict.action == "reject"
    assert verdict.reply.line().startswith("550 5.7.0 TLS TLSv1.2 or later required")


@pytest.mark.parametrize("version,minimum,refused", [
    ("TLSv1.1", "TLSv1.2", True), ("TLSv1", "TLSv1.2", True), ("SSLv3", "TLSv1", True),
    ("TLSv1.2", "TLSv1.2", False), ("TLSv1.2", "TLSv1.3", True), ("TLSv1.3", "TLSv1.3", False),
    ("TLSv1", "TLSv1.0", False), ("TLSv9.x", "TLSv1", True), ("garbage", "TLSv1", True),
])
def test_min_version(version, minimum, refused):
    verdict = run(REQUIRE + f"min_version = {minimum}\n", mail_from="a@bank.example",
                  tls_version=version)
    assert (verdict.action == "tempfail") is refused, verdict.reply
    if refused:
        assert verdict.stage is Stage.MAIL


@pytest.mark.parametrize("sender,refused", [
    ("a@bank.example", True), ("a@BANK.Example.", True), ("a@mail.bank.example", False),
    ("a@partner.example", False), ("a@mx.partner.example", True),
    ("a@a.b.partner.example", True), ("a@notbank.example", False), ("a@bank.example.evil", False),
    ("", False),
])
def test_which_senders_match(sender, refused):
    """bank.example is that domain alone; .partner.example its subdomains alone."""
    verdict = run(REQUIRE, mail_from=sender)
    assert (verdict.action == "tempfail") is refused, (sender, verdict.reply)


def test_an_unreadable_sender_is_read_after_its_last_at():
    verdict = run(REQUIRE, mail_from='"unterminated@bank.example')
    assert verdict.action == "tempfail" and verdict.stage is Stage.MAIL


@pytest.mark.parametrize("from_header", [
    b"From: Bank <alerts@bank.example>",
    b"From: a@sender.example, alerts@bank.example",
    b"From: friends: a@sender.example, b@mx.partner.example;",
    b"From: a@sender.example\r\nFrom: alerts@BANK.EXAMPLE",
    b"From: \"unterminated <alerts@bank.example>",
])
def test_a_listed_author_in_cleartext_is_tempfailed_at_end_of_data(from_header):
    message = from_header + b"\r\nSubject: x\r\n\r\nbody\r\n"
    verdict = run(REQUIRE, mail_from="bounces@esp.example", message=message)
    assert verdict.stage is Stage.EOM and verdict.action == "tempfail", verdict.reply
    assert verdict.reply.code == 451 and verdict.reply.xcode == "4.7.0"
    # and over TLS it is accepted
    verdict = run(REQUIRE, mail_from="bounces@esp.example", message=message, **TLS13)
    assert verdict.action == "accept", verdict.reply


def test_a_from_with_more_domains_than_are_read_is_held_to_it():
    authors = ", ".join(f"a@d{i}.example" for i in range(80))
    message = f"From: {authors}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    verdict = run(REQUIRE, message=message)
    assert verdict.action == "tempfail" and verdict.stage is Stage.EOM
    assert "too many domains" in verdict.reply.text
    assert run("", message=message).action == "accept"       # nothing required: nothing held


def test_the_null_sender_is_judged_by_its_from():
    message = b"From: MAILER-DAEMON@bank.example\r\nSubject: x\r\n\r\nbody\r\n"
    verdict = run(REQUIRE, mail_from="", message=message)
    assert verdict.action == "tempfail" and verdict.stage is Stage.EOM


@pytest.mark.parametrize("kw,ip", [({"auth_user": "alice"}, OUTSIDE), ({}, "127.0.0.1")])
def test_authenticated_and_trusted_clients_are_not_held_to_it(kw, ip):
    message = b"From: alerts@bank.example\r\nSubject: x\r\n\r\nbody\r\n"
    verdict = run(REQUIRE, ip=ip, mail_from="alerts@bank.example", message=message, **kw)
    assert verdict.action == "accept", verdict.reply


def test_nothing_listed_nothing_refused():
    verdict = run(mail_from="alerts@bank.example")
    assert verdict.action == "accept"


def test_it_fails_closed_only_when_it_enforces_something(monkeypatch):
    from mailwarden.checks.tls import TlsCheck

    def boom(self, ctx):
        raise RuntimeError("broken")
    monkeypatch.setattr(TlsCheck, "on_mail", boom)
    # a temperror that may not tempfail: with domains to enforce, it still does
    verdict = run(REQUIRE + "tempfail_on_error = no\n")
    assert verdict.action == "tempfail" and verdict.reply.code == 451
    verdict = run("[check.tls]\ntempfail_on_error = no\n")
    assert verdict.action == "accept"
    assert [r.symbol for r in tls_results(verdict)] == ["TLS_ERROR"]


# -- configuration -------------------------------------------------------------

def test_require_from_file(tmp_path):
    listing = tmp_path / "tls-domains.txt"
    listing.write_text("# partners that must use TLS\nbank.example\n.Partner.Example.\n")
    ini = f"[check.tls]\nrequire_from_file = {listing}\n"
    assert run(ini, mail_from="a@bank.example").action == "tempfail"
    assert run(ini, mail_from="a@x.partner.example").action == "tempfail"
    assert run(ini, mail_from="a@sender.example").action == "accept"


def config_error(text: str, path="t.ini") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(BASE + text, path)
    return info.value


@pytest.mark.parametrize("text,key,words", [
    ("[check.tls]\nmin_version = TLSv1.4\n", "min_version", "expected one of TLSv1"),
    ("[check.tls]\nmin_version = SSLv3\n", "min_version", "expected one of"),
    ("[check.tls]\nmin_version = 1.2\n", "min_version", "expected one of"),
    ("[check.tls]\nrequire_action = bounce\n", "require_action", "tempfail, reject"),
    ("[check.tls]\nrequire_from = bank.example, bad..example\n", "require_from", "bad domain"),
    ("[check.tls]\nrequire_from = [192.0.2.1]\n", "require_from", "address literal"),
    ("[check.tls]\nrequire_fromm = bank.example\n", "require_fromm", "unknown key"),
    ("[scores]\nTLS_NONEE = 1\n", "TLS_NONEE", "unknown symbol"),
])
def test_bad_values_are_refused_with_file_line_and_key(text, key, words):
    err = config_error(text)
    assert err.line == 4 and err.key == key and words in err.message, str(err)
    assert str(err).startswith("t.ini:4: [")


def test_a_bad_list_file_line_is_located_in_the_file(tmp_path):
    listing = tmp_path / "tls-domains.txt"
    listing.write_text("bank.example\n\nnot a domain!\n")
    err = config_error(f"[check.tls]\nrequire_from_file = {listing}\n")
    assert (err.path, err.line) == (str(listing), 3)
    err = config_error(f"[check.tls]\nrequire_from_file = {tmp_path / 'missing'}\n")
    assert (err.line, err.key) == (4, "require_from_file") and "cannot read" in err.message


def test_check_config_refuses_a_bad_value(tmp_path, capsys):
    conf = tmp_path / "m.ini"
    conf.write_text(BASE + "[check.tls]\nrequire_from = bank.example\nmin_version = TLSv2\n")
    with pytest.raises(SystemExit) as info:
        cli.main(["check-config", "-c", str(conf)])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert f"{conf}:5: [check.tls] min_version:" in err


def test_the_defaults():
    options = loads(BASE).check("tls")
    assert options.enabled and options.min_version == "TLSv1.2"
    assert options.require_action == "tempfail" and not options.required
    scores = loads(BASE).scores
    assert (scores["TLS_OK"], scores["TLS_OLD"], scores["TLS_NONE"], scores["TLS_REQUIRED"]) \
        == (0.0, 0.5, 1.0, 0.0)


# -- versions and metrics labels ---------------------------------------------------

def test_version_names():
    assert [tls_name(v) for v in ("TLSv1.3", "tlsv1.2", "TLSv1.0", "TLS1.1", "SSLv3", " TLSv1 ")] \
        == ["TLSv1.3", "TLSv1.2", "TLSv1", "TLSv1.1", "SSLv3", "TLSv1"]
    assert [tls_name(v) for v in ("TLSv1.4", "DTLSv1", "SSLv3.1", "", "ſSLv3", "TLSv1.3" * 3)] \
        == ["", "", "", "", "", ""]
    assert tls_rank("SSLv3") < tls_rank("TLSv1") < tls_rank("TLSv1.1") < tls_rank("TLSv1.3")


@given(st.text(max_size=40))
def test_metric_labels_stay_bounded(text):
    assert tls_label(text) in TLS_LABELS


def test_metrics_count_transactions_by_version():
    metrics = Metrics()
    for version in ("", "TLSv1.3", "TLSv1.3", "TLSv1.0", "TLSv7 \x00 junk"):
        metrics.tls_message(version)
    page = metrics.page().decode()
    assert 'mailwarden_tls_messages_total{version="TLSv1.3"} 2.0' in page
    assert 'mailwarden_tls_messages_total{version="TLSv1"} 1.0' in page
    assert 'mailwarden_tls_messages_total{version="none"} 1.0' in page
    assert 'mailwarden_tls_messages_total{version="other"} 1.0' in page


# -- through the adapter: the macros as the MTA passes them ---------------------------

def adapter_session(macros: dict, ini: str = "", metrics=None):
    engine = engine_for(ini)
    session = Session(engine, {"i": "4QTLS", "j": "mx.test.example", **macros})
    if metrics is not None:
        Milter.factory = lambda: MailwardenMilter(engine, metrics=metrics)
    return engine, session


def drive(session, mail_from="a@sender.example", message=MESSAGE) -> int:
    assert session.connect(OUTSIDE, "mail.sender.example") == Milter.CONTINUE
    assert session.helo("mail.sender.example") == Milter.CONTINUE
    rc = session.mail(mail_from)
    if rc != Milter.CONTINUE:
        return rc
    assert session.rcpt("b@test.example") == Milter.CONTINUE
    return session.data(message)


def added_ar(session) -> str:
    (value,) = [v for n, v, _ in session.ctx.added if n == HEADER]
    return value.strip()


def test_the_adapter_reads_every_tls_macro(caplog):
    macros = {"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_128_GCM_SHA256",
              "{cipher_bits}": "128", "{cert_subject}": "client.sender.example",
              "{cert_issuer}": "Test CA", "{verify}": "OK"}
    metrics = Metrics()
    engine, session = adapter_session(macros, metrics=metrics)
    try:
        with caplog.at_level(logging.INFO, logger="mailwarden"):
            assert drive(session) == Milter.ACCEPT
        session.close()
    finally:
        engine.close()
    assert added_ar(session) == ("mx.test.example;\n\tx-tls=pass smtp.version=TLSv1.3 "
                                 "smtp.cipher=TLS_AES_128_GCM_SHA256 smtp.bits=128")
    assert any("client certificate subject=client.sender.example issuer=Test CA verify=OK"
               in r.getMessage() for r in caplog.records)
    assert 'mailwarden_tls_messages_total{version="TLSv1.3"} 1.0' in metrics.page().decode()


def test_no_certificate_is_not_logged(caplog):
    # Sendmail's {verify} for a TLS session without a client certificate
    macros = {"{tls_version}": "TLSv1.3", "{cipher}": "TLS_AES_256_GCM_SHA384", "{verify}": "NO"}
    engine, session = adapter_session(macros)
    try:
        with caplog.at_level(logging.INFO, logger="mailwarden"):
            assert drive(session) == Milter.ACCEPT
        session.close()
    finally:
        engine.close()
    assert not [r for r in caplog.records if "client certificate" in r.getMessage()]
    caplog.clear()
    engine, session = adapter_session({**macros, "{verify}": "FAIL"})
    try:
        with caplog.at_level(logging.INFO, logger="mailwarden"):
            assert drive(session) == Milter.ACCEPT
        session.close()
    finally:
        engine.close()
    assert [r for r in caplog.records if "verify=FAIL" in r.getMessage()]


def test_the_adapter_refuses_a_listed_sender_in_cleartext():
    engine, session = adapter_session({}, REQUIRE)
    try:
        assert drive(session, mail_from="alerts@bank.example") == Milter.TEMPFAIL
        session.close()
    finally:
        engine.close()
    assert session.reply[:2] == ("451", "4.7.0")


_HOSTILE = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["TLSv1.3; dkim=pass header.d=bank.example", "TLSv1.3\r\nX-Evil: 1",
                     '"', "(", "\\", "TLSv1.3 (comment", "=?utf-8?b?QQ==?=", "\x1b[31m",
                     "x" * 5000, "TLS_AES_256_GCM_SHA384\x00", "256 ; spf=pass"]))


@given(version=_HOSTILE, cipher=_HOSTILE, bits=_HOSTILE, subject=_HOSTILE, issuer=_HOSTILE,
       verify=_HOSTILE)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_macro_values_are_data(caplog, version, cipher, bits, subject, issuer, verify):
    """Whatever the MTA passes, the message gets a verdict, the header reads
    back strictly as one x-tls result with only our three properties, the
    bits only a number, and the log lines carry no control characters."""
    macros = {"{tls_version}": version, "{cipher}": cipher, "{cipher_bits}": bits,
              "{cert_subject}": subject, "{cert_issuer}": issuer, "{verify}": verify}
    macros = {k: v for k, v in macros.items() if v}      # libmilter gives no empty macro
    caplog.clear()
    engine, session = adapter_session(macros, REQUIRE)
    try:
        with caplog.at_level(logging.DEBUG, logger="mailwarden"):
            rc = drive(session)
        session.close()
    finally:
        engine.close()
    assert rc == Milter.ACCEPT          # neither sender nor author is listed
    header = strict_parse(added_ar(session))
    entries = [(r.method, r.result) for r in header.results]
    assert entries == [("x-tls", "pass" if version.strip() else "none")]
    props = {f"{p.type}.{p.name}": p.value for p in header.results[0].properties}
    assert set(props) <= {"smtp.version", "smtp.cipher", "smtp.bits"}
    if "smtp.bits" in props:
        assert re.fullmatch(r"[0-9]{1,5}", props["smtp.bits"])
    for record in caplog.records:
        assert not re.search(r"[\x00-\x1f\x7f]", record.getMessage()), record.getMessage()


# -- scan: the same verdict offline ----------------------------------------------------

def scan(tmp_path, capsys, *extra, ini="", mail_from="a@sender.example", zone_text="",
         message=MESSAGE):
    conf = tmp_path / "m.ini"
    conf.write_text(BASE + ini)
    zone = tmp_path / "z.zone"
    zone.write_text(zone_text)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message)
    rc = cli.main(["scan", "-c", str(conf), "--zone", str(zone), "--client-ip", OUTSIDE,
                   "--helo", "mail.sender.example", "--mail-from", mail_from,
                   "--rcpt", "b@test.example", *extra, str(eml)])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def _x_tls_line(out) -> str:
    (value,) = [v for n, v in out["headers_added"] if n == HEADER]
    return next(line.strip().rstrip(";") for line in value.split("\n") if "x-tls=" in line)


def test_scan_takes_the_tls_version_cipher_and_bits(tmp_path, capsys):
    out = scan(tmp_path, capsys, "--tls-version", "TLSv1.2", "--cipher",
               "ECDHE-RSA-AES256-GCM-SHA384", "--cipher-bits", "256")
    assert _x_tls_line(out) == ("x-tls=pass smtp.version=TLSv1.2 "
                                "smtp.cipher=ECDHE-RSA-AES256-GCM-SHA384 smtp.bits=256")
    assert [r["symbol"] for r in out["results"] if r["check"] == "tls"] == ["TLS_OK"]


def test_scan_tls_alone_is_tls13_and_without_it_cleartext(tmp_path, capsys):
    out = scan(tmp_path, capsys, "--tls")
    assert _x_tls_line(out) == "x-tls=pass smtp.version=TLSv1.3"
    out = scan(tmp_path, capsys)
    assert _x_tls_line(out) == "x-tls=none"
    assert {"check": "tls", "result": "none", "symbol": "TLS_NONE", "score": 1.0,
            "reason": ""} in out["results"]


def test_scan_agrees_with_require_from(tmp_path, capsys):
    out = scan(tmp_path, capsys, ini=REQUIRE, mail_from="alerts@bank.example")
    assert out["action"] == "tempfail"
    assert out["smtp_reply"] == \
        "451 4.7.0 TLS TLSv1.2 or later required for mail from bank.example"
    out = scan(tmp_path, capsys, "--tls-version", "TLSv1.1", ini=REQUIRE,
               mail_from="alerts@bank.example")
    assert out["action"] == "tempfail"
    out = scan(tmp_path, capsys, "--tls", ini=REQUIRE, mail_from="alerts@bank.example")
    assert out["action"] != "tempfail", out["smtp_reply"]


BANK_ZONE = """
bank.example. TXT "v=spf1 -all"
_dmarc.bank.example. TXT "v=DMARC1; p=reject"
"""


def test_a_5xx_of_another_check_is_not_softened_to_our_4xx(tmp_path, capsys):
    # SPF refuses at MAIL FROM, DMARC at end of data: their 550 stands, not our 451
    out = scan(tmp_path, capsys, ini=REQUIRE + "[check.spf]\nreject_fail = yes\n",
               mail_from="alerts@bank.example", zone_text=BANK_ZONE)
    assert out["smtp_reply"].startswith("550 5.7.23 "), out["smtp_reply"]
    out = scan(tmp_path, capsys, ini=REQUIRE, zone_text=BANK_ZONE,
               message=b"From: alerts@bank.example\r\nSubject: x\r\n\r\nbody\r\n")
    assert out["smtp_reply"].startswith("550 5.7.1 "), out["smtp_reply"]
    assert {"TLS_REQUIRED", "DMARC_FAIL_REJECT"} <= {r["symbol"] for r in out["results"]}



def test_the_shipped_config_documents_every_key_with_its_default():
    from pathlib import Path
    from mailwarden.config import load
    from mailwarden.checks.tls import TlsOptions
    shipped = Path(__file__).resolve().parents[2] / "conf" / "mailwarden.ini"
    text = shipped.read_text()
    section = text.split("[check.tls]\n", 1)[1].split("\n[", 1)[0]
    keys = {line.split("=", 1)[0].strip() for line in section.splitlines()
            if "=" in line and not line.startswith(";")}
    wanted = {f.name for f in dataclasses.fields(TlsOptions)
              if "parse" in f.metadata} - {"tempfail_on_error", "skip_for"}
    assert keys == wanted
    assert load(str(shipped)).check("tls") == loads(BASE).check("tls")
    for symbol in ("TLS_OK", "TLS_OLD", "TLS_NONE", "TLS_REQUIRED", "TLS_ERROR"):
        assert f"\n{symbol} = " in text
