"""One authentication scenario through the private Postfix and mailwarden,
and the same message through ``mailwarden scan``: what the spf, dkim and
dmarc end-to-end tests share."""

from __future__ import annotations

import re
import subprocess

from tests import dkimkeys
from tests.harness import AUTHSERV_ID, make_message, smtp_send, wait_until

RELAY = {"ADDR": "198.51.100.141", "NAME": "relay.mw-auth.example",
         "HELO": "relay.mw-auth.example"}
STRANGER = {"ADDR": "198.51.100.142", "NAME": "[UNAVAILABLE]", "HELO": "relay.mw-auth.example"}
RCPT = "bob@rcpt.example"
NOT_ALIGNED = "bounce@spf-none.mw-auth.example"


def our_ar(message) -> list:
    return [v for v in message.header_values("Authentication-Results")
            if v.lower().startswith(AUTHSERV_ID + ";")]


def unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def held(postfix) -> list:
    return [p for p in postfix.queue_files() if "/hold/" in str(p)]


def release_held(postfix) -> None:
    subprocess.run(["postsuper", "-c", str(postfix.config_dir), "-d", "ALL", "hold"],
                   capture_output=True, timeout=30)


def scenario(postfix, sink, mw, client, mail_from, from_addr, *, sign=(), change=None,
             extra_headers=(), xclient_extra=None):
    """Send one message; return (outcome, A-R or None, scan JSON).

    ``sign`` is a list of (key, selector, domain); ``change`` edits the
    signed bytes as a relay would.  ``outcome`` is ``delivered``,
    ``quarantined`` or the SMTP reply ``CODE X.Y.Z``.
    """
    data, msgid = make_message("auth e2e", sender=from_addr, extra_headers=extra_headers)
    for key, selector, domain in sign:
        data = dkimkeys.sign(data, key, selector, domain)
    if change is not None:
        data = change(data)
    xclient = dict(client, **(xclient_extra or {}))
    result = smtp_send(postfix.smtp_port, xclient=xclient, helo=client["HELO"],
                       mail_from=mail_from, rcpts=[RCPT], data=data)
    report = mw.scan(data, client_ip=client["ADDR"], helo=client["HELO"],
                     mail_from=mail_from, rcpts=[RCPT],
                     client_name=client["NAME"] if not client["NAME"].startswith("[") else "",
                     auth=(xclient_extra or {}).get("LOGIN", ""),
                     extra_args=["--tls"] if (xclient_extra or {}).get("LOGIN") else [])
    if not result.accepted:
        return f"{result.code} {result.enhanced}", None, report
    try:
        got = sink.wait_for_match(msgid.encode(), timeout=5)
    except Exception:
        wait_until(lambda: held(postfix), 20, "the message in the hold queue")
        release_held(postfix)
        return "quarantined", None, report
    (ar,) = our_ar(got)
    return "delivered", ar, report


def assert_scan_agrees(outcome, ar, report):
    expected = {"delivered": ("accept", "add_header"), "quarantined": ("quarantine",)}
    if outcome in expected:
        assert report["action"] in expected[outcome], report
    else:
        assert report["smtp_reply"] and report["smtp_reply"].startswith(outcome), report
    if ar is not None:
        (scan_ar,) = [v for n, v in report["headers_added"] if n == "Authentication-Results"]
        assert unfold(scan_ar) == ar
