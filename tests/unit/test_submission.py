"""submission through the engine: an authenticated user sends only as its
own addresses."""

import os

import pytest

from mailwarden.config import ConfigError, loads
from mailwarden.engine import run_offline
from mailwarden.model import Stage

from .outboundcase import (  # noqa: F401 (fixtures)
    BASE, OUTSIDE, engine_for, login_map, make_message, of, run, sub_text)


# -- submission ----------------------------------------------------------------

def test_own_address_accepted(login_map):
    verdict = run(sub_text(login_map), auth_user="alice")
    assert verdict.action not in ("reject", "tempfail"), verdict.reply
    verdict = run(sub_text(login_map), auth_user="ALICE", mail_from="Alice+lists@Outbound.Example",
                  message=make_message("alice.smith@outbound.example"))
    assert verdict.action not in ("reject", "tempfail"), verdict.reply


def test_another_users_address_refused_at_mail(login_map):
    verdict = run(sub_text(login_map), auth_user="bob", mail_from="alice@outbound.example")
    assert verdict.stage is Stage.MAIL
    assert verdict.reply.code == 553 and verdict.reply.xcode == "5.7.1"
    assert "bob" in verdict.reply.text


def test_forged_from_refused_at_end_of_data(login_map):
    verdict = run(sub_text(login_map), auth_user="bob", mail_from="b@bob.outbound.example",
                  message=make_message("Alice <alice@outbound.example>"))
    assert verdict.stage is Stage.EOM
    assert verdict.reply.line().startswith("553 5.7.1 From address <alice@outbound.example>")
    assert [r.symbol for r in of(verdict, "submission")] == ["SUBMISSION_FROM_MISMATCH"]


@pytest.mark.parametrize("from_header", [
    "alice@outbound.example, mallory@elsewhere.example",
    '"alice@outbound.example" <mallory@elsewhere.example>',
    "undisclosed",
])
def test_from_tricks_refused(login_map, from_header):
    verdict = run(sub_text(login_map), auth_user="alice", message=make_message(from_header))
    assert verdict.reply is not None and verdict.reply.code == 553, verdict.reply


def test_two_from_fields_refused(login_map):
    message = make_message(extra=b"From: mallory@elsewhere.example\r\n")
    verdict = run(sub_text(login_map), auth_user="alice", message=message)
    assert verdict.reply is not None and verdict.reply.code == 553


def test_unlisted_login_and_wildcards(login_map):
    verdict = run(sub_text(login_map), auth_user="carol")
    assert verdict.reply is not None and verdict.reply.code == 553
    verdict = run(sub_text(login_map), auth_user="robot", mail_from="any@elsewhere.example",
                  message=make_message("any@elsewhere.example"))
    assert verdict.action not in ("reject", "tempfail")


def test_null_sender_allowed_from_header_still_checked(login_map):
    verdict = run(sub_text(login_map), auth_user="alice", mail_from="")
    assert verdict.action not in ("reject", "tempfail")
    verdict = run(sub_text(login_map), auth_user="alice", mail_from="",
                  message=make_message("mallory@elsewhere.example"))
    assert verdict.reply is not None and verdict.reply.code == 553


def test_login_map_read_again_when_it_changes(login_map):
    engine, _ = engine_for(sub_text(login_map))
    try:
        def attempt():
            verdict, _, msg = run_offline(engine, client_ip=OUTSIDE, auth_user="carol",
                                          mail_from="carol@outbound.example",
                                          rcpts=["x@elsewhere.example"],
                                          message=make_message("carol@outbound.example"))
            msg.close()
            return verdict
        assert attempt().reply.code == 553
        login_map.write_text(login_map.read_text() + "carol: carol@outbound.example\n")
        os.utime(login_map, ns=(1, 2_000_000_000_000_000_000))
        assert attempt().action not in ("reject", "tempfail")
        # a broken new version is refused, the last good map stays
        login_map.write_text("carol carol@outbound.example\n")
        os.utime(login_map, ns=(1, 3_000_000_000_000_000_000))
        assert attempt().action not in ("reject", "tempfail")
    finally:
        engine.close()


def test_login_map_errors_are_located(tmp_path):
    path = tmp_path / "logins"
    path.write_text("alice: alice@outbound.example\nbob bob@outbound.example\n")
    with pytest.raises(ConfigError) as err:
        loads(sub_text(path))
    assert str(err.value).startswith(f"{path}:2:")
    with pytest.raises(ConfigError) as err:
        loads(sub_text(tmp_path / "nothing"))
    assert "[check.submission] sender_login_map:" in str(err.value)


def test_authenticated_without_tls_refused(login_map):
    verdict = run(sub_text(login_map, tls="yes"), auth_user="alice")
    assert verdict.stage is Stage.MAIL
    assert (verdict.reply.code, verdict.reply.xcode) == (530, "5.7.0")
    verdict = run(sub_text(login_map, tls="yes"), auth_user="alice", tls_version="TLSv1.3")
    assert verdict.action not in ("reject", "tempfail")


def test_unauthenticated_local_sender_scored():
    verdict = run(BASE, rcpts=["bob@outbound.example"])
    symbols = [r.symbol for r in of(verdict, "submission")]
    assert symbols == ["SUBMISSION_LOCAL_SENDER_UNAUTH"]
    assert verdict.score >= 3.0
    verdict = run(BASE, client_ip="127.0.0.1", rcpts=["bob@outbound.example"])
    assert not of(verdict, "submission")
