"""The engine: ordering, cycles, crashes, stage verdicts, the offline run."""

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.checks import Check, CheckOptions
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, EngineError, run_offline
from mailwarden.model import Reply

BASE = "[authserv]\nid = mx.test.example\n"


def make_registry(*classes):
    return {c.name: c for c in classes}


def engine_for(registry, text=BASE, zone=""):
    cfg = loads(text, registry=registry)
    return Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(zone)), registry=registry,
                  hostname="mx.test.example")


class Order(Check):
    log: list = []


def ordered(name, requires=(), stage="on_connect", symbol=None):
    sym = symbol or f"{name.upper()}_HIT"

    def run(self, ctx):
        seen = sorted({r.check for r in ctx.results})
        Order.log.append((name, seen))
        return self.result("pass", sym)

    return type(name, (Check,), {"name": name, "requires": requires, "symbols": {sym: 1.0},
                                 stage: run})


def test_checks_run_after_what_they_require():
    Order.log = []
    a = ordered("alpha", requires=("beta",))
    b = ordered("beta", requires=("gamma",))
    c = ordered("gamma")
    engine = engine_for(make_registry(a, b, c))
    verdict, conn, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                   rcpts=["c@d.example"], message=b"Subject: x\r\n\r\nx\r\n")
    names = [n for n, _ in Order.log]
    assert names == ["gamma", "beta", "alpha"]
    assert dict(Order.log)["alpha"] == ["beta", "gamma"]
    assert verdict.action == "accept" and verdict.score == 3.0


def test_a_cycle_is_refused_at_start_up():
    a = ordered("alpha", requires=("beta",))
    b = ordered("beta", requires=("alpha",))
    with pytest.raises(EngineError, match="cycle: alpha -> beta -> alpha"):
        engine_for(make_registry(a, b))


def test_an_unknown_requirement_is_refused():
    a = ordered("alpha", requires=("nosuch",))
    with pytest.raises(EngineError, match="unknown check nosuch"):
        engine_for(make_registry(a))


class Crashing(Check):
    name = "crashy"
    method = "crashy"
    symbols = {"CRASHY_OK": 0.0}

    def on_eom(self, ctx):
        raise KeyError("boom")


def test_a_crashing_check_is_a_temperror_with_a_log_line(caplog):
    engine = engine_for(make_registry(Crashing))
    with caplog.at_level("ERROR", logger="mailwarden"):
        verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                    rcpts=["c@d.example"], message=b"Subject: x\r\n\r\nx\r\n",
                                    queue_id="4ABCDE")
    result = verdict.results[0]
    assert result.result == "temperror" and result.symbol == "CRASHY_ERROR"
    assert verdict.action == "tempfail" and verdict.reply.code == 451
    assert any("4ABCDE: check crashy crashed at eom: KeyError" in r.getMessage()
               for r in caplog.records)


def test_temperror_action_follows_trust_class():
    text = BASE + "[policy]\ntemperror_action = accept\n"
    engine = engine_for(make_registry(Crashing), text)
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                rcpts=["c@d.example"], message=b"\r\n")
    assert verdict.action == "accept"
    engine = engine_for(make_registry(Crashing))
    verdict, _, _ = run_offline(engine, client_ip="127.0.0.1", mail_from="a@b.example",
                                rcpts=["c@d.example"], message=b"\r\n")
    assert verdict.action == "accept"          # trusted network: accept by default
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", auth_user="alice",
                                mail_from="a@b.example", rcpts=["c@d.example"], message=b"\r\n")
    assert verdict.action == "accept"          # authenticated: accept by default
    text = BASE + "[check.crashy]\ntempfail_on_error = no\n"
    engine = engine_for(make_registry(Crashing), text)
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                rcpts=["c@d.example"], message=b"\r\n")
    assert verdict.action == "accept"


# -- trust ---------------------------------------------------------------------

