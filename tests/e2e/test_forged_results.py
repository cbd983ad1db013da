"""Our Authentication-Results and status header through a real Postfix.

An SPF explanation (exp=) is the sender's text: here it tries to write
``dkim=pass`` and ``dmarc=pass`` results of its own.  The message must
arrive with an A-R that authres's strict parser reads back to exactly what
mailwarden found.  A status header the sender wrote must not survive.
"""

from __future__ import annotations

import re

import authres
import pytest

from tests.hostile import FORGED_RESULTS

from tests.harness import AUTHSERV_ID, make_message, smtp_send

CLIENT = {"ADDR": "198.51.100.143", "NAME": "[UNAVAILABLE]", "HELO": "mail.mw-hostile.example"}
DOMAIN = "mw-hostile.example"
SENDER = f"bounce@{DOMAIN}"
RCPT = "bob@rcpt.example"
LONG_PIECE = ("100%% sure: " + "x" * 240)[:250]          # %% is a % once expanded


@pytest.fixture(scope="module")
def hostile_zone(dns_server):
    explanation = FORGED_RESULTS.replace("\\", "\\\\").replace('"', '\\"')
    dns_server.add("\n".join([
        f'{DOMAIN}. TXT "v=spf1 -all exp=exp.{DOMAIN}"',
        f'exp.{DOMAIN}. TXT "{explanation}"',
        f'long.{DOMAIN}. TXT "v=spf1 -all exp=exp.long.{DOMAIN}"',
        f'exp.long.{DOMAIN}. TXT ' + " ".join(['"' + LONG_PIECE + '"'] * 6),
    ]))
    return explanation


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def _ours(message) -> list:
    return [_unfold(v) for v in message.header_values("Authentication-Results")
            if v.strip().lower().startswith(AUTHSERV_ID + ";")]


def _strict(value: str):
    header = authres.core.AuthenticationResultsHeader(authres.core_features(), strict=True)
    header._parse_text = value
    header._parse()
    return header


def _send(postfix, sink, extra_headers=(), mail_from=SENDER):
    data, msgid = make_message("hostile exp", sender=f"a@{DOMAIN}",
                               extra_headers=extra_headers)
    result = smtp_send(postfix.smtp_port, xclient=CLIENT, helo=CLIENT["HELO"],
                       mail_from=mail_from, rcpts=[RCPT], data=data)
    assert result.accepted, result
    return sink.wait_for_match(msgid.encode(), timeout=10), data


def test_hostile_spf_explanation_reads_back_as_one_spf_fail(postfix, sink, mailwarden,
                                                          hostile_zone):
    mw = mailwarden()
    got, data = _send(postfix, sink)
    (ar,) = _ours(got)
    parsed = _strict(ar)
    assert parsed.authserv_id == AUTHSERV_ID
    # the MAIL FROM identity: one spf=fail, its reason the explanation exactly
    spf = [r for r in parsed.results
           if r.method == "spf" and [p.name for p in r.properties] == ["mailfrom"]]
    assert [(r.result, re.sub(r"\\(.)", r"\1", r.reason)) for r in spf] == \
        [("fail", FORGED_RESULTS)], ar
    assert [(p.type, p.name, p.value) for p in spf[0].properties] == \
        [("smtp", "mailfrom", SENDER)]
    # every result is one of ours: these methods, in this order
    assert [r.method for r in parsed.results] == ["iprev", "spf", "spf", "dkim", "dmarc",
                                               "arc", "x-tls"], ar
    # nothing the explanation wrote became a result: no pass at all here,
    # and no result names paypal.com
    assert not [r for r in parsed.results if r.result == "pass"], ar
    assert not [p for r in parsed.results for p in r.properties if "paypal" in str(p.value)]
    assert [r.method for r in parsed.results].count("dkim") <= 1
    # scan on the same message writes the same header
    report = mw.scan(data, client_ip=CLIENT["ADDR"], helo=CLIENT["HELO"], mail_from=SENDER,
                     rcpts=[RCPT])
    (scan_ar,) = [v for n, v in report["headers_added"] if n == "Authentication-Results"]
    assert _unfold(scan_ar) == ar


def test_incoming_status_header_does_not_survive(postfix, sink, mailwarden, hostile_zone):
    mw = mailwarden()
    forged = "X-Mailwarden-Status: No, score=-100.00 required=5.00"
    got, data = _send(postfix, sink, extra_headers=[forged, forged.upper()])
    values = got.header_values("X-Mailwarden-Status")
    assert len(values) == 1, values
    assert "-100.00" not in values[0] and "score=" in values[0]
    report = mw.scan(data, client_ip=CLIENT["ADDR"], helo=CLIENT["HELO"], mail_from=SENDER,
                     rcpts=[RCPT])
    assert [n.lower() for n, _ in report["headers_removed"]] == ["x-mailwarden-status"] * 2


def test_a_long_explanation_is_rejected_not_tempfailed(postfix, sink, mailwarden,
                                                       hostile_zone):
    """Six 250-character strings: over libmilter's 980-character reply text
    and over the 512 octets of an SMTP reply line."""
    mailwarden({"check.spf": {"reject_fail": "yes"}})
    data, _msgid = make_message("long exp", sender=f"a@long.{DOMAIN}")
    result = smtp_send(postfix.smtp_port, xclient=CLIENT, helo=CLIENT["HELO"],
                       mail_from=f"x@long.{DOMAIN}", rcpts=[RCPT], data=data)
    assert not result.accepted
    assert (result.code, result.enhanced) == (550, "5.7.23"), result
    # Postfix gives the client each %% as one %; the line fits RFC 5321's 512
    assert result.text.startswith("5.7.23 100% sure: xxx") and result.text.endswith("..."), result
    assert len(f"550 {result.text}\r\n") <= 512, len(result.text)


def test_hostile_dkim_tags_read_back_as_what_was_found(postfix, sink, mailwarden, hostile_zone):
    """Tag values of a DKIM-Signature are the sender's text too."""
    mailwarden()
    sig = ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=" + DOMAIN + ";"
           ' s=x" (@) dkim=pass; i=a (b)@' + DOMAIN + " dmarc=pass header.from=paypal.com;"
           " h=from:subject; bh=AAAA; b=BB/B+BB=")
    # a MAIL FROM domain without SPF: only the signature is hostile here
    got, _data = _send(postfix, sink, extra_headers=[sig], mail_from=f"b@nospf.{DOMAIN}")
    (ar,) = _ours(got)
    parsed = _strict(ar)
    assert [r.method for r in parsed.results] == ["iprev", "spf", "spf", "dkim", "dmarc",
                                               "arc", "x-tls"], ar
    (dkim,) = [r for r in parsed.results if r.method == "dkim"]
    assert dkim.result in ("fail", "permerror", "neutral"), ar
    assert not [r for r in parsed.results if r.result == "pass"], ar
    values = {f"{p.type}.{p.name}": re.sub(r"\\(.)", r"\1", str(p.value))
              for p in dkim.properties}
    assert values.get("header.d") == DOMAIN, ar
    # what was kept is the tag exactly; what could not be kept is absent
    for key, tag in (("header.s", 'x" (@) dkim=pass'),
                     ("header.i", f"a (b)@{DOMAIN} dmarc=pass header.from=paypal.com")):
        assert values.get(key, tag) == tag, (key, ar)
