"""relay through the engine, on the fake resolver: no open relay, whatever
the address tricks."""

import pytest

from mailwarden.config import ConfigError, loads
from mailwarden.model import Stage

from .outboundcase import BASE, make_message, of, run  # noqa: F401
from tests.hostile import RELAY_TRICKS as TRICKS


# -- relay -------------------------------------------------------------------

@pytest.mark.parametrize("rcpt", TRICKS)
def test_relay_tricks_refused_for_untrusted_clients(rcpt):
    verdict = run(BASE, rcpts=[rcpt])
    assert verdict.action == "reject"
    assert verdict.reply.line() == "554 5.7.1 Relay access denied"
    assert verdict.stage is Stage.RCPT


@pytest.mark.parametrize("rcpt", TRICKS)
def test_relay_tricks_accepted_from_authenticated_clients(rcpt):
    verdict = run(BASE, rcpts=[rcpt], auth_user="alice", tls_version="TLSv1.3")
    assert verdict.action not in ("reject", "tempfail"), verdict.reply
    assert not of(verdict, "relay")


def test_trusted_network_may_relay():
    verdict = run(BASE, client_ip="127.0.0.1", rcpts=[TRICKS[0]])
    assert verdict.action not in ("reject", "tempfail")


def test_local_recipient_accepted_from_anyone():
    verdict = run(BASE, rcpts=["Bob@OUTBOUND.example."], mail_from="x@elsewhere.example",
                  message=make_message("x@elsewhere.example"))
    assert verdict.action not in ("reject", "tempfail"), verdict.reply
    assert not of(verdict, "relay")


def test_only_the_foreign_recipient_is_refused():
    verdict = run(BASE, rcpts=["bob@outbound.example", "victim@elsewhere.example"],
                  mail_from="x@elsewhere.example", message=make_message("x@elsewhere.example"))
    assert verdict.stage is Stage.EOM
    assert verdict.action not in ("reject", "tempfail")
    assert not of(verdict, "relay")         # the refused recipient's result is dropped


def test_relay_off_without_local_domains():
    text = "[authserv]\nid = mx.test.example\n"
    verdict = run(text, rcpts=["user%other.example@outbound.example"])
    assert not of(verdict, "relay")


def test_local_domains_file(tmp_path):
    path = tmp_path / "domains"
    path.write_text("# ours\nother.example\n.sub.example  # and below\n")
    text = BASE + f"local_domains_file = {path}\n"
    cfg = loads(text)
    assert "other.example" in cfg.relay.local and "a.sub.example" in cfg.relay.local
    assert "outbound.example" in cfg.relay.local
    verdict = run(text, rcpts=["u@a.sub.example"], mail_from="x@elsewhere.example",
                  message=make_message("x@elsewhere.example"))
    assert not of(verdict, "relay")


def test_local_domains_file_errors_are_located(tmp_path):
    path = tmp_path / "domains"
    path.write_text("good.example\nbad..example\n")
    with pytest.raises(ConfigError) as err:
        loads(BASE + f"local_domains_file = {path}\n")
    assert str(err.value).startswith(f"{path}:2:")
    with pytest.raises(ConfigError) as err:
        loads(BASE + f"local_domains_file = {tmp_path}/missing\n")
    assert "[relay] local_domains_file:" in str(err.value)
    assert "missing" in str(err.value)
    with pytest.raises(ConfigError) as err:
        loads(BASE.replace("local_domains = outbound.example", "local_domains = [1.2.3.4]"))
    assert "[relay] local_domains:" in str(err.value)
