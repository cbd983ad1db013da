"""ARC through the real Postfix: an inbound chain verified, a forward sealed,
and ``scan`` agreeing.

The list's sealing key is ``tests/data/keys/lists-arc2026.private``
(published in ``tests/data/zones/arc.zone``), mailwarden's own
``outbound-rsa2026``; the session's unbound serves both.  Chains are made
by dkimpy's arc_sign, and what mailwarden seals is checked by dkimpy's
arc_verify on the message as the sink received it.
"""

from __future__ import annotations

import os
import re
import shutil

import dkim
import pytest

from tests.harness import AUTHSERV_ID, ROOT, make_message, smtp_send

OUTSIDE = {"ADDR": "198.51.100.72", "NAME": "[UNAVAILABLE]", "HELO": "lists.example"}
LOOPBACK = {"ADDR": "127.0.0.1", "NAME": "localhost", "HELO": "localhost"}
LIST_AR = ("dkim=pass header.d=origin.example; spf=pass smtp.mailfrom=origin.example; "
           "dmarc=pass header.from=origin.example")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("arc")
    for name in ("outbound-rsa2026.private", "lists-arc2026.private"):
        shutil.copy(ROOT / "tests/data/keys" / name, base / name)
        os.chmod(base / name, 0o600)
    return base


def settings(keys):
    return {
        "relay": {"local_domains": "outbound.example", "trusted_networks": "127.0.0.0/8"},
        "check.arc": {"keys": f"outbound.example:rsa2026:{keys}/outbound-rsa2026.private"},
    }


def list_sealed(keys, subject, to):
    """A message as a mailing list passes it on: its A-R, then its ARC set."""
    data, msgid = make_message(subject, sender="Author <author@origin.example>", to=to)
    signed = f"Authentication-Results: lists.example; arc=none; {LIST_AR}\r\n".encode() + data
    private = (keys / "lists-arc2026.private").read_bytes()
    made = dkim.arc_sign(signed, b"arc2026", b"lists.example", private, b"lists.example",
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert made
    return b"".join(made) + data, msgid


def our_ar(message) -> str:
    values = [v for v in message.header_values("Authentication-Results")
              if v.startswith(AUTHSERV_ID + ";")]
    assert len(values) == 1, message.data[:2000]
    return " ".join(values[0].split())


def test_inbound_chain_passes_with_remote_ip_and_chain(postfix, sink, mailwarden, keys):
    mw = mailwarden(settings(keys))
    data, msgid = list_sealed(keys, "list mail", "bob@outbound.example")
    result = smtp_send(postfix.smtp_port, xclient=OUTSIDE, helo=OUTSIDE["HELO"],
                       mail_from="list-bounces@lists.example", rcpts=["bob@outbound.example"],
                       data=data)
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    ar = our_ar(got)
    assert "arc=pass smtp.remote-ip=198.51.100.72 header.oldest-pass=0" in ar, ar
    assert "(arc.chain=lists.example)" in ar, ar
    # inbound mail to a local user is not sealed: the list's set alone
    assert len(got.header_values("ARC-Seal")) == 1
    out = mw.scan(data, client_ip=OUTSIDE["ADDR"], helo=OUTSIDE["HELO"],
                  mail_from="list-bounces@lists.example", rcpts=["bob@outbound.example"])
    (arc,) = [r for r in out["results"] if r["check"] == "arc"]
    assert (arc["result"], arc["symbol"]) == ("pass", "ARC_PASS")
    assert not [h for h in out["headers_added"] if h[0].startswith("ARC-")]

    # the same message changed after the list sealed it
    tampered = data.replace(b"Hello.", b"Changed.")
    out = mw.scan(tampered, client_ip=OUTSIDE["ADDR"], helo=OUTSIDE["HELO"],
                  mail_from="list-bounces@lists.example", rcpts=["bob@outbound.example"])
    (arc,) = [r for r in out["results"] if r["check"] == "arc"]
    assert arc["result"] == "fail"


def test_forward_leaves_sealed_and_the_seal_verifies(postfix, sink, mailwarden, keys,
                                                       dns_server):
    both = settings(keys)
    both["check.dkim_sign"] = {
        "keys": f"outbound.example:rsa2026:{keys}/outbound-rsa2026.private",
        "sign_trusted_networks": "127.0.0.1/32", "sign_trusted_domains": "outbound.example"}
    mw = mailwarden(both)
    # a message a trusted client sends on to another domain, with a forged
    # A-R that mailwarden removes and a DKIM signature it adds: the seal is
    # made after both, on what the sink gets
    data, msgid = make_message("forwarded", sender="alice@outbound.example",
                               to="friend@elsewhere.example",
                               extra_headers=[f"Authentication-Results: {AUTHSERV_ID}; "
                                              "dkim=pass header.d=outbound.example"])
    result = smtp_send(postfix.smtp_port, xclient=LOOPBACK, helo=LOOPBACK["HELO"],
                       mail_from="alice@outbound.example", rcpts=["friend@elsewhere.example"],
                       data=data)
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    seals = got.header_values("ARC-Seal")
    assert len(seals) == 1 and re.search(r"\bi=1;", seals[0]) and "cv=none" in seals[0]
    cv, results, why = dkim.arc_verify(got.data, dnsfunc=dns_server.txt_lookup)
    assert cv == dkim.CV_Pass, why
    assert results[0]["as-domain"] == b"outbound.example"
    assert dkim.verify(got.data, dnsfunc=dns_server.txt_lookup)
    assert "dkim-signature" in got.header_values("ARC-Message-Signature")[0]
    assert b"dkim=pass header.d=outbound.example" not in got.data
    out = mw.scan(data, client_ip=LOOPBACK["ADDR"], helo=LOOPBACK["HELO"],
                  mail_from="alice@outbound.example", rcpts=["friend@elsewhere.example"])
    assert [h[0] for h in out["headers_added"]][:3] == [
        "ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results"]

    # list mail with a valid chain, forwarded on: the chain is continued
    data, msgid = list_sealed(keys, "list mail forwarded", "friend@elsewhere.example")
    result = smtp_send(postfix.smtp_port, xclient=LOOPBACK, helo=LOOPBACK["HELO"],
                       mail_from="bob@outbound.example", rcpts=["friend@elsewhere.example"],
                       data=data)
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    cv, results, why = dkim.arc_verify(got.data, dnsfunc=dns_server.txt_lookup)
    assert cv == dkim.CV_Pass, why
    assert [(r["instance"], r["as-domain"]) for r in results] == [
        (2, b"outbound.example"), (1, b"lists.example")]
    assert "arc=pass" in " ".join(got.header_values("ARC-Authentication-Results"))
    assert "arc: sealed i=2 cv=pass" in mw.log_text()
