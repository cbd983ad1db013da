"""The tls check through the private Postfix, with and without STARTTLS.

The client is presented with XCLIENT after STARTTLS (TLS survives XCLIENT,
see test_harness), so the milter sees the TLS macros of a session that is
really encrypted: the version, cipher and bits asserted below are those the
client negotiated.  ``scan``, given the same session, must agree.  A client
certificate comes from the test CA of ``tests.harness.certs`` (the probe
tests' CA); TLS 1.1 needs a Postfix that still offers it (no system OpenSSL
configuration, security level 0), as the probe's weak server does.
"""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.harness import (AUTHSERV_ID, client_tls_context, free_port, make_message, smtp_send,
                           wait_until)
from tests.harness.certs import CA_NAME, make_ca_signed, make_client_cert

CLIENT = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example", "HELO": "mail.sender.example"}
SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"
# a domain no zone of the e2e DNS names (bank.example has DMARC p=reject there)
LISTED = {"check.tls": {"require_from": "tls-required.example"}}


def send(postfix, data, *, starttls=False, mail_from=SENDER, tls_context=None):
    return smtp_send(postfix.smtp_port, xclient=CLIENT, helo=CLIENT["HELO"],
                     mail_from=mail_from, rcpts=[RCPT], data=data, starttls=starttls,
                     tls_context=tls_context)


def our_ar(message) -> str:
    (value,) = [v for v in message.header_values("Authentication-Results")
                if v.lower().startswith(AUTHSERV_ID + ";")]
    return re.sub(r"\s+", " ", value)


def x_tls(ar: str) -> str:
    return re.search(r"\bx-tls=[^;]*", ar).group(0).strip()


def scan(mw, data, result=None, mail_from=SENDER):
    """``mailwarden scan`` told the session the client had (None: cleartext)."""
    extra = []
    if result is not None and result.tls is not None:
        cipher, version, bits = result.tls
        extra = ["--tls-version", version, "--cipher", cipher, "--cipher-bits", str(bits)]
    return mw.scan(data, client_ip=CLIENT["ADDR"], client_name=CLIENT["NAME"],
                   helo=CLIENT["HELO"], mail_from=mail_from, rcpts=[RCPT], extra_args=extra)


def scan_ar(verdict) -> str:
    (value,) = [v for n, v in verdict["headers_added"] if n == "Authentication-Results"]
    return re.sub(r"\s+", " ", value)


def metrics_page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


# -- recorded -----------------------------------------------------------------------

def test_a_message_over_tls13_shows_x_tls_pass_with_version_and_cipher(postfix, sink,
                                                                       mailwarden):
    port = free_port()
    mw = mailwarden({"metrics": {"listen": f"127.0.0.1:{port}"}})
    data, msgid = make_message("over TLS 1.3", sender=SENDER)
    result = send(postfix, data, starttls=True)
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    cipher, version, bits = result.tls
    assert version == "TLSv1.3"
    got = sink.wait_for_match(msgid.encode())
    ar = our_ar(got)
    assert x_tls(ar) == f"x-tls=pass smtp.version=TLSv1.3 smtp.cipher={cipher} smtp.bits={bits}"
    assert "TLS_" not in got.header_values("X-Mailwarden-Status")[0]      # TLS_OK weighs 0
    verdict = scan(mw, data, result)
    assert scan_ar(verdict) == ar
    assert [r["symbol"] for r in verdict["results"] if r["check"] == "tls"] == ["TLS_OK"]
    wait_until(lambda: 'mailwarden_tls_messages_total{version="TLSv1.3"} 1.0'
               in metrics_page(port), 10, "the TLS metric")


def test_the_same_without_starttls_shows_x_tls_none_and_tls_none(postfix, sink, mailwarden):
    mw = mailwarden()
    data, msgid = make_message("in cleartext", sender=SENDER)
    result = send(postfix, data)
    assert result.accepted and result.tls is None, result
    got = sink.wait_for_match(msgid.encode())
    ar = our_ar(got)
    assert x_tls(ar) == "x-tls=none"
    assert "TLS_NONE(1.00)" in got.header_values("X-Mailwarden-Status")[0]
    assert re.search(r"symbols=.*TLS_NONE\(1\)", mw.log_text()), mw.log_text()[-2000:]
    verdict = scan(mw, data)
    assert scan_ar(verdict) == ar
    assert {"check": "tls", "result": "none", "symbol": "TLS_NONE", "score": 1.0,
            "reason": ""} in verdict["results"]


def test_tls12_is_recorded_as_negotiated(postfix, sink, mailwarden):
    mw = mailwarden()
    data, msgid = make_message("over TLS 1.2", sender=SENDER)
    result = send(postfix, data, starttls=True, tls_context=client_tls_context(maximum="TLSv1_2"))
    assert result.accepted, result
    cipher, version, bits = result.tls
    assert version == "TLSv1.2"
    ar = our_ar(sink.wait_for_match(msgid.encode()))
    assert x_tls(ar) == f"x-tls=pass smtp.version=TLSv1.2 smtp.cipher={cipher} smtp.bits={bits}"
    assert scan_ar(scan(mw, data, result)) == ar


# -- enforced -------------------------------------------------------------------------

