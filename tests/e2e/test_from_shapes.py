"""A From field shaped to dodge DMARC, or to break the parser, through Postfix.

bank.example publishes ``p=reject``; the attacker sends from evil.example's
own server (SPF pass for evil.example, which publishes ``p=none``).  Every
shape that names bank.example as an author is refused with 550, and
``mailwarden scan`` agrees.  An authenticated client (XCLIENT LOGIN=alice)
whose From is ceo@ followed by a thousand ``:`` is refused with 553, not
let through as a temperror.
"""

from __future__ import annotations

import pytest

from tests.harness import make_message, smtp_send

ZONE = """
bank.example.          TXT "v=spf1 ip4:203.0.113.0/24 -all"
_dmarc.bank.example.   TXT "v=DMARC1; p=reject"
evil.example.          TXT "v=spf1 ip4:198.51.100.66 -all"
_dmarc.evil.example.   TXT "v=DMARC1; p=none"
"""
ATTACKER = {"ADDR": "198.51.100.66", "NAME": "[UNAVAILABLE]", "HELO": "mail.evil.example"}
RCPT = "bob@rcpt.example"

SHAPES = {
    "two-identical-fields": ["service@bank.example", "service@bank.example"],
    "two-fields-evil-first": ["x@evil.example", "service@bank.example"],
    "list-bank-then-evil": ["<service@bank.example>, x@evil.example"],
    "group": ["Bank: service@bank.example, x@evil.example;"],
    "comments-65": ["service@bank.example " + "(" * 65 + ")" * 65],
    "comments-unclosed": ["service@bank.example " + "(" * 500],
    "colons-1000": ["service@bank.example" + ":" * 1000],
    "nested-groups": ["a: " * 40 + "service@bank.example" + ";" * 40],
    "route": ["<@evil.example:service@bank.example>"],
    "unterminated-quote": ['"Bank <service@bank.example>'],
    "encoded-word-only": ["=?utf-8?q?service=40bank.example?="],
}


@pytest.fixture(scope="module", autouse=True)
def headers_as_sent(postfix):
    """Postfix rewrites the headers of a local client's mail (XCLIENT comes
    from loopback, one of its inet_interfaces): an unterminated quote
    becomes '"Bank <service@bank.example>"@mx.test.example'.  A remote
    client's headers reach the milter as sent; so they do here."""
    with postfix.settings_changed(local_header_rewrite_clients=""):
        yield


@pytest.fixture(scope="module")
def zone(dns_server):
    dns_server.add(ZONE)


def _message(froms):
    data, msgid = make_message("invoice", sender=froms[0],
                               extra_headers=[f"From: {f}" for f in froms[1:]])
    return data, msgid


@pytest.mark.parametrize("froms", SHAPES.values(), ids=SHAPES.keys())
def test_every_from_shape_naming_bank_is_refused(postfix, sink, mailwarden, zone, froms):
    mw = mailwarden()
    data, msgid = _message(froms)
    result = smtp_send(postfix.smtp_port, xclient=ATTACKER, helo=ATTACKER["HELO"],
                       mail_from="x@evil.example", rcpts=[RCPT], data=data)
    assert (result.stage, result.code, result.enhanced) == ("data", 550, "5.7.1"), \
        (result, mw.log_text()[-2000:])
    assert "DMARC policy of bank.example" in result.text, result.text
    report = mw.scan(data, client_ip=ATTACKER["ADDR"], helo=ATTACKER["HELO"],
                     mail_from="x@evil.example", rcpts=[RCPT])
    assert report["smtp_reply"].startswith("550 5.7.1"), report
    (dmarc,) = [r for r in report["results"] if r["check"] == "dmarc"]
    assert dmarc["symbol"] == "DMARC_FAIL_REJECT", dmarc
    assert sink.find(msgid.encode()) == []


def test_evil_alone_is_delivered(postfix, sink, mailwarden, zone):
    mw = mailwarden()
    data, msgid = _message(["x@evil.example"])
    result = smtp_send(postfix.smtp_port, xclient=ATTACKER, helo=ATTACKER["HELO"],
                       mail_from="x@evil.example", rcpts=[RCPT], data=data)
    assert result.accepted, (result, mw.log_text()[-2000:])
    got = sink.wait_for_match(msgid.encode(), timeout=30)
    assert any("dmarc=pass" in v for v in got.header_values("Authentication-Results"))


def test_no_author_domain_refused(postfix, sink, mailwarden, zone):
    mw = mailwarden()
    data, _ = _message(["undisclosed-recipients:;"])
    result = smtp_send(postfix.smtp_port, xclient=ATTACKER, helo=ATTACKER["HELO"],
                       mail_from="x@evil.example", rcpts=[RCPT], data=data)
    assert (result.stage, result.code, result.enhanced) == ("data", 550, "5.7.1"), \
        (result, mw.log_text()[-2000:])


# -- submission ------------------------------------------------------------------

@pytest.fixture(scope="module")
def login_map(tmp_path_factory):
    path = tmp_path_factory.mktemp("from-logins") / "logins"
    path.write_text("alice: alice@outbound.example\n")
    return path


def test_colon_bomb_from_cannot_borrow_ceos_address(postfix, sink, mailwarden, login_map):
    # the defaults: temperror_action_authenticated = accept
    mw = mailwarden({"check.submission": {"sender_login_map": str(login_map),
                                          "require_tls_for_auth": "no"}})
    alice = dict(ATTACKER, LOGIN="alice")
    data, msgid = _message(["ceo@outbound.example" + ":" * 1000])
    result = smtp_send(postfix.smtp_port, xclient=alice, helo=alice["HELO"],
                       mail_from="alice@outbound.example", rcpts=[RCPT], data=data)
    assert (result.stage, result.code, result.enhanced) == ("data", 553, "5.7.1"), \
        (result, mw.log_text()[-2000:])
    assert "crashed" not in mw.log_text()
    report = mw.scan(data, client_ip=alice["ADDR"], helo=alice["HELO"],
                     mail_from="alice@outbound.example", rcpts=[RCPT], auth="alice")
    assert report["smtp_reply"].startswith("553 5.7.1"), report
    assert sink.find(msgid.encode()) == []

    # her own address still goes through
    data, msgid = _message(["Alice <alice@outbound.example>"])
    result = smtp_send(postfix.smtp_port, xclient=alice, helo=alice["HELO"],
                       mail_from="alice@outbound.example", rcpts=[RCPT], data=data)
    assert result.accepted, (result, mw.log_text()[-2000:])
    sink.wait_for_match(msgid.encode(), timeout=30)