def _trust_of(engine, client_ip, auth_user=""):
    from mailwarden.model import Connection, parse_client_address
    return engine.trust(Connection(client_ip=parse_client_address(client_ip),
                                   auth_user=auth_user))


@pytest.mark.parametrize("address", [None, "", "unknown", "localhost", "[UNAVAILABLE]",
                                     "IPv6:", "127.0.0.1.", "/run/x.sock"])
def test_an_unknown_client_address_is_never_trusted(address):
    engine = engine_for(make_registry())
    try:
        assert _trust_of(engine, address) == "other"
        # an authenticated client is authenticated, whatever its address
        assert _trust_of(engine, address, auth_user="alice") == "authenticated"
        # the loopback a trusted network holds stays trusted, as Postfix
        # presents sendmail(1) mail (non_smtpd_milters): localhost[127.0.0.1]
        assert _trust_of(engine, "127.0.0.1") == "trusted"
        assert _trust_of(engine, "IPv6:::1") == "trusted"
        assert _trust_of(engine, "198.51.100.1") == "other"
    finally:
        engine.close()


def test_an_unknown_client_address_is_not_trusted_even_with_no_trusted_networks():
    engine = engine_for(make_registry(), BASE + "[relay]\ntrusted_networks =\n")
    try:
        assert _trust_of(engine, None) == "other"
        assert _trust_of(engine, "127.0.0.1") == "other"
    finally:
        engine.close()


@pytest.fixture(scope="module")
def trust_engine():
    engine = engine_for(make_registry())
    yield engine
    engine.close()


@given(text=st.text(max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_unreadable_client_address_text_is_other(trust_engine, text):
    from mailwarden.model import parse_client_address
    ip = parse_client_address(text)
    trust = _trust_of(trust_engine, text)
    if ip is None:
        assert trust == "other"
    else:
        assert trust == ("trusted" if ip in trust_engine.config.relay.trusted_networks
                         else "other")


@dataclass(frozen=True)
class GateOptions(CheckOptions):
    pass


class RcptGate(Check):
    """Refuses recipients at other.example, scores nothing else."""
    name = "gate"
    symbols = {"GATE_REFUSED": 9.0}

    def on_rcpt(self, ctx):
        if ctx.rcpt.endswith("@other.example"):
            return self.result("fail", "GATE_REFUSED", "not ours",
                               reply=Reply("reject", 554, "5.7.1", "Relay access denied"))
        return None


def test_a_refused_recipient_does_not_judge_the_message():
    engine = engine_for(make_registry(RcptGate))
    verdict, conn, msg = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                     rcpts=["x@other.example", "y@ours.example"],
                                     message=b"Subject: x\r\n\r\nx\r\n")
    assert verdict.action == "accept" and verdict.score == 0
    assert msg.rcpts == ["y@ours.example"]
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                rcpts=["x@other.example"], message=b"\r\n")
    assert verdict.action == "reject" and verdict.reply.line() == "554 5.7.1 Relay access denied"


class Scorer(Check):
    name = "scorer"
    symbols = {"SCORE_A": 6.0, "SCORE_B": 5.0, "SCORE_C": 5.0}

    def on_eom(self, ctx):
        wanted = ctx.msg.header_texts("X-Want")
        return [self.result("fail", s, "asked") for s in wanted[0].split()] if wanted else None


@pytest.mark.parametrize("symbols,action,code", [
    ("", "accept", None),
    ("SCORE_A", "add_header", None),
    ("SCORE_A SCORE_B", "quarantine", None),
    ("SCORE_A SCORE_B SCORE_C", "reject", 550),
    ("SCORE_A SCORE_A", "add_header", None),       # a symbol counts once
])
def test_thresholds(symbols, action, code):
    engine = engine_for(make_registry(Scorer))
    msg = f"X-Want: {symbols}\r\n\r\nbody\r\n".encode()
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                rcpts=["c@d.example"], message=msg)
    assert verdict.action == action
    assert (verdict.reply.code if verdict.reply else None) == code
    if action in ("accept", "add_header", "quarantine"):
        names = [n for n, _ in verdict.headers_added]
        assert names == ["Authentication-Results", "X-Mailwarden-Status"]
        status = dict(verdict.headers_added)["X-Mailwarden-Status"]
        assert status.startswith("Yes" if action != "accept" else "No")


