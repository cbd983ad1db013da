"""dkim_sign through the engine: who is signed, with which keys; signatures
verified by dkimpy against the public keys of ``tests/data/zones/outbound.zone``."""

import os
import shutil

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailwarden.config import ConfigError, loads
from mailwarden.engine import run_offline

from .outboundcase import (  # noqa: F401 (fixtures)
    BASE, KEYS, LOOPBACK_SIGNING, OUTSIDE, engine_for, keydir, login_map, make_message, of,
    run, sign_text, signed_message, sigs_of, verify_all)


# -- dkim_sign -----------------------------------------------------------------

@pytest.mark.parametrize("who,extra", [({"auth_user": "alice", "tls_version": "TLSv1.3"}, ""),
                                       ({"client_ip": "127.0.0.1"}, LOOPBACK_SIGNING)])
def test_outbound_mail_signed_rsa_and_ed25519(keydir, who, extra):
    message = make_message()
    verdict = run(sign_text(keydir, extra), message=message, **who)
    sigs, signed = signed_message(verdict, message)
    assert len(sigs) == 2
    algorithms = sorted(v.split("a=", 1)[1].split(";", 1)[0] for _, v in sigs)
    assert algorithms == ["ed25519-sha256", "rsa-sha256"]
    assert all("c=relaxed/relaxed" in v and "d=outbound.example" in v for _, v in sigs)
    assert verify_all(signed, 2) == [True, True]
    # From is oversigned: one more than it occurs
    h = sigs[0][1].replace("\n", "").split("h=", 1)[1].split(";", 1)[0]
    assert [x.strip() for x in h.split(":")].count("from") == 2


def test_signature_breaks_on_change(keydir):
    message = make_message()
    verdict = run(sign_text(keydir, LOOPBACK_SIGNING), message=message, client_ip="127.0.0.1")
    sigs, signed = signed_message(verdict, message)
    assert len(sigs) == 2 and verify_all(signed, 2) == [True, True]
    assert verify_all(signed.replace(b"Hello from us.", b"Hello from them."), 2) == [False, False]
    # an added From (the oversigning case) fails too
    tampered = signed.replace(b"From: Alice", b"From: mallory@elsewhere.example\r\nFrom: Alice")
    assert verify_all(tampered, 2) == [False, False]


def test_simple_canonicalization(keydir):
    message = make_message(extra=b"X-Folded: a\r\n   b  c\r\n")
    verdict = run(sign_text(keydir, "canonicalization = simple/simple\n" + LOOPBACK_SIGNING),
                  message=message, client_ip="127.0.0.1")
    sigs, signed = signed_message(verdict, message)
    assert all("c=simple/simple" in v for _, v in sigs)
    assert verify_all(signed, 2) == [True, True]


def test_inbound_mail_not_signed(keydir):
    verdict = run(sign_text(keydir), rcpts=["bob@outbound.example"])
    assert not [n for n, _ in verdict.headers_added if n == "DKIM-Signature"]
    assert not of(verdict, "dkim_sign")


def test_foreign_from_domain_not_signed(keydir):
    for extra, who in (("", {"auth_user": "alice", "tls_version": "TLSv1.3"}),
                       (LOOPBACK_SIGNING, {"client_ip": "127.0.0.1"})):
        assert sigs_of(run(sign_text(keydir, extra), **who))          # ours: signed
        verdict = run(sign_text(keydir, extra), message=make_message("someone@elsewhere.example"),
                      **who)
        assert not sigs_of(verdict)


def test_parent_domain_signing(keydir):
    message = make_message("news@lists.outbound.example")
    trusted = "sign_trusted_networks = 127.0.0.1\nsign_trusted_domains = .outbound.example\n"
    verdict = run(sign_text(keydir, trusted), client_ip="127.0.0.1", message=message)
    assert not [n for n, _ in verdict.headers_added if n == "DKIM-Signature"]
    verdict = run(sign_text(keydir, "sign_parent_domains = yes\n" + trusted),
                  client_ip="127.0.0.1", message=message)
    sigs, signed = signed_message(verdict, message)
    assert len(sigs) == 2 and all("d=outbound.example" in v for _, v in sigs)
    assert verify_all(signed, 2) == [True, True]


