"""limits: per client network, sender, user and message; memory and Redis."""

import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.checks.limits import LimitsCheck
from mailwarden.engine import run_offline
from mailwarden.model import Connection, parse_client_address
from tests.unit.checkset import Engine, loads
from tests.redisserver import free_port

BASE = "[authserv]\nid = mx.test.example\n[check.iprev]\nenabled = no\n"
MESSAGE = b"From: a@sender.example\r\nSubject: test\r\n\r\nHello.\r\n"


class Clock:
    def __init__(self, now=1_700_000_040.0):
        self.now = now

    def __call__(self):
        return self.now


# victim.example sends from 192.0.2.10 and 192.0.2.11 only; bulk.example
# from 203.0.113.0/24
ZONE = ('victim.example. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all"\n'
        'bulk.example. IN TXT "v=spf1 ip4:203.0.113.0/24 -all"\n')


def engine_for(limits: str, extra: str = "", clock=None):
    cfg = loads(BASE + "[check.limits]\n" + limits + "\n" + extra)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                  clock=clock or Clock(), hostname="mx.test.example")


def send(engine, ip="198.51.100.7", rcpts=("b@test.example",), close=True, **kw):
    kw.setdefault("mail_from", "a@sender.example")
    verdict, conn, msg = run_offline(engine, client_ip=ip, rcpts=list(rcpts),
                                     message=MESSAGE, **kw)
    if close:
        engine.close_connection(conn)
    return verdict, conn


def symbols(verdict):
    return [r.symbol for r in verdict.results if r.check == "limits"]


def open_connection(engine, ip):
    conn = Connection(client_ip=parse_client_address(ip), client_name="unknown")
    return engine.connect(conn), conn


def test_concurrent_connections_per_ip_and_close_gives_back():
    engine = engine_for("concurrent_per_ip = 2")
    conns = []
    for _ in range(2):
        verdict, conn = open_connection(engine, "198.51.100.7")
        assert verdict is None
        conns.append(conn)
    verdict, third = open_connection(engine, "198.51.100.7")
    assert verdict.action == "tempfail"
    assert verdict.reply.line().startswith("421 4.7.0 ")
    assert symbols(verdict) == ["LIMIT_CONCURRENT_IP"]
    # another network is not affected
    assert open_connection(engine, "198.51.100.8")[0] is None
    engine.close_connection(third)            # refused: held nothing
    engine.close_connection(conns[0])
    assert open_connection(engine, "198.51.100.7")[0] is None
    engine.close()


def test_ipv6_clients_counted_per_64():
    engine = engine_for("concurrent_per_ip = 1")
    assert open_connection(engine, "2001:db8:1:2::5")[0] is None
    assert open_connection(engine, "IPv6:2001:db8:1:2::ffff")[0].action == "tempfail"
    assert open_connection(engine, "2001:db8:1:3::5")[0] is None
    engine.close()


def test_connection_rate_per_ip_with_moving_time():
    clock = Clock()
    engine = engine_for("connections_per_ip = 3/1m", clock=clock)
    actions = []
    for _ in range(4):
        verdict, _ = send(engine)
        actions.append(verdict.action)
    assert actions == ["accept", "accept", "accept", "tempfail"]
    clock.now += 30
    assert send(engine)[0].reply.line().startswith("421 4.7.0")
    clock.now += 31
    assert send(engine)[0].action == "accept"
    engine.close()


def test_over_limit_log_line_names_limit_and_counts(caplog):
    engine = engine_for("connections_per_ip = 1/1m")
    send(engine)
    with caplog.at_level(logging.WARNING, logger="mailwarden"):
        send(engine)
    engine.close()
    assert any("connections_per_ip exceeded for 198.51.100.7/32: 1 of 1 per 60s" in r.getMessage()
               for r in caplog.records)


def test_messages_per_sender():
    engine = engine_for("messages_per_sender = 2/1h")
    got = [send(engine, mail_from="A@Sender.example")[0] for _ in range(3)]
    assert [v.action for v in got] == ["accept", "accept", "tempfail"]
    assert got[2].reply.line().startswith("451 4.7.1 ")
    assert symbols(got[2]) == ["LIMIT_MESSAGES_SENDER"]
    # another sender, and the null sender, are not counted against it
    assert send(engine, mail_from="other@sender.example")[0].action == "accept"
    assert send(engine, mail_from="")[0].action == "accept"
    engine.close()