def test_dry_run_never_rejects_but_says_what_it_would_do():
    engine = engine_for(make_registry(Scorer), BASE + "[policy]\ndry_run = yes\n")
    msg = b"X-Want: SCORE_A SCORE_B SCORE_C\r\n\r\nbody\r\n"
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                rcpts=["c@d.example"], message=msg)
    assert verdict.action == "add_header" and verdict.decided == "reject"
    assert verdict.reply is None
    out = verdict.to_json(engine.config.scores)
    assert out["action"] == "add_header" and out["dry_run_action"] == "reject"


def test_the_policy_keeps_a_refusal_before_a_tempfail_whatever_their_order():
    """One check's 4xx (a limit, TLS required) never turns another's 5xx
    into a retry."""
    from mailwarden.model import Result, Stage
    from mailwarden.policy import Policy
    cfg = loads("[authserv]\nid = mx.test.example\n")
    policy = Policy(cfg.policy, cfg.scores)
    tempfail = Result(check="limits", result="fail", symbol="LIMIT_MESSAGES_SENDER",
                      reply=Reply("tempfail", 451, "4.7.1", "Too many messages"))
    reject = Result(check="dmarc", result="fail", symbol="DMARC_FAIL_REJECT",
                    reply=Reply("reject", 550, "5.7.1", "DMARC"))
    for results in ([tempfail, reject], [reject, tempfail]):
        verdict = policy.decide(results, "other", Stage.EOM, final=True)
        assert verdict.reply.code == 550 and verdict.reason.startswith("dmarc:")
    verdict = policy.decide([tempfail], "other", Stage.MAIL, final=False)
    assert verdict.reply.code == 451


def test_independent_checks_of_one_stage_run_in_parallel():
    import threading
    barrier = threading.Barrier(2, timeout=5)

    def waiting(name):
        sym = f"{name.upper()}_HIT"

        def on_connect(self, ctx):
            barrier.wait()        # both must be running at once to get past this
            return self.result("pass", sym)
        return type(name, (Check,), {"name": name, "symbols": {sym: 0.0},
                                     "on_connect": on_connect})

    engine = engine_for(make_registry(waiting("left"), waiting("right")))
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1", mail_from="a@b.example",
                                rcpts=["c@d.example"], message=b"\r\n")
    assert [r.check for r in verdict.results] == ["left", "right"]


class SlowClient(Check):
    """Looks something up at MAIL FROM and again at end of message."""
    name = "lookups"
    symbols = {"LOOKUP_OK": 0.0, "LOOKUP_LATE": 0.0}

    def on_mail(self, ctx):
        return self.result("pass", "LOOKUP_OK") if ctx.dns.query("a.example", "A").ok else None

    def on_eom(self, ctx):
        answer = ctx.dns.query("b.example", "A")
        return self.result("pass" if answer.ok else "temperror",
                           "LOOKUP_OK" if answer.ok else "LOOKUP_LATE")


def test_a_slow_client_does_not_use_up_the_message_deadline():
    from mailwarden.model import Connection

    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock = Clock()
    registry = make_registry(SlowClient)
    cfg = loads(BASE + "[dns]\nmessage_deadline = 1s\n", registry=registry)
    zone = "a.example. A 192.0.2.1\nb.example. A 192.0.2.2\n"
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(zone), clock=clock),
                    registry=registry, hostname="mx.test.example")
    conn = Connection()
    msg = engine.new_message(conn, "a@b.example", {})
    assert engine.mail(conn, msg) is None
    clock.now += 120                   # the client sends its body for two minutes
    verdict = engine.eom(conn, msg)
    assert [r.symbol for r in verdict.results] == ["LOOKUP_OK", "LOOKUP_OK"]
    engine.close()