def test_trusted_client_not_signed_without_the_explicit_choice(keydir, caplog):
    """127/8 is trusted (it may relay) but not signed unless the INI says so:
    any local process reaches smtpd over loopback and sendmail(1) arrives as
    localhost[127.0.0.1]."""
    with caplog.at_level("INFO", logger="mailwarden"):
        verdict = run(sign_text(keydir), client_ip="127.0.0.1")
    assert verdict.action == "accept"
    assert not sigs_of(verdict) and not of(verdict, "dkim_sign")
    assert any("not signed for outbound.example (trusted client)" in r.getMessage()
               and "not in sign_trusted_networks" in r.getMessage() for r in caplog.records)
    # nor is mail from outside, even listed in sign_trusted_networks (not trusted)
    verdict = run(sign_text(keydir, "sign_trusted_networks = 0.0.0.0/0, ::/0\n"
                                    "sign_trusted_domains = outbound.example\n"),
                  rcpts=["bob@outbound.example"])
    assert not sigs_of(verdict)


@pytest.mark.parametrize("client_ip", ["", "unknown", "localhost", "[UNAVAILABLE]"])
def test_unknown_client_address_never_signed(keydir, client_ip):
    everything = ("sign_trusted_networks = 0.0.0.0/0, ::/0\n"
                  "sign_trusted_domains = outbound.example, .outbound.example\n")
    verdict = run(BASE.replace("127.0.0.0/8", "0.0.0.0/0, ::/0") + sign_text(keydir, everything)
                  [len(BASE):], client_ip=client_ip)
    assert not sigs_of(verdict)
    # the same configuration signs a known address
    assert len(sigs_of(run(BASE.replace("127.0.0.0/8", "0.0.0.0/0, ::/0")
                           + sign_text(keydir, everything)[len(BASE):],
                           client_ip="198.51.100.9"))) == 2


def test_trusted_signing_only_for_listed_networks_and_domains(keydir):
    text = sign_text(keydir, "sign_parent_domains = yes\n" + LOOPBACK_SIGNING)
    assert len(sigs_of(run(text, client_ip="127.0.0.1"))) == 2
    # trusted (127.0.0.0/8) but not in sign_trusted_networks
    assert not sigs_of(run(text, client_ip="127.0.0.2"))
    # a From domain signed by its parent's key, but not listed
    assert not sigs_of(run(text, client_ip="127.0.0.1",
                           message=make_message("news@lists.outbound.example")))
    # ".outbound.example" lists the subdomains too
    text = sign_text(keydir, "sign_parent_domains = yes\nsign_trusted_networks = 127.0.0.1\n"
                             "sign_trusted_domains = .outbound.example\n")
    assert len(sigs_of(run(text, client_ip="127.0.0.1",
                           message=make_message("news@lists.outbound.example")))) == 2
    assert not sigs_of(run(text, client_ip="127.0.0.1"))          # the parent is not listed
    # IPv6 loopback, as Postfix presents sendmail(1) mail with inet_protocols = ipv6
    text = sign_text(keydir, "sign_trusted_networks = ::1\n"
                             "sign_trusted_domains = outbound.example\n")
    assert not sigs_of(run(text, client_ip="127.0.0.1"))
    assert not sigs_of(run(text, client_ip="IPv6:::1"))         # not in [relay] trusted_networks
    assert len(sigs_of(run(text.replace("127.0.0.0/8", "127.0.0.0/8 ::1"),
                           client_ip="IPv6:::1"))) == 2


