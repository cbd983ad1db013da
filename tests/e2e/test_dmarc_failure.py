"""DMARC failure reports (RFC 9991) through a real Postfix, mailwarden and unbound.

A p=reject failure of a domain with ``ruf=`` is refused, and its report
goes out through the local MTA (``[dmarc_report] sendmail``, the private
Postfix) to the sink: exactly one, well formed, to the authorized
destination; a second identical failure inside the rate window sends none;
a destination outside the domain that did not authorize itself gets none.
"""

from __future__ import annotations

import email
import email.policy
import subprocess

import pytest

from tests.harness import AUTHSERV_ID, make_message, smtp_send, wait_until

STRANGER = {"ADDR": "198.51.100.142", "NAME": "mail.stranger.example",
            "HELO": "mail.stranger.example"}
RCPT = "bob@rcpt.example"
SENDER = "ruf-sender@mx.test.example"
ZONE = """
ruf-e2e.example. TXT "v=spf1 ip4:198.51.100.141 -all"
_dmarc.ruf-e2e.example. TXT "v=DMARC1; p=reject; fo=1; ruf=mailto:forensic@ruf-e2e.example"
ruf-ext.example. TXT "v=spf1 ip4:198.51.100.141 -all"
_dmarc.ruf-ext.example. TXT "v=DMARC1; p=reject; ruf=mailto:forensic@unauth-e2e.example"
"""


@pytest.fixture(scope="module")
def zone(dns_server):
    dns_server.add(ZONE)


@pytest.fixture
def reporting(mailwarden, postfix, zone):
    sendmail = subprocess.run(["postconf", "-h", "sendmail_path"], capture_output=True,
                              text=True).stdout.strip() or "/usr/sbin/sendmail"
    return mailwarden({
        "dmarc_failure": {"enabled": "yes", "sender": SENDER, "rate_limit": "1",
                          "rate_period": "1h"},
        "dmarc_report": {"sendmail": f"{sendmail} -C {postfix.config_dir}"},
    })


def reports_to(sink, address):
    return [m for m in sink.messages if address in m.rcpts
            and b"report-type=feedback-report" in m.data.replace(b'"', b"")]


def send_failing(postfix, domain, subject):
    data, _msgid = make_message(subject, sender=f"alice@{domain}")
    result = smtp_send(postfix.smtp_port, xclient=STRANGER, helo=STRANGER["HELO"],
                       mail_from=f"bounce@{domain}", rcpts=[RCPT], data=data)
    assert not result.accepted and result.code == 550 and result.enhanced == "5.7.1", result
    return result


def test_one_report_per_failure_within_the_rate_and_none_unauthorized(reporting, postfix,
                                                                      sink):
    mw = reporting
    send_failing(postfix, "ruf-e2e.example", "failure report e2e")
    wait_until(lambda: reports_to(sink, "forensic@ruf-e2e.example"), 30,
               "the failure report at the sink", interval=0.2)
    (got,) = reports_to(sink, "forensic@ruf-e2e.example")
    assert got.mail_from == SENDER
    report = email.message_from_bytes(got.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "feedback-report"
    assert report["Subject"] == "FW: failure report e2e"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "message/feedback-report", "text/rfc822-headers"]
    (fields,) = parts[1].get_payload()
    assert fields["Feedback-Type"] == "auth-failure" and fields["Auth-Failure"] == "dmarc"
    assert fields["Version"] == "1" and fields["Reported-Domain"] == "ruf-e2e.example"
    assert fields["Source-IP"] == STRANGER["ADDR"]
    assert fields["Identity-Alignment"] == "spf"        # bounce@ruf-e2e.example failed SPF
    assert fields["SPF-DNS"].startswith("txt : ruf-e2e.example : ")
    assert fields["Delivery-Result"] == "reject"
    assert fields["Original-Mail-From"].endswith("@ruf-e2e.example>")
    assert "bounce@" not in fields["Original-Mail-From"]
    assert fields["Authentication-Results"].startswith(AUTHSERV_ID + ";")
    assert "dmarc=fail" in fields["Authentication-Results"]
    headers = parts[2].get_content()
    assert "alice@" not in headers and "@ruf-e2e.example" in headers

    # the same failure again, inside the rate window: withheld, counted in the log
    send_failing(postfix, "ruf-e2e.example", "failure report e2e")
    wait_until(lambda: "rate_limited" in mw.log_text(), 30, "the rate limit in the log",
               interval=0.2)
    # and a domain whose ruf names an outsider that did not authorize itself
    send_failing(postfix, "ruf-ext.example", "failure report e2e external")
    wait_until(lambda: "unauthorized" in mw.log_text(), 30, "the refusal in the log",
               interval=0.2)
    postfix.flush()
    postfix.wait_queue_empty()
    assert len(reports_to(sink, "forensic@ruf-e2e.example")) == 1
    assert reports_to(sink, "forensic@unauth-e2e.example") == []
