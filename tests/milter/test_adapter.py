"""The pymilter adapter, driven through pymilter's callback layer."""

import Milter
import pytest

from mailwarden.checks import Check
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine
from mailwarden.milter import USED_ACTIONS
from mailwarden.model import Reply
from tests.milter.miltertest import Session, foundation_registry, make_engine

BASE = "[authserv]\nid = mx.test.example\n"
ZONE = """
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
"""
MSG = (b"From: a@sender.example\r\n"
       b"Authentication-Results: other.example; spf=pass\r\n"
       b"Authentication-Results: mx.test.example; dkim=pass\r\n"
       b"Subject: hi\r\n\r\nbody\r\n")


class Stops(Check):
    """Does what the X-Do header (or the HELO name) asks, to exercise each verdict."""
    name = "stops"
    symbols = {"STOPS_SPAM": 12.0, "STOPS_HAM": 0.0, "STOPS_HELO": 0.0, "STOPS_RCPT": 0.0,
               "STOPS_BIG": 6.0}

    def on_helo(self, ctx):
        if ctx.conn.helo == "reject.me":
            return self.result("fail", "STOPS_HELO", reply=Reply("reject", 550, "5.7.1", "no"))
        return None

    def on_rcpt(self, ctx):
        if ctx.rcpt.startswith("tempfail"):
            return self.result("fail", "STOPS_RCPT",
                               reply=Reply("tempfail", 450, "4.2.0", "later 100%"))
        return None

    def on_eom(self, ctx):
        want = (ctx.msg.header_texts("X-Do") or [""])[0]
        if want == "discard":
            return self.result("fail", "STOPS_SPAM", reply=Reply("discard", 550, "5.7.1", "x"))
        if want == "quarantine":
            return [self.result("fail", "STOPS_SPAM"), self.result("fail", "STOPS_HAM")]
        if want == "reject":
            return [self.result("fail", "STOPS_SPAM"), self.result("fail", "STOPS_BIG")]
        if want == "header":
            return self.result("fail", "STOPS_BIG")
        return self.result("pass", "STOPS_HAM")


def stops_engine(text=BASE):
    reg = foundation_registry(stops=Stops)
    cfg = loads(text, registry=reg)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)), registry=reg,
                  hostname="mx.test.example")


@pytest.fixture
def engine():
    cfg = loads(BASE + "[check.iplist]\nblock = 203.0.113.0/24\n[check.size]\nmax_size = 2K\n",
                registry=foundation_registry())
    e = make_engine(cfg, ZONE)
    yield e
    e.close()


def full(session, message=MSG, sender="a@sender.example", rcpt="b@test.example"):
    assert session.connect("198.51.100.7", "mail.sender.example") == Milter.CONTINUE
    assert session.helo("mail.sender.example") == Milter.CONTINUE
    assert session.mail(sender) == Milter.CONTINUE
    assert session.rcpt(rcpt) == Milter.CONTINUE
    return session.data(message)


def test_negotiates_only_the_actions_it_uses(engine):
    s = Session(engine)
    s.ctx._negotiate()
    # the actions it takes, and the macro lists it asks for (offered here)
    assert s.ctx._opts[0] == USED_ACTIONS | Milter.SETSYMLIST
    assert s.ctx._protocol & Milter.P_HDR_LEADSPC          # leading space is asked for
    assert s.ctx._protocol & Milter.P_NR_HDR                # header needs no reply
    assert s.ctx._protocol & Milter.P_NOEOH                 # end of headers: not asked for


def test_asks_for_the_macros_it_reads(engine):
    s = Session(engine)
    s.ctx._negotiate()
    lists = s.ctx._symlist
    assert lists[Milter.M_CONNECT] == {b"j", b"{client_addr}"}
    assert lists[Milter.M_ENVFROM] == {b"i", b"{auth_type}", b"{auth_authen}",
                                       b"{tls_version}", b"{cipher}", b"{cipher_bits}",
                                       b"{cert_subject}", b"{cert_issuer}", b"{verify}"}
    assert lists[Milter.M_EOM] >= {b"i", b"{auth_authen}"}
    # nothing read there: the MTA's own lists stay
    assert lists[Milter.M_EOH] is None and lists[Milter.M_ENVRCPT] is None