@pytest.mark.parametrize("extra,key,why", [
    ("sign_trusted_networks = 127.0.0.1\n", "sign_trusted_networks",
     "signs nothing without sign_trusted_domains"),
    ("sign_trusted_domains = outbound.example\n", "sign_trusted_domains",
     "signs nothing without sign_trusted_networks"),
    ("sign_trusted_networks = 127.0.0.1\nsign_trusted_domains = other.example\n",
     "sign_trusted_domains", "other.example has no key"),
    ("sign_trusted_networks = 127.0.0.1\nsign_trusted_domains = a.outbound.example\n",
     "sign_trusted_domains", "a.outbound.example has no key in keys (nor is sign_parent"),
    ("sign_trusted_networks = 127.0.0.1/40\nsign_trusted_domains = outbound.example\n",
     "sign_trusted_networks", "not an IP address or CIDR network"),
])
def test_trusted_signing_config_errors_are_located(keydir, extra, key, why):
    text = sign_text(keydir, extra)
    with pytest.raises(ConfigError) as err:
        loads(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith(key))) + 1
    assert f":{line}: [check.dkim_sign] {key}: {why}" in str(err.value), str(err.value)
    # with sign_parent_domains a subdomain is signed by its parent's key: accepted
    if "a.outbound.example" in extra:
        loads(sign_text(keydir, extra + "sign_parent_domains = yes\n"))


def login_text(keydir, login_map, submission="yes", extra=""):
    return sign_text(keydir, extra) + (f"[check.submission]\nenabled = {submission}\n"
                                       f"sender_login_map = {login_map}\n"
                                       "require_tls_for_auth = no\n")


@pytest.mark.parametrize("submission", ["yes", "no"])
def test_authenticated_signed_only_for_what_the_login_map_gives(keydir, login_map, submission,
                                                              caplog):
    text = login_text(keydir, login_map, submission)
    assert len(sigs_of(run(text, auth_user="alice"))) == 2
    assert len(sigs_of(run(text, auth_user="Alice", mail_from="alice+x@outbound.example",
                           message=make_message("alice.smith@outbound.example")))) == 2
    # bob owns only @bob.outbound.example: never signed as alice, whatever the
    # submission check decides (here off, or on and in dry run)
    with caplog.at_level("INFO", logger="mailwarden"):
        verdict = run(text, auth_user="bob", mail_from="b@bob.outbound.example")
    assert not sigs_of(verdict)
    assert any("not signed for outbound.example (authenticated client)" in r.getMessage()
               and "not owned by user bob" in r.getMessage() for r in caplog.records)
    verdict = run(text + "[policy]\ndry_run = yes\n", auth_user="bob",
                  mail_from="b@bob.outbound.example")
    assert verdict.action == "accept" and not sigs_of(verdict)
    # a login absent from the map, and the From tricks submission refuses
    assert not sigs_of(run(text, auth_user="carol"))
    for from_header in ("alice@outbound.example, mallory@elsewhere.example",
                        '"alice@outbound.example" <mallory@elsewhere.example>'):
        assert not sigs_of(run(text + "[policy]\ndry_run = yes\n", auth_user="alice",
                               message=make_message(from_header)))
    # a wildcard login is signed for any domain with a key
    assert len(sigs_of(run(text, auth_user="robot"))) == 2


def test_authenticated_signing_follows_a_changed_login_map(keydir, login_map):
    engine, _ = engine_for(login_text(keydir, login_map, "no"))
    try:
        def signed():
            verdict, _, msg = run_offline(engine, client_ip=OUTSIDE, auth_user="carol",
                                          mail_from="carol@outbound.example",
                                          rcpts=["x@elsewhere.example"],
                                          message=make_message("carol@outbound.example"))
            msg.close()
            return len(sigs_of(verdict))
        assert signed() == 0
        login_map.write_text(login_map.read_text() + "carol: carol@outbound.example\n")
        os.utime(login_map, ns=(1, 2_000_000_000_000_000_000))
        assert signed() == 2
    finally:
        engine.close()


_FROM_PARTS = st.sampled_from([
    "alice@outbound.example", "bob@outbound.example", "mallory@elsewhere.example",
    "alice@outbound.example.", "ALICE@OUTBOUND.EXAMPLE", "alice+x@outbound.example",
    '"alice@outbound.example"', "<alice@outbound.example>", "Alice", "(", ")", "<", ">",
    ",", ";", ":", '"', "@", " ", "\\", "=?utf-8?q?x?=", "\u00e9", "outbound.example",
    "\r\n ", "group:", "\t",
])


