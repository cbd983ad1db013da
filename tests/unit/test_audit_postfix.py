"""audit-postfix against real ``postconf -c DIR`` on generated config dirs.

A hardened main.cf/master.cf gives only ok findings; each weakness, added
one at a time, gives exactly one finding that is not ok, and it is the
expected one (area, level, subject).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from mailwarden import cli
from mailwarden.audit import postfix
from mailwarden.audit.findings import FAIL, OK, WARN, AuditError

POSTCONF = shutil.which("postconf") or ("/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None)
needs_postconf = pytest.mark.skipif(POSTCONF is None, reason="postconf (Postfix) is not installed")

SOCKET = "unix:/run/mailwarden/milter.sock"


def hardened_main(certdir: Path) -> dict:
    return {
        "compatibility_level": "3.6",
        "myhostname": "mx.example.org",
        "mynetworks": "127.0.0.0/8 [::1]/128 [::ffff:127.0.0.0]/104 192.168.10.0/24 [fd00:1::]/64",
        "relay_domains": "",
        "smtpd_relay_restrictions":
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_chain_files": f"{certdir}/key.pem, {certdir}/cert.pem",
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_protocols": ">=TLSv1.2",
        "smtpd_tls_mandatory_protocols": "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1",
        "message_size_limit": "26214400",
        "smtpd_client_connection_count_limit": "20",
        "smtpd_client_connection_rate_limit": "30",
        "smtpd_client_message_rate_limit": "60",
        "smtpd_client_auth_rate_limit": "10",
        "smtpd_soft_error_limit": "5",
        "smtpd_hard_error_limit": "10",
        "smtpd_error_sleep_time": "2s",
        "disable_vrfy_command": "yes",
        "smtpd_helo_required": "yes",
        "smtpd_etrn_restrictions": "permit_mynetworks, reject",
        "smtpd_banner": "$myhostname ESMTP",
        "smtpd_milters": SOCKET,
        "non_smtpd_milters": SOCKET,
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
        "milter_connect_macros": "j {daemon_name} {daemon_addr} v _ {client_addr} {client_name}",
        "milter_mail_macros":
            "i {mail_addr} {auth_type} {auth_authen} {auth_author} {tls_version} {cipher}"
            " {cipher_bits}",
        "milter_end_of_data_macros": "i {auth_authen} {tls_version} {cipher}",
    }


HARDENED_MASTER = {
    "smtp": ("smtp      inet  n       -       y       -       -       smtpd", []),
    "submission": ("submission inet n       -       y       -       -       smtpd",
                   ["smtpd_tls_security_level=encrypt", "smtpd_sasl_auth_enable=yes",
                    "smtpd_client_restrictions=permit_sasl_authenticated,reject"]),
    "submissions": ("submissions inet n      -       y       -       -       smtpd",
                    ["smtpd_tls_wrappermode=yes", "smtpd_sasl_auth_enable=yes"]),
    "pickup": ("pickup    unix  n       -       y       60      1       pickup", []),
    "cleanup": ("cleanup   unix  n       -       y       -       0       cleanup", []),
    "anvil": ("anvil     unix  -       -       y       -       1       anvil", []),
}


def write_config(root: Path, main_changes=None, master_changes=None) -> Path:
    """A config dir: the hardened settings with ``main_changes`` applied
    (None deletes a setting) and ``master_changes`` (service -> entry or None)."""
    certdir = root / "tls"
    certdir.mkdir(parents=True, exist_ok=True)
    # audit-postfix checks that the files are there, not what is in them
    (certdir / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (certdir / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    main = hardened_main(certdir)
    for key, value in (main_changes or {}).items():
        if value is None:
            main.pop(key, None)
        else:
            main[key] = value
    master = dict(HARDENED_MASTER)
    for key, value in (master_changes or {}).items():
        if value is None:
            master.pop(key, None)
        else:
            master[key] = value
    confdir = root / "etc"
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    lines = []
    for line, overrides in master.values():
        lines.append(line)
        lines += [f"  -o {o}" for o in overrides]
    (confdir / "master.cf").write_text("\n".join(lines) + "\n")
    # Postfix re-reads a file changed within the last second until it is
    # stable (0.3 s naps): date the files back, as if written long ago
    past = time.time() - 60
    for name in ("main.cf", "master.cf"):
        os.utime(confdir / name, (past, past))
    return confdir


def run_audit(tmp_path, main_changes=None, master_changes=None, milter=SOCKET):
    confdir = write_config(tmp_path, main_changes, master_changes)
    return postfix.audit(postfix.read_postconf(str(confdir), POSTCONF), milter)


def not_ok(findings):
    return [(f.area, f.level, f.subject) for f in findings if f.level != OK]


@needs_postconf
def test_hardened_config_is_all_ok(tmp_path):
    findings = run_audit(tmp_path)
    assert not_ok(findings) == []
    subjects = {f.subject for f in findings}
    # every area of the issue is looked at
    assert {"smtpd_relay_restrictions", "mynetworks", "smtpd_tls_security_level",
            "smtpd_tls_auth_only", "smtpd_tls_protocols", "smtpd_tls_mandatory_protocols",
            "master.cf submission/inet", "master.cf submissions/inet", "message_size_limit",
            "smtpd_client_connection_count_limit", "smtpd_client_connection_rate_limit",
            "smtpd_client_message_rate_limit", "smtpd_client_auth_rate_limit",
            "smtpd_soft_error_limit", "smtpd_hard_error_limit", "smtpd_error_sleep_time",
            "master.cf anvil", "disable_vrfy_command", "smtpd_helo_required",
            "smtpd_etrn_restrictions", "smtpd_banner", "smtpd_milters",
            "milter_default_action", "milter_protocol", "milter_*_macros"} <= subjects
    assert {f.area for f in findings} == {"relay", "tls", "limits", "defaults", "milter"}


SUBMISSION = HARDENED_MASTER["submission"][0]
SUBMISSIONS = HARDENED_MASTER["submissions"][0]

# (id, main.cf changes, master.cf changes, the one finding expected)
WEAKNESSES = [
    ("relay-permit", {"smtpd_relay_restrictions": "permit_mynetworks, permit"}, None,
     ("relay", FAIL, "smtpd_relay_restrictions")),
    ("relay-no-reject", {"smtpd_relay_restrictions": "permit_mynetworks"}, None,
     ("relay", FAIL, "smtpd_relay_restrictions")),
    ("relay-warn-if-reject",
     {"smtpd_relay_restrictions": "permit_mynetworks, warn_if_reject reject_unauth_destination"},
     None, ("relay", FAIL, "smtpd_relay_restrictions")),
    ("relay-defer", {"smtpd_relay_restrictions": "permit_mynetworks, defer_unauth_destination"},
     None, ("relay", WARN, "smtpd_relay_restrictions")),
    ("relay-domains-all", {"relay_domains": "static:ALL"}, None,
     ("relay", FAIL, "relay_domains")),
    ("mynetworks-public", {"mynetworks": "127.0.0.0/8 198.51.100.0/24"}, None,
     ("relay", WARN, "mynetworks")),
    ("mynetworks-everything", {"mynetworks": "127.0.0.0/8 0.0.0.0/0"}, None,
     ("relay", FAIL, "mynetworks")),
    ("mynetworks-table", {"mynetworks": "127.0.0.0/8 hash:/etc/postfix/network_table"}, None,
     ("relay", WARN, "mynetworks")),
    ("tls-none", {"smtpd_tls_security_level": "none"}, None,
     ("tls", FAIL, "smtpd_tls_security_level")),
    ("tls-no-certificate", {"smtpd_tls_chain_files": None}, None,
     ("tls", FAIL, "smtpd_tls_security_level")),
    ("tls-auth-in-clear", {"smtpd_tls_auth_only": "no", "smtpd_sasl_auth_enable": "yes"}, None,
     ("tls", FAIL, "smtpd_tls_auth_only")),
    ("tls-auth-only-off-no-sasl", {"smtpd_tls_auth_only": "no"}, None,
     ("tls", WARN, "smtpd_tls_auth_only")),
    ("tls-old-protocols", {"smtpd_tls_protocols": "!SSLv2, !SSLv3"}, None,
     ("tls", FAIL, "smtpd_tls_protocols")),
    ("tls-old-mandatory", {"smtpd_tls_mandatory_protocols": ">=TLSv1"}, None,
     ("tls", FAIL, "smtpd_tls_mandatory_protocols")),
    ("tls-sslv3-included", {"smtpd_tls_protocols": "SSLv3 TLSv1.2 TLSv1.3"}, None,
     ("tls", FAIL, "smtpd_tls_protocols")),
    ("submission-no-encrypt", None,
     {"submission": (SUBMISSION, ["smtpd_sasl_auth_enable=yes"])},
     ("tls", FAIL, "master.cf submission/inet")),
    ("submission-no-sasl", None,
     {"submission": (SUBMISSION, ["smtpd_tls_security_level=encrypt"])},
     ("tls", FAIL, "master.cf submission/inet")),
    ("submissions-no-wrappermode", None,
     {"submissions": (SUBMISSIONS, ["smtpd_sasl_auth_enable=yes"])},
     ("tls", FAIL, "master.cf submissions/inet")),
    ("message-size-unlimited", {"message_size_limit": "0"}, None,
     ("limits", FAIL, "message_size_limit")),
    ("message-size-huge", {"message_size_limit": str(500 * 1024 * 1024)}, None,
     ("limits", WARN, "message_size_limit")),
    ("connection-count-off", {"smtpd_client_connection_count_limit": "0"}, None,
     ("limits", WARN, "smtpd_client_connection_count_limit")),
    ("connection-rate-off", {"smtpd_client_connection_rate_limit": None}, None,
     ("limits", WARN, "smtpd_client_connection_rate_limit")),
    ("message-rate-off", {"smtpd_client_message_rate_limit": "0"}, None,
     ("limits", WARN, "smtpd_client_message_rate_limit")),
    ("auth-rate-off", {"smtpd_client_auth_rate_limit": None}, None,
     ("limits", WARN, "smtpd_client_auth_rate_limit")),
    ("no-anvil", None, {"anvil": None}, ("limits", FAIL, "master.cf anvil")),
    ("soft-limit-not-below-hard", {"smtpd_soft_error_limit": "10"}, None,
     ("limits", WARN, "smtpd_soft_error_limit")),
    ("hard-limit-huge", {"smtpd_hard_error_limit": "1000", "smtpd_soft_error_limit": "10"}, None,
     ("limits", WARN, "smtpd_hard_error_limit")),
    ("no-error-sleep", {"smtpd_error_sleep_time": "0"}, None,
     ("limits", WARN, "smtpd_error_sleep_time")),
    ("vrfy-on", {"disable_vrfy_command": None}, None,
     ("defaults", WARN, "disable_vrfy_command")),
    ("helo-optional", {"smtpd_helo_required": "no"}, None,
     ("defaults", WARN, "smtpd_helo_required")),
    ("etrn-open", {"smtpd_etrn_restrictions": None}, None,
     ("defaults", WARN, "smtpd_etrn_restrictions")),
    ("banner-version", {"smtpd_banner": "$myhostname ESMTP $mail_name $mail_version"}, None,
     ("defaults", WARN, "smtpd_banner")),
    ("no-milter", {"smtpd_milters": None}, None, ("milter", FAIL, "smtpd_milters")),
    ("other-milter", {"smtpd_milters": "inet:127.0.0.1:8891"}, None,
     ("milter", FAIL, "smtpd_milters")),
    ("fail-open", {"milter_default_action": "accept"}, None,
     ("milter", FAIL, "milter_default_action")),
    ("fail-open-per-milter", {"smtpd_milters": "{ " + SOCKET + ", default_action = accept }"},
     None, ("milter", FAIL, "smtpd_milters default_action")),
    ("reject-on-error", {"milter_default_action": "reject"}, None,
     ("milter", WARN, "milter_default_action")),
    ("old-protocol", {"milter_protocol": "2"}, None, ("milter", WARN, "milter_protocol")),
    ("submission-skips-milter", None,
     {"submission": (SUBMISSION, ["smtpd_tls_security_level=encrypt",
                                  "smtpd_sasl_auth_enable=yes", "smtpd_milters="])},
     ("milter", WARN, "master.cf submission/inet")),
]


@needs_postconf
@pytest.mark.parametrize("main_changes,master_changes,expected",
                         [w[1:] for w in WEAKNESSES], ids=[w[0] for w in WEAKNESSES])
def test_each_weakness_gives_its_finding(tmp_path, main_changes, master_changes, expected):
    findings = run_audit(tmp_path, main_changes, master_changes)
    assert not_ok(findings) == [expected], [f for f in findings if f.level != OK]
    finding = next(f for f in findings if f.subject == expected[2] and f.level != OK)
    assert finding.message      # the advice is there


MISSING_MACROS = [
    ({"milter_mail_macros": "i {mail_addr} {tls_version} {cipher}"}, "milter_mail_macros"),
    ({"milter_end_of_data_macros": "{auth_authen}", "milter_end_of_header_macros": "",
      "milter_data_macros": ""}, "milter_end_of_data_macros"),
]


@needs_postconf
@pytest.mark.parametrize("changes,param", MISSING_MACROS, ids=["auth", "queue-id"])
def test_missing_macros_matter_only_to_an_mta_without_protocol_6(tmp_path, changes, param):
    # protocol 6: mailwarden names its own macro lists, Postfix sends them
    findings = run_audit(tmp_path, changes)
    assert not_ok(findings) == [], [f for f in findings if f.level != OK]
    finding = next(f for f in findings if f.subject == param)
    assert "asks for them itself" in finding.message
    # an older protocol: the lines of main.cf are all the milter gets
    findings = run_audit(tmp_path, {**changes, "milter_protocol": "2"})
    assert sorted(not_ok(findings)) == [("milter", WARN, param),
                                        ("milter", WARN, "milter_protocol")]


@needs_postconf
def test_default_mynetworks_is_read_as_postfix_computes_it(tmp_path):
    # with mynetworks unset postconf reports the computed value; whatever this
    # machine's addresses are, the finding judges exactly that value
    confdir = write_config(tmp_path, {"mynetworks": None, "mynetworks_style": "host"})
    cfg = postfix.read_postconf(str(confdir), POSTCONF)
    finding = next(f for f in postfix.audit(cfg, SOCKET) if f.subject == "mynetworks")
    assert finding.value == cfg.main["mynetworks"]
    level, _ = postfix.judge_mynetworks(cfg.main["mynetworks"])
    assert finding.level == level


@needs_postconf
def test_recipient_restrictions_may_carry_the_relay_check(tmp_path):
    findings = run_audit(tmp_path, {
        "smtpd_relay_restrictions": "",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination"})
    assert not_ok(findings) == []
    relay = next(f for f in findings if f.area == "relay" and "restrictions" in f.subject)
    assert relay.subject == "smtpd_recipient_restrictions"


@needs_postconf
def test_service_overrides_apply_to_the_public_smtp_service(tmp_path):
    # the -o of the port 25 service wins over main.cf
    findings = run_audit(tmp_path, master_changes={
        "smtp": (HARDENED_MASTER["smtp"][0], ["smtpd_tls_security_level=none"])})
    assert not_ok(findings) == [("tls", FAIL, "smtpd_tls_security_level")]


@needs_postconf
def test_expanded_values_are_judged(tmp_path):
    findings = run_audit(tmp_path, {"my_nets": "127.0.0.0/8 203.0.113.0/24",
                                    "mynetworks": "$my_nets"})
    finding = next(f for f in findings if f.subject == "mynetworks")
    assert finding.level == WARN and "203.0.113.0/24" in finding.message


@needs_postconf
def test_no_submission_service_with_sasl_on_port_25_warns(tmp_path):
    findings = run_audit(tmp_path, {"smtpd_sasl_auth_enable": "yes"},
                         {"submission": None, "submissions": None})
    assert not_ok(findings) == [("tls", WARN, "master.cf submission")]


@needs_postconf
def test_without_the_socket_the_milter_entry_is_a_warning(tmp_path):
    findings = run_audit(tmp_path, milter=None)
    assert not_ok(findings) == [("milter", WARN, "smtpd_milters")]


@needs_postconf
def test_milter_socket_in_libmilter_notation_and_chroot_path(tmp_path):
    findings = run_audit(tmp_path, {"smtpd_milters": "inet:localhost:8894",
                                    "non_smtpd_milters": ""}, milter="inet:8894@127.0.0.1")
    assert not_ok(findings) == []
    confdir = write_config(tmp_path / "jail", {"smtpd_milters": "unix:/mailwarden/milter.sock",
                                               "queue_directory": "/var/spool/postfix"})
    cfg = postfix.read_postconf(str(confdir), POSTCONF)
    assert not_ok(postfix.audit(cfg, "unix:/var/spool/postfix/mailwarden/milter.sock")) == []


# -- the command -------------------------------------------------------------

@needs_postconf
def test_cli_table_and_exit_codes(tmp_path, capsys):
    confdir = write_config(tmp_path)
    assert cli.main(["audit-postfix", "--config-dir", str(confdir), "--milter", SOCKET]) == 0
    out = capsys.readouterr().out
    assert "smtpd_tls_auth_only" in out and "0 warn, 0 fail" in out

    weak = write_config(tmp_path / "weak", {"smtpd_relay_restrictions": "permit"})
    assert cli.main(["audit-postfix", "--config-dir", str(weak), "--milter", SOCKET,
                     "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["fail"] == 1
    assert {"area": "relay", "level": "fail", "subject": "smtpd_relay_restrictions"}.items() \
        <= next(f for f in data["findings"] if f["level"] == "fail").items()


@needs_postconf
def test_cli_takes_the_socket_from_the_mailwarden_config(tmp_path, capsys):
    confdir = write_config(tmp_path)
    ini = tmp_path / "mailwarden.ini"
    ini.write_text("[milter]\nsocket = unix:/run/mailwarden/milter.sock\n"
                   "[authserv]\nid = mx.example.org\n")
    assert cli.main(["audit-postfix", "--config-dir", str(confdir), "-c", str(ini)]) == 0
    assert "mailwarden is listed" in capsys.readouterr().out


def test_cli_exit_2_when_the_audit_cannot_run(tmp_path, capsys):
    assert cli.main(["audit-postfix", "--config-dir", str(tmp_path), "--milter", SOCKET]) == 2
    assert "no main.cf" in capsys.readouterr().err
    (tmp_path / "main.cf").write_text("myhostname = mx.example.org\n")
    assert cli.main(["audit-postfix", "--config-dir", str(tmp_path), "--milter", SOCKET,
                     "--postconf", str(tmp_path / "no-such-postconf")]) == 2
    assert "not found" in capsys.readouterr().err


# -- ARC sealing and the milter order ------------------------------------------

OTHER = "inet:127.0.0.1:8891"          # another milter, e.g. one that adds a footer


def arc_findings(findings):
    """The findings the ARC sealing adds, as (level, subject, value)."""
    return [(f.level, f.subject, f.value) for f in findings
            if "ARC" in f.message or "sealed" in f.message]


def run_sealing(tmp_path, main_changes=None, master_changes=None, arc_seal="forward"):
    confdir = write_config(tmp_path, main_changes, master_changes)
    return postfix.audit(postfix.read_postconf(str(confdir), POSTCONF), SOCKET, arc_seal)


@needs_postconf
def test_sealing_with_mailwarden_last_everywhere_is_ok(tmp_path):
    findings = run_sealing(tmp_path, {"smtpd_milters": f"{OTHER}, {SOCKET}",
                                      "non_smtpd_milters": f"{OTHER} {SOCKET}"})
    assert not_ok(findings) == []
    assert arc_findings(findings) == [(OK, "smtpd_milters", f"{OTHER}, {SOCKET}"),
                                      (OK, "non_smtpd_milters", f"{OTHER} {SOCKET}")]


@needs_postconf
def test_a_milter_after_mailwarden_would_change_the_sealed_message(tmp_path):
    later = "inet:127.0.0.1:8892"
    findings = run_sealing(tmp_path, {"smtpd_milters": f"{SOCKET}, {OTHER}, "
                                                       f"{{ {later}, default_action = accept }}"})
    assert not_ok(findings) == [("milter", WARN, "smtpd_milters")]
    warning = next(f for f in findings if f.level == WARN)
    assert warning.message.startswith("mailwarden seals ARC ([check.arc] seal = forward) "
                                      "but 2 milters after it may change the message")
    assert warning.message.endswith("list mailwarden last")
    assert warning.value == f"{OTHER}, {later}"


@needs_postconf
def test_the_same_order_without_sealing_is_not_judged(tmp_path):
    findings = run_sealing(tmp_path, {"smtpd_milters": f"{SOCKET}, {OTHER}",
                                      "non_smtpd_milters": ""}, arc_seal=None)
    assert not_ok(findings) == []
    assert arc_findings(findings) == []


@needs_postconf
def test_non_smtpd_milters_order_and_absence(tmp_path):
    findings = run_sealing(tmp_path, {"non_smtpd_milters": f"{SOCKET} {OTHER}"})
    assert not_ok(findings) == [("milter", WARN, "non_smtpd_milters")]
    assert next(f for f in findings if f.level == WARN).value == OTHER

    # not listed at all: local submissions leave unsealed, a note (it may be meant)
    for value in ("", OTHER):
        findings = run_sealing(tmp_path / f"none{len(value)}", {"non_smtpd_milters": value})
        assert not_ok(findings) == []
        note = next(f for f in findings if f.subject == "non_smtpd_milters")
        assert note.level == OK and note.value == value
        assert note.message.startswith("note: mailwarden is not listed, so locally submitted "
                                       "mail (sendmail(1)")


@needs_postconf
def test_a_submission_service_that_runs_a_milter_after_mailwarden(tmp_path):
    findings = run_sealing(tmp_path, master_changes={
        "submission": (SUBMISSION, ["smtpd_tls_security_level=encrypt",
                                    "smtpd_sasl_auth_enable=yes",
                                    f"smtpd_milters={SOCKET},{OTHER}"])})
    assert not_ok(findings) == [("milter", WARN, "master.cf submission/inet")]
    assert next(f for f in findings if f.level == WARN).value == OTHER


@needs_postconf
def test_the_public_services_own_override_is_judged_once(tmp_path):
    findings = run_sealing(tmp_path, master_changes={
        "smtp": ("smtp      inet  n       -       y       -       -       smtpd",
                 [f"smtpd_milters={SOCKET},{OTHER}"])})
    assert not_ok(findings) == [("milter", WARN, "smtpd_milters")]


@pytest.fixture
def rsa_key(tmp_path):
    key = tmp_path / "arc.pem"
    shutil.copy(Path(__file__).resolve().parents[1] / "data" / "audit" / "dkim-rsa2048.pem", key)
    os.chmod(key, 0o600)          # the key loader refuses a group-readable key
    return key


SEALING = [
    ("forward", "", "forward"),
    ("always", "", "always"),
    ("never", "", None),
    ("forward", "enabled = no\n", None),
    (None, "", "forward"),                 # seal's default
]


@pytest.mark.parametrize("seal,extra,expected", SEALING,
                         ids=["forward", "always", "never", "disabled", "default"])
def test_arc_sealing_is_read_from_the_configuration(rsa_key, seal, extra, expected):
    from mailwarden.config import loads
    text = (f"[authserv]\nid = mx.example.org\n[check.arc]\n{extra}"
            f"keys = example.org:arc:{rsa_key}\n" + (f"seal = {seal}\n" if seal else ""))
    assert postfix.arc_sealing(loads(text)) == expected
    # no key, no seal
    assert postfix.arc_sealing(loads("[authserv]\nid = mx.example.org\n[check.arc]\n"
                                     "seal = always\n")) is None


@needs_postconf
def test_cli_takes_the_sealing_from_the_mailwarden_config(tmp_path, capsys, rsa_key):
    confdir = write_config(tmp_path, {"smtpd_milters": f"{SOCKET}, {OTHER}"})
    ini = tmp_path / "mailwarden.ini"
    ini.write_text(f"[milter]\nsocket = {SOCKET}\n[authserv]\nid = mx.example.org\n"
                   f"[check.arc]\nkeys = example.org:arc:{rsa_key}\n")
    # a warning: exit 0
    assert cli.main(["audit-postfix", "--config-dir", str(confdir), "-c", str(ini),
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(f["subject"], f["value"]) for f in data["findings"] if f["level"] == WARN] == [
        ("smtpd_milters", OTHER)]
    # --milter names the socket; the sealing still comes from -c
    assert cli.main(["audit-postfix", "--config-dir", str(confdir), "--milter", SOCKET,
                     "-c", str(ini), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["warn"] == 1
    # --milter alone: no configuration, so the order is not judged for ARC
    assert cli.main(["audit-postfix", "--config-dir", str(confdir), "--milter", SOCKET,
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["warn"] == 0


# -- the parsers -------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("", set(postfix.PROTOCOLS)),
    (">=TLSv1.2", {"TLSv1.2", "TLSv1.3"}),
    ("!SSLv2, !SSLv3", {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"}),
    ("!SSLv2 !SSLv3 !TLSv1 !TLSv1.1", {"TLSv1.2", "TLSv1.3"}),
    ("TLSv1.3", {"TLSv1.3"}),
    (">=TLSv1.1 <=TLSv1.2", {"TLSv1.1", "TLSv1.2"}),
    ("TLSv1.2:TLSv1.3", {"TLSv1.2", "TLSv1.3"}),
])
def test_enabled_protocols(value, expected):
    assert postfix.enabled_protocols(value) == expected


@pytest.mark.parametrize("value,level", [
    ("127.0.0.0/8 [::1]/128", OK),
    ("[::ffff:127.0.0.0]/104 10.1.0.0/16 172.20.0.0/16 [fe80::]/64", OK),
    ("127.0.0.0/8 192.0.2.0/24", WARN),      # documentation range: not private
    ("127.0.0.0/8 8.8.8.8", WARN),
    ("127.0.0.0/8 !192.0.2.5 10.0.0.0/8", OK),
    ("0.0.0.0/0", FAIL),
    ("[::]/0", FAIL),
    ("mail.example.org", WARN),
])
def test_judge_mynetworks(value, level):
    assert postfix.judge_mynetworks(value)[0] == level


def test_split_list_keeps_braced_items():
    assert postfix.split_list("a, b  { inet:x:1, default_action = accept },c") == [
        "a", "b", "{ inet:x:1, default_action = accept }", "c"]
    assert postfix.parse_milters("{ inet:x:1, default_action = accept }") == [
        ("inet:x:1", {"default_action": "accept"})]


def test_parse_time():
    assert postfix.parse_time("1s") == 1
    assert postfix.parse_time("2m") == 120
    assert postfix.parse_time("500ms") == 0.5
    assert postfix.parse_time("3") == 3
    assert postfix.parse_time("soon") is None


def test_read_postconf_reports_a_failing_postconf(tmp_path):
    (tmp_path / "main.cf").write_text("x = y\n")
    fake = tmp_path / "postconf"
    fake.write_text("#!/bin/sh\necho 'postconf: fatal: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(AuditError, match="fatal: broken"):
        postfix.read_postconf(str(tmp_path), str(fake))