def test_forged_sender_from_many_networks_does_not_lock_out_the_victim(caplog):
    """Anyone may write MAIL FROM:<ceo@victim.example>: forgeries from 40
    networks fill only their own networks' counts, never the victim's."""
    engine = engine_for("messages_per_sender = 3/1h\nrecipients_per_sender = 5/1h")
    forged = []
    for i in range(40):
        for _ in range(4):                  # over the limit, from each network
            forged.append(send(engine, ip=f"198.51.{100 + i // 20}.{i % 20 + 1}",
                               mail_from="ceo@victim.example")[0].action)
    # each forging network is itself limited: 3 messages, then 451
    assert forged.count("accept") == 40 * 3 and forged.count("tempfail") == 40
    # the real ceo: from the addresses SPF gives it (a pass), and authenticated
    for ip in ("192.0.2.10", "192.0.2.11", "192.0.2.10"):
        verdict = send(engine, ip=ip, mail_from="ceo@victim.example")[0]
        assert verdict.action == "accept", verdict.reply
    assert send(engine, ip="198.51.100.1", mail_from="CEO@victim.example",
                auth_user="ceo")[0].action == "accept"
    # the SPF-passing sender has one count for all its addresses
    with caplog.at_level(logging.WARNING, logger="mailwarden"):
        verdict = send(engine, ip="192.0.2.11", mail_from="ceo@victim.example")[0]
    assert verdict.action == "tempfail" and symbols(verdict) == ["LIMIT_MESSAGES_SENDER"]
    assert any("messages_per_sender exceeded for <ceo@victim.example>: 3 of 3" in r.getMessage()
               for r in caplog.records)
    # a forger's refusal names its network
    with caplog.at_level(logging.WARNING, logger="mailwarden"):
        send(engine, ip="198.51.100.1", mail_from="ceo@victim.example")
    assert any("<ceo@victim.example> from 198.51.100.1/32" in r.getMessage()
               for r in caplog.records)
    engine.close()


def test_sender_counted_per_network_follows_ipv4_and_ipv6_prefixes():
    engine = engine_for("messages_per_sender = 1/1h\nipv4_prefix = 24")
    assert send(engine, ip="198.51.100.1", mail_from="x@elsewhere.example")[0].action == "accept"
    # the same /24: the same count
    assert send(engine, ip="198.51.100.2", mail_from="x@elsewhere.example")[0].action == \
        "tempfail"
    assert send(engine, ip="198.51.101.2", mail_from="x@elsewhere.example")[0].action == "accept"
    assert send(engine, ip="2001:db8:1:2::1", mail_from="x@elsewhere.example")[0].action == \
        "accept"
    assert send(engine, ip="2001:db8:1:2::2", mail_from="x@elsewhere.example")[0].action == \
        "tempfail"
    engine.close()


def test_recipients_per_sender_keyed_the_same_way():
    engine = engine_for("recipients_per_sender = 2/1h")
    two = ("r1@test.example", "r2@test.example")
    # forged from elsewhere: its own count, the victim's stays whole
    assert send(engine, ip="198.51.100.1", mail_from="ceo@victim.example", rcpts=two)[0] \
        .action == "accept"
    assert send(engine, ip="198.51.100.1", mail_from="ceo@victim.example")[0].action == \
        "tempfail"
    # SPF passes from both of the victim's addresses: one count for them
    assert send(engine, ip="192.0.2.10", mail_from="ceo@victim.example")[0].action == "accept"
    assert send(engine, ip="192.0.2.11", mail_from="ceo@victim.example")[0].action == "accept"
    verdict = send(engine, ip="192.0.2.10", mail_from="ceo@victim.example")[0]
    assert verdict.action == "tempfail" and symbols(verdict) == ["LIMIT_RECIPIENTS_SENDER"]
    engine.close()


@given(sender=st.text(max_size=40), other=st.text(max_size=40),
       user=st.text(max_size=12), net=st.sampled_from(["198.51.100.0/24", "2001:db8::/64", ""]))
@settings(max_examples=400, deadline=None)
def test_no_sender_text_names_another_counter(sender, other, user, net):
    """The counter of an unverified sender is never a verified one's, nor
    another network's, whatever the sender writes."""
    from mailwarden.checks.limits import sender_key
    unverified = sender_key(sender, network=net)[0]
    assert unverified != sender_key(other, spf_pass=True)[0]
    assert (unverified == sender_key(other, network=net)[0]) == (sender == other)
    if user:
        assert unverified != sender_key(other, user=user)[0]
        assert sender_key(sender, user=user)[0] != sender_key(other, spf_pass=True)[0]
        same = sender_key(sender, user=user)[0] == sender_key(other, user="x")[0]
        assert same == (user == "x" and sender == other)
    for elsewhere in ("203.0.113.0/24", "2001:db8:1::/64", ""):
        if elsewhere != net:
            assert unverified != sender_key(other, network=elsewhere)[0]


def test_recipients_per_sender_refuses_only_the_recipients_past_it():
    engine = engine_for("recipients_per_sender = 3/1h")
    verdict, _ = send(engine, rcpts=["r1@test.example", "r2@test.example"])
    assert verdict.action == "accept"
    verdict, _ = send(engine, rcpts=["r3@test.example", "r4@test.example"])
    # r3 admitted, r4 refused: the message still goes to r3
    assert verdict.action == "accept"
    verdict, _ = send(engine, rcpts=["r5@test.example"])
    assert verdict.action == "tempfail"
    assert verdict.reply.line().startswith("451 4.7.1 ")
    assert symbols(verdict) == ["LIMIT_RECIPIENTS_SENDER"]
    engine.close()