@given(parts=st.lists(_FROM_PARTS, max_size=8))
@example(parts=["alice@outbound.example"])
@example(parts=["bob@outbound.example"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_signed_from_is_always_the_logins_own(keydir_module, login_map_module, parts):
    """Whatever the From text, a signature for alice means its one address is
    alice's (the login map's rule), never another's."""
    from mailwarden.address import header_addresses
    from mailwarden.loginmap import parse_login_map
    engine = _sign_engine(keydir_module, login_map_module)
    value = "".join(parts) or "alice@outbound.example"
    message = make_message().replace(b"From: Alice <alice@outbound.example>",
                                     b"From: " + value.encode("utf-8"))
    verdict, _, msg = run_offline(engine, client_ip=OUTSIDE, auth_user="alice",
                                  mail_from="alice@outbound.example",
                                  rcpts=["x@elsewhere.example"], message=message)
    if msg is not None:
        msg.close()
    if value in ("alice@outbound.example", "ALICE@OUTBOUND.EXAMPLE", "alice+x@outbound.example"):
        assert len(sigs_of(verdict)) == 2, value        # her own address: signed
    if sigs_of(verdict):
        froms = msg.header_texts("From")
        assert len(froms) == 1
        # a stray ")" or "<" leaves the standard parser an empty entry beside
        # the address; what it reads as an address must all be alice's
        addresses = [a for _n, a in header_addresses(froms) if a]
        login_map = parse_login_map(login_map_module.read_text().splitlines(), "+")
        assert addresses and all(login_map.allows("alice", a, "+") for a in addresses), \
            (value, addresses)


_ENGINES: dict = {}


def _sign_engine(keydir, login_map):
    key = (str(keydir), str(login_map))
    if key not in _ENGINES:
        _ENGINES[key] = engine_for(login_text(keydir, login_map, "no",
                                              "[policy]\ndry_run = yes\n"))[0]
    return _ENGINES[key]


@pytest.fixture(scope="module")
def keydir_module(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    for name in ("outbound-rsa2026.private", "outbound-ed2026.private"):
        shutil.copy(KEYS / name, out / name)
        os.chmod(out / name, 0o600)
    yield out
    for engine in _ENGINES.values():
        engine.close()
    _ENGINES.clear()


@pytest.fixture(scope="module")
def login_map_module(tmp_path_factory):
    path = tmp_path_factory.mktemp("logins") / "logins"
    path.write_text("alice: alice@outbound.example, alice.smith@outbound.example\n")
    return path


def test_key_readable_by_others_refused_with_path(keydir):
    path = keydir / "outbound-rsa2026.private"
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as err:
        loads(sign_text(keydir))
    assert str(path) in str(err.value) and "[check.dkim_sign] keys:" in str(err.value)
    assert "0644" in str(err.value)


@pytest.mark.parametrize("content,why", [
    (b"not a key at all\n", "neither"),
    (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "PEM"),
    (b"c2hvcnQ=\n", "neither"),
])
def test_bad_key_refused_with_path(keydir, content, why):
    path = keydir / "outbound-ed2026.private"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        loads(sign_text(keydir))
    assert str(path) in str(err.value) and why in str(err.value)


def test_missing_and_short_keys_refused(keydir, tmp_path):
    with pytest.raises(ConfigError) as err:
        loads(BASE + f"[check.dkim_sign]\nkeys = outbound.example:s:{tmp_path}/none\n")
    assert f"{tmp_path}/none" in str(err.value)
    path = tmp_path / "short"
    shutil.copy(KEYS / "short-rsa512.private", path)     # cryptography refuses to make one
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as err:
        loads(BASE + f"[check.dkim_sign]\nkeys = outbound.example:s:{path}\n")
    assert "512 bits" in str(err.value)
    with pytest.raises(ConfigError) as err:
        loads(BASE + "[check.dkim_sign]\nkeys = outbound.example:/only/two\n")
    assert "DOMAIN:SELECTOR:PATH" in str(err.value)
