"""auth: SMTP AUTH reported in Authentication-Results, nothing decided."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.authresults import HEADER
from mailwarden.checks import registry
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

from .foundationcase import BASE, MESSAGE
from .authcase import strict_parse

ONLY_AUTH = {"auth": registry()["auth"]}


def run(**kw):
    cfg = loads(BASE, registry=ONLY_AUTH)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend("")),
                    hostname="mx.test.example", registry=ONLY_AUTH)
    try:
        verdict, _, msg = run_offline(engine, client_ip="198.51.100.7", message=MESSAGE,
                                      mail_from="a@sender.example", rcpts=["b@test.example"],
                                      **kw)
        if msg is not None:
            msg.close()
        return verdict
    finally:
        engine.close()


def test_an_authenticated_client_is_reported_with_its_login():
    verdict = run(auth_user="alice")
    (result,) = [r for r in verdict.results if r.check == "auth"]
    assert (result.result, result.symbol, result.properties) == (
        "pass", "AUTH_PASS", (("smtp.auth", "alice"),))
    assert verdict.action == "accept"
    assert "auth=pass smtp.auth=alice" in dict(verdict.headers_added)[HEADER]


def test_an_unauthenticated_client_gets_no_auth_entry():
    verdict = run()
    assert not [r for r in verdict.results if r.check == "auth"]
    assert "auth=" not in dict(verdict.headers_added)[HEADER]


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_a_login_decides_nothing(login):
    """Whatever the login text, auth only reports: the message is accepted
    and the header reads back as one auth=pass and nothing else."""
    verdict = run(auth_user=login)
    assert verdict.action == "accept"
    header = strict_parse(dict(verdict.headers_added)[HEADER])
    assert [(r.method, r.result) for r in header.results] == [("auth", "pass")]