def test_per_user_limits_for_authenticated_clients():
    engine = engine_for("messages_per_user = 1/1h\nrecipients_per_user = 2/1h")
    assert send(engine, auth_user="alice", mail_from="x@a.example")[0].action == "accept"
    verdict = send(engine, auth_user="alice", mail_from="y@a.example")[0]
    assert symbols(verdict) == ["LIMIT_MESSAGES_USER"]
    assert verdict.reply.code == 451
    verdict = send(engine, auth_user="bob", rcpts=["1@t.example", "2@t.example", "3@t.example"])[0]
    assert verdict.action == "accept"
    engine.close()


def test_recipients_per_message_452():
    engine = engine_for("recipients_per_message = 2")
    conn = Connection(client_ip=parse_client_address("198.51.100.7"))
    engine.connect(conn)
    msg = engine.new_message(conn, "a@sender.example", {})
    assert engine.mail(conn, msg) is None
    assert engine.rcpt(conn, msg, "1@test.example") is None
    assert engine.rcpt(conn, msg, "2@test.example") is None
    verdict = engine.rcpt(conn, msg, "3@test.example")
    assert verdict.reply.line() == "452 4.5.3 Too many recipients in this message"
    assert msg.rcpts == ["1@test.example", "2@test.example"]
    engine.close()


def test_allowlisted_and_trusted_clients_are_exempt():
    engine = engine_for("connections_per_ip = 1/1m",
                        "[check.iplist]\nallow = 198.51.100.50\n")
    for _ in range(3):
        assert send(engine, ip="198.51.100.50")[0].action == "accept"
        assert send(engine, ip="127.0.0.1")[0].action == "accept"
    engine.close()


def test_exempt_is_configurable():
    engine = engine_for("connections_per_ip = 1/1m\nexempt =")
    send(engine, ip="127.0.0.1")
    assert send(engine, ip="127.0.0.1")[0].action == "tempfail"
    engine.close()


def test_rate_syntax_errors_are_located():
    from mailwarden.config import ConfigError
    with pytest.raises(ConfigError, match=r":6: \[check.limits\] connections_per_ip: expected"):
        loads(BASE + "[check.limits]\nconnections_per_ip = ten a minute\n")
    with pytest.raises(ConfigError, match=r"exempt: unknown client tag"):
        loads(BASE + "[check.limits]\nexempt = friends\n")


def test_store_failure_fails_open(caplog):
    cfg = loads(BASE + f"[state]\nbackend = redis\nurl = redis://127.0.0.1:{free_port()}/0\n"
                "timeout = 200ms\n[check.limits]\nconcurrent_per_ip = 1\n"
                "connections_per_ip = 1/1m\nmessages_per_sender = 1/1h\n")
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend("")),
                    clock=Clock(), hostname="mx.test.example")
    with caplog.at_level(logging.WARNING, logger="mailwarden"):
        verdicts = [send(engine)[0] for _ in range(3)]
    engine.close()
    for verdict in verdicts:
        assert verdict.action == "accept"
        assert "LIMITS_TEMPERROR" in symbols(verdict)
    assert any("state store failed, not limiting" in r.getMessage() for r in caplog.records)
    assert any("could not give back the connection slot" in r.getMessage()
               for r in caplog.records)


def test_two_engines_on_one_redis_admit_exactly_the_limit(redis_server):
    clock = Clock()
    limits = ("concurrent_per_ip = 3\nconnections_per_ip = 5/1m\n"
              "messages_per_sender = 7/1h\n")
    extra = f"[state]\nbackend = redis\nurl = {redis_server.url}\nprefix = two:\n"
    a = engine_for(limits, extra, clock=clock)
    b = engine_for(limits, extra, clock=clock)

    # concurrency: 3 open connections in all, whichever instance holds them
    opened = [open_connection(e, "198.51.100.7") for e in (a, b, a, b)]
    assert [v is None for v, _ in opened] == [True, True, True, False]
    a.close_connection(opened[0][1])
    verdict, conn = open_connection(b, "198.51.100.7")
    assert verdict is None
    for engine, (_, c) in ((b, opened[1]), (a, opened[2]), (b, (None, conn))):
        engine.close_connection(c)

    # connection rate: 5 of the 10 attempts alternating between instances
    admitted = 0
    for engine in (a, b) * 5:
        verdict, c = open_connection(engine, "198.51.100.9")
        admitted += verdict is None
        engine.close_connection(c)
    assert admitted == 5

    # messages per sender, from different client addresses its SPF gives it
    results = [send(e, ip=f"203.0.113.{i}", mail_from="bulk@bulk.example")[0].action
               for i, e in enumerate((a, b) * 6)]
    assert results.count("accept") == 7
    assert results[7:] == ["tempfail"] * 5
    a.close()
    b.close()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(8, 32),
       st.integers(16, 128))
def test_the_client_network_is_what_ip_network_would_write(ip, v4, v6):
    check = LimitsCheck(LimitsCheck.Options(ipv4_prefix=v4, ipv6_prefix=v6), None)
    prefix = v4 if ip.version == 4 else v6
    assert check._network(ip) == str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