def test_an_mta_without_setsymlist_keeps_its_own_macro_lists(engine, monkeypatch):
    from Milter.testctx import TestCtx
    # _negotiate reads the class's list (and the milter writes into it)
    monkeypatch.setattr(TestCtx, "default_opts",
                        [Milter.CURR_ACTS & ~Milter.SETSYMLIST, 0x1fffff, 0, 0])
    s = Session(engine)
    s.ctx._negotiate()
    assert s.ctx._opts[0] == USED_ACTIONS
    assert all(names is None for names in s.ctx._symlist)


def test_accept_adds_results_and_removes_forged(engine):
    s = Session(engine, {"i": "4QUEUE", "j": "mx.test.example"})
    assert full(s) == Milter.ACCEPT
    added = [(n, idx) for n, v, idx in s.ctx.added]
    assert added == [("X-Mailwarden-Status", 0), ("Authentication-Results", 0)]
    ar = dict((n, v) for n, v, _ in s.ctx.added)["Authentication-Results"]
    # leading-space values are negotiated: the space after the colon is ours
    assert ar.startswith(" mx.test.example;\n\tiprev=pass policy.iprev=198.51.100.7")
    assert s.ctx.changed == [("Authentication-Results", 2, "")]    # ours, second of its name


def test_incoming_status_header_removed_as_forged_results_are(engine):
    forged = (b"X-Mailwarden-Status: No, score=-50.00 required=5.00\r\n"
              b"X-MAILWARDEN-STATUS: No\r\n")
    s = Session(engine, {"i": "4QUEUE", "j": "mx.test.example"})
    assert full(s, message=forged + MSG) == Milter.ACCEPT
    assert sorted(s.ctx.changed) == [("Authentication-Results", 2, ""),
                                     ("X-MAILWARDEN-STATUS", 2, ""),
                                     ("X-Mailwarden-Status", 1, "")]
    # the last occurrence first: indexes count occurrences of each name
    status = [i for n, i, _ in s.ctx.changed if n.lower() == "x-mailwarden-status"]
    assert status == [2, 1]
    ours = [v for n, v, _ in s.ctx.added if n == "X-Mailwarden-Status"]
    assert len(ours) == 1 and "-50.00" not in ours[0]


def test_blocked_client_rejected_at_connect(engine):
    s = Session(engine)
    assert s.connect("203.0.113.9") == Milter.REJECT
    assert s.reply == ("554", "5.7.1", "Client address blocked by local policy [203.0.113.9]")


def test_size_declared_rejected_at_mail(engine):
    s = Session(engine)
    s.connect("198.51.100.7")
    assert s.mail("a@sender.example", "SIZE=999999", "BODY=8BITMIME") == Milter.REJECT
    assert s.reply[:2] == ("552", "5.3.4")


def test_size_received_rejected_during_body(engine):
    s = Session(engine)
    rc = full(s, MSG + b"x" * 5000)
    assert rc == Milter.REJECT and s.reply[:2] == ("552", "5.3.4")
    assert s.ctx.added == []


def test_a_new_mail_from_resets_the_message(engine):
    s = Session(engine)
    full(s)
    first = list(s.ctx.added)
    s.ctx.added.clear()
    s.ctx.changed.clear()
    assert s.mail("c@sender.example") == Milter.CONTINUE
    assert s.rcpt("d@test.example") == Milter.CONTINUE
    assert s.data(b"Subject: second\r\n\r\nx\r\n") == Milter.ACCEPT
    assert len(s.ctx.added) == len(first)
    assert s.ctx.changed == []            # the first message's forged header is gone with it


