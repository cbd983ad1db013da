"""Who gets a DKIM signature, as the milter sees clients: Postfix's shapes of
an SMTP client, of sendmail(1) mail (``non_smtpd_milters``: localhost,
127.0.0.1, port 0) and of a client with no address (family unknown)."""

import socket

import Milter
import pytest

from mailwarden.checks import registry
from mailwarden.config import loads
from tests.milter.miltertest import Session, make_engine
from tests.unit.outboundcase import ZONE, keydir, make_message, sign_text  # noqa: F401

LOOPBACK = ("sign_trusted_networks = 127.0.0.1/32, ::1/128\n"
            "sign_trusted_domains = outbound.example\n")


def engine_for(text):
    return make_engine(loads(text), ZONE, registry=dict(registry()))


def session(engine, family, hostaddr, host="localhost", macros=None):
    s = Session(engine, macros=macros)
    assert s.ctx._negotiate() in (Milter.CONTINUE, Milter.ALL_OPTS)
    s.ctx._stage = Milter.M_CONNECT
    rc = Milter.connect_callback(s.ctx, host, family, hostaddr)
    s.ctx._stage = None
    assert rc == Milter.CONTINUE
    return s


def deliver(s, rcpt="friend@elsewhere.example"):
    assert s.helo("localhost") == Milter.CONTINUE
    assert s.mail("alice@outbound.example") == Milter.CONTINUE
    rc = s.rcpt(rcpt)
    if rc != Milter.CONTINUE:
        return rc, []
    rc = s.data(make_message())
    signatures = [v for name, v, _ in s.ctx.added if name == "DKIM-Signature"]
    s.close()
    return rc, signatures


# Postfix's non_smtpd_milters: "localhost", AF_INET 127.0.0.1, port 0
SENDMAIL_1 = (socket.AF_INET, ("127.0.0.1", 0))


@pytest.mark.parametrize("extra,signed", [("", False), (LOOPBACK, True)])
def test_sendmail_submission_signed_only_by_explicit_choice(keydir, extra, signed):  # noqa: F811
    engine = engine_for(sign_text(keydir, extra))
    try:
        rc, signatures = deliver(session(engine, *SENDMAIL_1))
        assert rc == Milter.ACCEPT                    # trusted: it may relay either way
        assert len(signatures) == (2 if signed else 0)
        # a loopback SMTP client is the same client to the milter
        rc, signatures = deliver(session(engine, socket.AF_INET, ("127.0.0.1", 40000)))
        assert len(signatures) == (2 if signed else 0)
        # another trusted loopback address is not in sign_trusted_networks
        rc, signatures = deliver(session(engine, socket.AF_INET, ("127.0.0.2", 40000)))
        assert rc == Milter.ACCEPT and signatures == []
    finally:
        engine.close()


@pytest.mark.parametrize("family,hostaddr,macros", [
    (socket.AF_UNSPEC, None, None),                          # libmilter: family unknown
    (socket.AF_UNSPEC, None, {"{client_addr}": "unknown"}),
    (socket.AF_UNIX, "/run/local.sock", None),              # a local socket client
])
def test_client_without_an_address_is_not_trusted_nor_signed(keydir, family,  # noqa: F811
                                                             hostaddr, macros):
    everything = ("sign_trusted_networks = 0.0.0.0/0, ::/0\n"
                  "sign_trusted_domains = outbound.example\n")
    text = sign_text(keydir, everything).replace("trusted_networks = 127.0.0.0/8",
                                                 "trusted_networks = 0.0.0.0/0, ::/0")
    engine = engine_for(text)
    try:
        # not trusted: may not relay
        s = session(engine, family, hostaddr, macros=macros)
        assert s.helo("localhost") == Milter.CONTINUE
        assert s.mail("alice@outbound.example") == Milter.CONTINUE
        assert s.rcpt("friend@elsewhere.example") == Milter.REJECT
        s.close()
        # nor signed, writing to a local user
        rc, signatures = deliver(session(engine, family, hostaddr, macros=macros),
                                 rcpt="bob@outbound.example")
        assert rc == Milter.ACCEPT and signatures == []
        # the same configuration signs a client with an address
        rc, signatures = deliver(session(engine, socket.AF_INET, ("198.51.100.9", 40000)))
        assert len(signatures) == 2
    finally:
        engine.close()