def lookup_check(name, qname, swallow=False, replayable=True, calls=None):
    """A connect check that looks ``qname`` up; ``swallow`` catches everything
    around the lookup, as some libraries do."""
    sym_ok, sym_no = f"{name.upper()}_FOUND", f"{name.upper()}_MISSING"

    def on_connect(self, ctx):
        if calls is not None:
            calls.append(name)
        try:
            found = ctx.dns.query(qname, "A").ok
        except BaseException:           # noqa: B036 -- what a careless library does
            if not swallow:
                raise
            found = False
        return self.result("pass" if found else "fail", sym_ok if found else sym_no)
    return type(name, (Check,), {"name": name, "symbols": {sym_ok: 0.0, sym_no: 0.0},
                                 "replayable": replayable, "on_connect": on_connect})


def test_a_check_whose_lookup_is_not_cached_runs_again_and_gets_the_answer():
    zone = "a.example. A 192.0.2.1\nb.example. A 192.0.2.2\n"
    calls: list = []
    engine = engine_for(make_registry(lookup_check("left", "a.example", calls=calls),
                                      lookup_check("right", "b.example", swallow=True,
                                                   calls=calls)), zone=zone)
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1")
    assert [r.symbol for r in verdict.results] == ["LEFT_FOUND", "RIGHT_FOUND"]
    assert sorted(calls) == ["left", "left", "right", "right"]     # tried, then run
    calls.clear()
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1")  # now cached: once each
    assert [r.symbol for r in verdict.results] == ["LEFT_FOUND", "RIGHT_FOUND"]
    assert calls == ["left", "right"]
    engine.close()


def test_a_check_not_marked_replayable_runs_exactly_once():
    zone = "a.example. A 192.0.2.1\nb.example. A 192.0.2.2\n"
    calls: list = []
    engine = engine_for(make_registry(lookup_check("left", "a.example", calls=calls,
                                                   replayable=False),
                                      lookup_check("right", "b.example", calls=calls)),
                        zone=zone)
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1")
    assert [r.symbol for r in verdict.results] == ["LEFT_FOUND", "RIGHT_FOUND"]
    assert calls.count("left") == 1 and calls.count("right") == 2
    engine.close()


def test_lookups_of_independent_checks_not_cached_still_overlap():
    import threading
    barrier = threading.Barrier(2, timeout=5)

    class Meeting(ZoneBackend):
        def lookup(self, name, rdtype, timeout):
            barrier.wait()          # both lookups must be under way at once
            return super().lookup(name, rdtype, timeout)

    registry = make_registry(lookup_check("left", "a.example"),
                             lookup_check("right", "b.example"))
    cfg = loads(BASE, registry=registry)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=Meeting(
        "a.example. A 192.0.2.1\nb.example. A 192.0.2.2\n")), registry=registry,
        hostname="mx.test.example")
    verdict, _, _ = run_offline(engine, client_ip="198.51.100.1")
    assert [r.symbol for r in verdict.results] == ["LEFT_FOUND", "RIGHT_FOUND"]
    assert not barrier.broken
    engine.close()


def test_a_result_at_a_stage_is_a_copy_equal_but_for_the_stage():
    from mailwarden.model import Result, Stage
    found = Result(check="x", result="pass", symbol="X_HIT", properties=(("a", "b"),))
    placed = found.at_stage(Stage.MAIL)
    assert placed.stage is Stage.MAIL and found.stage is None
    assert placed == Result(check="x", result="pass", symbol="X_HIT", properties=(("a", "b"),),
                            stage=Stage.MAIL)
    assert placed.at_stage(Stage.MAIL) is placed