@pytest.mark.parametrize("do,code,reply", [
    ("header", Milter.ACCEPT, None),
    ("quarantine", Milter.ACCEPT, None),
    ("reject", Milter.REJECT, ("550", "5.7.1")),
    ("discard", Milter.DISCARD, None),
])
def test_each_end_of_message_verdict(do, code, reply):
    engine = stops_engine()
    s = Session(engine)
    rc = full(s, f"X-Do: {do}\r\n\r\nbody\r\n".encode())
    assert rc == code
    if reply:
        assert s.reply[:2] == reply
    if do == "quarantine":
        assert s.ctx.quarantined and "score" in s.ctx.quarantined
    if do == "header":
        status = dict((n, v) for n, v, _ in s.ctx.added)["X-Mailwarden-Status"]
        assert status.startswith(" Yes, score=6.00")
    engine.close()


def test_helo_and_recipient_stops_and_percent_in_reply():
    engine = stops_engine()
    s = Session(engine)
    s.connect("198.51.100.7")
    assert s.helo("reject.me") == Milter.REJECT
    assert s.helo("mail.sender.example") == Milter.CONTINUE     # a second HELO is judged anew
    s.mail("a@sender.example")
    assert s.rcpt("tempfail@test.example") == Milter.TEMPFAIL
    assert s.reply == ("450", "4.2.0", "later 100%%")            # libmilter wants % doubled
    assert s.rcpt("ok@test.example") == Milter.CONTINUE
    assert s.data(b"Subject: x\r\n\r\nx\r\n") == Milter.ACCEPT
    engine.close()


def test_dns_timeout_tempfails_at_end_of_message():
    cfg = loads(BASE + "[dns]\nmessage_deadline = 1s\n", registry=foundation_registry())
    engine = make_engine(cfg, "7.100.51.198.in-addr.arpa. TIMEOUT\n")
    s = Session(engine)
    assert full(s) == Milter.TEMPFAIL
    assert s.reply[:2] == ("451", "4.7.1")
    engine.close()


def test_authenticated_and_tls_macros_reach_the_engine(engine):
    seen = {}

    class Spy(Check):
        name = "spy"
        symbols = {"SPY": 0.0}

        def on_mail(self, ctx):
            seen.update(user=ctx.conn.auth_user, tls=ctx.conn.tls_version, tags=ctx.tags)

    reg = foundation_registry(spy=Spy)
    cfg = loads(BASE, registry=reg)
    e = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)), registry=reg)
    s = Session(e, {"{auth_authen}": "alice", "{tls_version}": "TLSv1.3", "{cipher}": "X"})
    full(s)
    assert seen["user"] == "alice" and seen["tls"] == "TLSv1.3"
    assert "authenticated" in seen["tags"]
    e.close()


def test_a_draining_milter_finishes_transactions_and_refuses_new_ones(engine):
    import threading
    from mailwarden.daemon import Drain

    drain = Drain()
    s = Session(engine, drain=drain)
    assert s.connect("198.51.100.7") == Milter.CONTINUE
    assert s.mail("a@sender.example") == Milter.CONTINUE
    assert drain.active == 1
    waiter = threading.Thread(target=drain.drain, args=(5.0,))
    waiter.start()
    while not drain.draining:
        pass
    assert Session(engine, drain=drain).connect("198.51.100.8") == Milter.TEMPFAIL
    assert waiter.is_alive()                        # still waiting for ours
    assert s.rcpt("b@test.example") == Milter.CONTINUE
    assert s.data(b"Subject: x\r\n\r\nbody\r\n") == Milter.ACCEPT
    waiter.join(5)
    assert not waiter.is_alive() and drain.active == 0
    assert s.mail("again@sender.example") == Milter.TEMPFAIL
    assert s.reply == ("451", "4.3.2", "Mail filter shutting down, please try again later")
