"""The core scenarios through a real Sendmail built from ``contrib/sendmail/mailwarden.mc``.

The private Sendmail (``tests.harness.sendmail``) runs the contrib lines as
an admin pastes them, only the socket replaced by the session's milter
socket, and relays what it takes to the session's sink.  Sendmail has no
XCLIENT: each client is a loopback address the test binds its socket to,
named in Sendmail's private hosts file and in ``tests/data/zones/sendmail.zone``.
SMTP AUTH is Sendmail's own (Cyrus SASL PLAIN over STARTTLS), its
passwords checked by the harness.  Sendmail comes from ``make deps-test``
(``scripts/fetch-sendmail``): without it these tests fail, saying so; they
are skipped only where every e2e test is (not root, see ``conftest.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket

import dkim
import pytest

from tests.harness import (AUTHSERV_ID, ROOT, free_port, make_message, read_smtp_reply,
                           smtp_send)
from tests.harness.sendmail import SENDMAIL_HOSTNAME, Sendmail

# the addresses the tests send from, and the names Sendmail finds for them
CLIENT = "127.0.0.5"            # PTR and A agree (sendmail.zone): iprev pass
LAPTOP = "127.0.0.7"            # the authenticated submitter
BLOCKED = "127.0.0.66"          # in [check.iplist] block
HOSTS = {CLIENT: "mail.sm-client.example", LAPTOP: "laptop.sm-client.example",
         BLOCKED: "blocked.sm-client.example"}
LOGINS = {"alice": "alice-password"}

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"

# the clients are on loopback, trusted by default: trust only Sendmail's host
UNTRUSTED = {"relay": {"trusted_networks": "127.0.0.1/32"}}
SMALL = {**UNTRUSTED, "check.size": {"max_size": "10K"}}
# Sendmail names the queue id in its reply to the end of DATA
QUEUE_ID = re.compile(r"^2\.0\.0 (\w+) Message accepted for delivery")


@pytest.fixture(scope="module")
def sendmail(e2e_dir, sink, milter_socket_path):
    instance = Sendmail(e2e_dir / "sendmail", sink.port,
                        milter_socket=f"unix:{milter_socket_path}", hosts=HOSTS, logins=LOGINS)
    instance.start()
    yield instance
    instance.stop()


def send(sendmail, source, data, **kw):
    return smtp_send(sendmail.smtp_port, source=source, helo=kw.pop("helo", HOSTS[source]),
                     mail_from=kw.pop("mail_from", SENDER), rcpts=kw.pop("rcpts", [RCPT]),
                     data=data, **kw)


def our_ar(message) -> list:
    return [v for v in message.header_values("Authentication-Results")
            if v.lower().startswith(AUTHSERV_ID + ";")]


def queue_id(result) -> str:
    match = QUEUE_ID.match(result.text)
    assert match, result
    return match.group(1)


def explain(sendmail, mw) -> str:
    return (f"\n--- mailwarden ---\n{mw.log_text()[-3000:]}"
            f"\n--- sendmail ---\n{sendmail.trace()[-3000:]}{sendmail.errors()[-1000:]}")


def deliver(sendmail, sink, mw, source, subject, **kw):
    """One message that must be accepted: (the message at the sink, Sendmail's queue id)."""
    data, msgid = make_message(subject, extra_headers=kw.pop("extra_headers", ()),
                               sender=kw.get("mail_from", SENDER))
    result = send(sendmail, source, data, **kw)
    assert result.accepted, f"{result}{explain(sendmail, mw)}"
    return sink.wait_for_match(msgid.encode(), timeout=30), queue_id(result)


def assert_not_delivered(sendmail, sink, needle: bytes):
    # interactive delivery: whatever Sendmail took is at the sink before it
    # answers DATA, and nothing may wait in its queue
    assert sendmail.queue_files() == []
    assert sink.find(needle) == []


# -- accepted ------------------------------------------------------------------

def test_accepted_with_our_ar_and_the_forged_one_removed(sendmail, sink, mailwarden):
    mw = mailwarden(UNTRUSTED)
    got, qid = deliver(sendmail, sink, mw, CLIENT, "through sendmail", extra_headers=[
        f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=forged.example",
        "Authentication-Results: other.example; dkim=pass header.d=other.example",
        "Authentication-Results: (sneaky) MX.Test.Example.;\r\n"
        "\tdmarc=pass header.from=forged.example",
    ])
    values = got.header_values("Authentication-Results")
    assert not any("forged.example" in v for v in values), values
    assert "other.example; dkim=pass header.d=other.example" in values
    (ours,) = our_ar(got)
    # the client as Sendmail gives it (hostaddr and its PTR name)
    assert re.search(r"\biprev=pass policy\.iprev=127\.0\.0\.5 \(mail\.sm-client\.example\)",
                     ours), ours
    # ours on top, above Sendmail's Received, which names the queue id
    assert got.data.startswith(b"Authentication-Results: " + AUTHSERV_ID.encode() + b";")
    assert re.search(rf"\bid {qid}\b", got.header_values("Received")[0])
    # the queue id (macro i) heads mailwarden's line for the message
    assert re.search(rf"INFO {qid}: action=accept .*client=mail\.sm-client\.example\[127\.0\.0\.5\]"
                     rf" helo=mail\.sm-client\.example from=<{SENDER}>", mw.log_text()), \
        explain(sendmail, mw)


def test_forward_sealed_after_every_other_change(sendmail, sink, mailwarden, dns_server,
                                                 tmp_path):
    """A trusted client's mail to another domain leaves with an ARC set that
    covers what Sendmail passes on: our A-R on top, the forged one gone."""
    key = tmp_path / "outbound-rsa2026.private"
    shutil.copy(ROOT / "tests/data/keys/outbound-rsa2026.private", key)
    os.chmod(key, 0o600)
    mw = mailwarden({"relay": {"trusted_networks": f"127.0.0.1/32, {CLIENT}/32"},
                     "check.arc": {"keys": f"outbound.example:rsa2026:{key}"}})
    got, _qid = deliver(sendmail, sink, mw, CLIENT, "sealed through sendmail", extra_headers=[
        f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=forged.example"])
    assert got.data.startswith(b"ARC-Seal: i=1;"), got.data[:300]
    assert b"forged.example" not in got.data

    cv, results, why = dkim.arc_verify(got.data, dnsfunc=dns_server.txt_lookup)
    assert cv == dkim.CV_Pass, f"{why}{explain(sendmail, mw)}"
    assert results[0]["as-domain"] == b"outbound.example"


# -- refused --------------------------------------------------------------------

def test_blocked_client_refused_at_connect(sendmail, sink, mailwarden):
    mw = mailwarden({**UNTRUSTED, "check.iplist": {"block": f"{BLOCKED}/32"}})
    data, msgid = make_message("blocked through sendmail")
    result = send(sendmail, BLOCKED, data)
    assert (result.stage, result.code) == ("connect", 554), f"{result}{explain(sendmail, mw)}"
    assert_not_delivered(sendmail, sink, msgid.encode())
    assert re.search(r"stage=connect action=reject .*client=blocked\.sm-client\.example"
                     r"\[127\.0\.0\.66\]", mw.log_text()), explain(sendmail, mw)
    # a client that talks on anyway may say EHLO, and no more
    with socket.create_connection(("127.0.0.1", sendmail.smtp_port), timeout=30,
                                  source_address=(BLOCKED, 0)) as sock, \
            sock.makefile("rb") as rfile:
        assert read_smtp_reply(rfile)[0] == 554
        replies = []
        for command in (b"EHLO blocked.sm-client.example", b"MAIL FROM:<a@sender.example>",
                        b"RCPT TO:<bob@rcpt.example>", b"DATA"):
            sock.sendall(command + b"\r\n")
            replies.append(read_smtp_reply(rfile)[0] // 100)
        assert replies == [2, 5, 5, 5], replies
    # the next client is not affected
    got, _ = deliver(sendmail, sink, mw, CLIENT, "not blocked")
    assert our_ar(got)


def test_oversized_message_refused_with_552(sendmail, sink, mailwarden):
    mw = mailwarden(SMALL)
    data, msgid = make_message("too big through sendmail", body=("y" * 70 + "\n") * 300)
    assert len(data) > 10 * 1024
    result = send(sendmail, CLIENT, data)
    assert (result.stage, result.code, result.enhanced) == ("data", 552, "5.3.4"), \
        f"{result}{explain(sendmail, mw)}"
    assert_not_delivered(sendmail, sink, msgid.encode())
    # refused in the body, logged under Sendmail's queue id, whose last six
    # digits are the pid of the Sendmail process that served the session
    line = re.search(r"INFO (\w+): stage=body action=reject", mw.log_text())
    assert line, explain(sendmail, mw)
    session = re.search(r"(?m)^(\d+) >>> 552 5\.3\.4 ", sendmail.trace())
    assert session and line.group(1).endswith(f"{int(session.group(1)):06d}"), \
        explain(sendmail, mw)
    # declared too big: refused at MAIL FROM
    result = send(sendmail, CLIENT, data, esmtp_size=50_000)
    assert (result.stage, result.code, result.enhanced) == ("mail", 552, "5.3.4"), result
    assert_not_delivered(sendmail, sink, msgid.encode())


def test_relay_refused_at_rcpt(sendmail, sink, mailwarden):
    mw = mailwarden({"relay": {"local_domains": "sm-local.example",
                               "trusted_networks": "127.0.0.1/32"}})
    data, msgid = make_message("relay through sendmail", to="victim@elsewhere.example")
    result = send(sendmail, CLIENT, data,
                  rcpts=["victim@elsewhere.example", "bob@sm-local.example"])
    rcpt_replies = [(code, text) for command, code, text in result.replies if command == "RCPT"]
    assert rcpt_replies[0][0] == 554 and rcpt_replies[0][1].startswith("5.7.1") \
        and "Relay access denied" in rcpt_replies[0][1], f"{result}{explain(sendmail, mw)}"
    assert result.accepted and result.accepted_rcpts == ["bob@sm-local.example"], result
    got = sink.wait_for_match(msgid.encode())
    assert got.rcpts == ["bob@sm-local.example"]
    assert "relay denied" in mw.log_text()


# -- the socket ----------------------------------------------------------------

def test_mail_flows_over_tcp(e2e_dir, sink, mailwarden):
    """The contrib file's own kind of socket, ``S=inet:PORT@127.0.0.1`` (where
    mailwarden negotiates otherwise: see mailwarden.sockopt)."""
    address = f"inet:127.0.0.1:{free_port()}"
    mw = mailwarden({**SMALL, "milter": {"socket": address}})
    with Sendmail(e2e_dir / "sendmail-tcp", sink.port, milter_socket=address,
                  hosts=HOSTS) as over_tcp:
        assert f"S=inet:{address.rsplit(':', 1)[1]}@127.0.0.1," in over_tcp.mc_text()
        for n in range(2):
            got, qid = deliver(over_tcp, sink, mw, CLIENT, f"over tcp {n}")
            assert re.search(r"\biprev=pass\b", our_ar(got)[0]), got.data[:500]
            assert f"INFO {qid}: action=accept" in mw.log_text()
        data, msgid = make_message("too big over tcp", body=("y" * 70 + "\n") * 300)
        result = send(over_tcp, CLIENT, data)
        assert (result.stage, result.code, result.enhanced) == ("data", 552, "5.3.4"), result
        assert_not_delivered(over_tcp, sink, msgid.encode())


def test_unix_socket_for_root_only(sendmail, sink, mailwarden):
    """Sendmail's daemon talks to the filter as root (no ``confRUN_AS_USER``
    here, nor in Debian's sendmail.mc): a socket no other user may write to
    will do."""
    mw = mailwarden({**UNTRUSTED, "milter": {"socket_mode": "0600"}})
    assert mw.socket_path.stat().st_mode & 0o777 == 0o600
    got, _ = deliver(sendmail, sink, mw, CLIENT, "root only socket")
    assert our_ar(got)


# -- mailwarden down --------------------------------------------------------------

def test_tempfail_while_mailwarden_is_down(sendmail, sink, mailwarden):
    """``F=T``: no unchecked mail while the filter cannot be reached, and mail
    flows again once it is back, without touching Sendmail."""
    mw = mailwarden(UNTRUSTED)
    mw.stop()
    data, msgid = make_message("while down")
    result = send(sendmail, CLIENT, data)
    # Sendmail greets and answers EHLO, then tempfails the transaction
    assert (result.stage, result.code, result.enhanced) == ("mail", 451, "4.3.2"), result
    assert_not_delivered(sendmail, sink, msgid.encode())
    mw.start()
    got, qid = deliver(sendmail, sink, mw, CLIENT, "back again")
    assert our_ar(got)


# -- SMTP AUTH and the macros -------------------------------------------------------

def test_authenticated_submission(sendmail, sink, mailwarden, tmp_path):
    """Sendmail's own AUTH (PLAIN after STARTTLS): ``{auth_authen}`` and
    ``{tls_version}`` reach mailwarden at MAIL FROM, so the login may relay
    and use its own address only."""
    logins = tmp_path / "logins"
    logins.write_text("alice: alice@sm-local.example\n")
    mw = mailwarden({"relay": {"local_domains": "sm-local.example",
                               "trusted_networks": "127.0.0.1/32"},
                     "check.submission": {"sender_login_map": str(logins)}})
    alice = {"auth": ("alice", LOGINS["alice"]), "starttls": True,
             "mail_from": "alice@sm-local.example", "rcpts": ["friend@elsewhere.example"]}
    got, qid = deliver(sendmail, sink, mw, LAPTOP, "submitted", **alice)
    (ours,) = our_ar(got)
    assert re.search(r"\bauth=pass smtp\.auth=alice\b", ours), ours
    assert re.search(rf"INFO {qid}: action=accept .* auth=alice\b", mw.log_text()), \
        explain(sendmail, mw)
    # another user's address
    data, msgid = make_message("not hers", sender="bob@sm-local.example")
    result = send(sendmail, LAPTOP, data, **{**alice, "mail_from": "bob@sm-local.example"})
    assert (result.stage, result.code, result.enhanced) == ("mail", 553, "5.7.1"), result
    # the same login without TLS: refused, the password crossed in clear
    data, msgid = make_message("no tls", sender="alice@sm-local.example")
    result = send(sendmail, LAPTOP, data, **{**alice, "starttls": False})
    assert (result.stage, result.code, result.enhanced) == ("mail", 530, "5.7.0"), result
    # a wrong password is Sendmail's refusal; unauthenticated, no relay
    data, msgid = make_message("wrong password")
    result = send(sendmail, LAPTOP, data, **{**alice, "auth": ("alice", "guess")})
    assert (result.stage, result.code) == ("auth", 535), result
    result = send(sendmail, LAPTOP, data, starttls=True, mail_from="alice@sm-local.example",
                  rcpts=["friend@elsewhere.example"])
    assert (result.stage, result.code) == ("rcpt", 554), result
    assert_not_delivered(sendmail, sink, msgid.encode())


def test_our_host_name_from_macro_j(sendmail, sink, mailwarden):
    """Sendmail names itself in ``j``: a client that says it is
    ``mta.sendmail.test`` is caught, although mailwarden's own host has
    another name.  Sendmail answers EHLO itself and gives the filter's
    refusal of the HELO to the next command (Postfix gives it to EHLO)."""
    mw = mailwarden({**UNTRUSTED, "check.helo": {"reject": "HELO_OUR_NAME"}})
    data, msgid = make_message("helo is us")
    result = send(sendmail, CLIENT, data, helo=SENDMAIL_HOSTNAME)
    assert (result.stage, result.code, result.enhanced) == ("mail", 550, "5.7.1"), \
        f"{result}{explain(sendmail, mw)}"
    assert "our own host name" in result.text
    assert_not_delivered(sendmail, sink, msgid.encode())


# -- the TLS session (the tls check) ----------------------------------------------------

def test_the_tls_session_reaches_mailwarden(sendmail, sink, mailwarden):
    """Sendmail gives the TLS macros mailwarden asks for at MAIL FROM (nine
    names in that list; Sendmail takes up to 50): x-tls with the version,
    cipher and bits the client negotiated, x-tls=none in cleartext, and a
    listed sender in cleartext gets mailwarden's 451."""
    mw = mailwarden({**UNTRUSTED, "check.tls": {"require_from": "tls-required.example"}})
    data, msgid = make_message("over TLS through sendmail")
    result = send(sendmail, CLIENT, data, starttls=True)
    assert result.accepted, f"{result}{explain(sendmail, mw)}"
    cipher, version, bits = result.tls
    (ours,) = our_ar(sink.wait_for_match(msgid.encode(), timeout=30))
    assert re.sub(r"\s+", " ", ours).endswith(
        f"x-tls=pass smtp.version={version} smtp.cipher={cipher} smtp.bits={bits}"), ours
    got, _qid = deliver(sendmail, sink, mw, CLIENT, "in clear through sendmail")
    (ours,) = our_ar(got)
    assert ours.rstrip().endswith("x-tls=none"), ours
    data, msgid = make_message("listed, in clear", sender="alerts@tls-required.example")
    result = send(sendmail, CLIENT, data, mail_from="alerts@tls-required.example")
    assert (result.stage, result.code, result.enhanced) == ("mail", 451, "4.7.0"), \
        f"{result}{explain(sendmail, mw)}"
    assert_not_delivered(sendmail, sink, msgid.encode())