def test_a_listed_domain_in_cleartext_gets_4xx_over_tls_it_is_accepted(postfix, sink,
                                                                      mailwarden):
    mw = mailwarden(LISTED)
    data, msgid = make_message("statement", sender="alerts@tls-required.example")

    clear = send(postfix, data, mail_from="alerts@tls-required.example")
    assert (clear.stage, clear.code, clear.enhanced) == ("mail", 451, "4.7.0"), clear
    assert "TLS TLSv1.2 or later required for mail from tls-required.example" in clear.text
    verdict = scan(mw, data, mail_from="alerts@tls-required.example")
    assert verdict["action"] == "tempfail"
    assert verdict["smtp_reply"] == f"{clear.code} {clear.text}"

    secure = send(postfix, data, starttls=True, mail_from="alerts@tls-required.example")
    assert secure.accepted, f"{secure}\n{mw.log_text()[-2000:]}"
    ar = our_ar(sink.wait_for_match(msgid.encode()))
    assert x_tls(ar).startswith("x-tls=pass smtp.version=TLSv1.3 ")
    verdict = scan(mw, data, secure, mail_from="alerts@tls-required.example")
    assert verdict["action"] == "accept" and scan_ar(verdict) == ar


def test_a_listed_author_in_cleartext_gets_4xx_at_end_of_data(postfix, sink, mailwarden):
    mw = mailwarden(LISTED)
    data, msgid = make_message("statement via a mailing service",
                               sender="Partner <alerts@tls-required.example>")
    clear = send(postfix, data, mail_from="bounces@esp.example")
    assert (clear.stage, clear.code, clear.enhanced) == ("data", 451, "4.7.0"), clear
    verdict = scan(mw, data, mail_from="bounces@esp.example")
    assert verdict["smtp_reply"] == f"{clear.code} {clear.text}"
    secure = send(postfix, data, starttls=True, mail_from="bounces@esp.example")
    assert secure.accepted, f"{secure}\n{mw.log_text()[-2000:]}"
    sink.wait_for_match(msgid.encode())


def test_reject_is_a_5xx(postfix, sink, mailwarden):
    mailwarden({"check.tls": {"require_from": "tls-required.example", "require_action": "reject"}})
    data, _msgid = make_message("statement", sender="alerts@tls-required.example")
    clear = send(postfix, data, mail_from="alerts@tls-required.example")
    assert (clear.stage, clear.code, clear.enhanced) == ("mail", 550, "5.7.0"), clear


# -- a client certificate and an old TLS version need their own Postfix settings --------

@pytest.fixture(scope="module")
def test_ca(e2e_dir):
    directory = e2e_dir / "tls-ca"
    make_ca_signed(directory, AUTHSERV_ID)
    return directory


def test_a_verified_client_certificate_is_logged(postfix, sink, mailwarden, test_ca):
    mw = mailwarden()
    cert = make_client_cert(test_ca, "client.sender.example")
    data, msgid = make_message("with a client certificate", sender=SENDER)
    with postfix.settings_changed(smtpd_tls_ask_ccert="yes",
                                  smtpd_tls_CAfile=str(test_ca / "ca.pem")):
        result = send(postfix, data, starttls=True, tls_context=client_tls_context(cert=cert))
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    sink.wait_for_match(msgid.encode())
    # Postfix passes the CNs of a certificate it verified; {verify} is Sendmail's
    assert (f"tls: client certificate subject=client.sender.example issuer={CA_NAME} verify="
            in mw.log_text()), mw.log_text()[-2000:]


def test_tls11_is_old_and_does_not_satisfy_require_from(postfix, sink, mailwarden):
    mw = mailwarden(LISTED)
    legacy = client_tls_context(minimum="TLSv1_1", maximum="TLSv1_1", legacy=True)
    data, msgid = make_message("over TLS 1.1", sender=SENDER)
    bank_data, _ = make_message("statement over TLS 1.1", sender="alerts@tls-required.example")
    # without the system OpenSSL configuration (MinProtocol TLSv1.2) and at
    # security level 0, Postfix really takes TLS 1.1 when its settings allow it
    with postfix.settings_changed(tls_config_file="none", smtpd_tls_protocols=">=TLSv1",
                                  smtpd_tls_mandatory_protocols=">=TLSv1",
                                  tls_medium_cipherlist="ALL:@SECLEVEL=0",
                                  tls_high_cipherlist="ALL:@SECLEVEL=0"):
        result = send(postfix, data, starttls=True, tls_context=legacy)
        refused = send(postfix, bank_data, starttls=True, tls_context=legacy,
                       mail_from="alerts@tls-required.example")
    assert result.accepted, f"{result}\n{mw.log_text()[-2000:]}"
    cipher, version, bits = result.tls
    assert version == "TLSv1.1"
    got = sink.wait_for_match(msgid.encode())
    ar = our_ar(got)
    assert x_tls(ar) == f"x-tls=pass smtp.version=TLSv1.1 smtp.cipher={cipher} smtp.bits={bits}"
    assert "TLS_OLD(0.50)" in got.header_values("X-Mailwarden-Status")[0]
    assert scan_ar(scan(mw, data, result)) == ar
    assert (refused.stage, refused.code, refused.enhanced) == ("mail", 451, "4.7.0"), refused
    verdict = scan(mw, bank_data, refused, mail_from="alerts@tls-required.example")
    assert verdict["smtp_reply"] == f"{refused.code} {refused.text}"
