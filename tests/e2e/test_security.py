"""Security through the real process and the real Postfix.

* privileges: started as root, mailwarden opens its socket (mode and group
  as configured), then runs as ``[milter] user``/``group`` with no other
  group and no way back to root; it refuses root without ``allow_root``,
  an unknown user or group, and a DKIM key readable by group or others;
* injection: CR/LF in the HELO name (through XCLIENT), in the envelope and
  in a DNS list's TXT reason never splits a log line, a reply or a header;
* forged Authentication-Results that claim our authserv-id are removed in
  every spelling RFC 8601 §5 allows (case, comments, folding, a version,
  a quoted id, a trailing dot), and only those.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess

import pytest

from tests.harness import (AUTHSERV_ID, MAILWARDEN_BIN, ROOT, make_message, smtp_send,
                           wait_until)

SENDER = "alice@sender.example"
RCPT = "bob@rcpt.example"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mailwarden\[\d+\]: ")
KEYS = ROOT / "tests" / "data" / "keys"


def proc_ids(pid: int) -> dict:
    """Uid, Gid (real, effective, saved, fs) and Groups of a running process."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(v) for v in value.split()]
    return out


def run_refused(tmp_path, ini_extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
    sock = tmp_path / "refused.sock"
    path = tmp_path / "refused.ini"
    path.write_text(f"[milter]\nsocket = unix:{sock}\nlog = stderr\n{ini_extra}\n"
                    f"[authserv]\nid = {AUTHSERV_ID}\n", encoding="utf-8")
    done = subprocess.run([str(MAILWARDEN_BIN), "run", "-c", str(path)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode != 0, done
    assert not sock.exists(), "a refused start must not have opened its socket"
    return done


# --------------------------------------------------------------------------
# privileges

def test_drops_to_the_configured_user_and_group(postfix, sink, mailwarden):
    user = pwd.getpwnam("nobody")
    group = grp.getgrnam("postfix")
    mw = mailwarden({"milter": {"user": "nobody", "group": "postfix", "socket_mode": "0660",
                                "allow_root": "no"}})
    ids = proc_ids(mw.pid)
    assert ids["Uid"] == [user.pw_uid] * 4, ids
    assert ids["Gid"] == [group.gr_gid] * 4, ids
    assert ids["Groups"] == [group.gr_gid], ids
    st = os.stat(mw.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid, oct(st.st_mode)
    assert f"running as user nobody (uid {user.pw_uid}), group {group.gr_gid}" in mw.log_text()
    # Postfix's smtpd (user postfix) reaches the milter through the group;
    # every check runs as nobody without needing a file it cannot read
    body = ("See http://www.uribl-clean.example/x and https://shop.example.co.uk/\n"
            "<a href=\"http://test.dbl.example/\">x</a>\n")
    for login in (None, "alice"):
        data, msgid = make_message("dropped privileges", body=body,
                                   extra_headers=["Content-Type: text/html; charset=utf-8"])
        xclient = {"ADDR": "198.51.100.7", "NAME": "mail.sender.example"}
        if login:
            xclient["LOGIN"] = login
        result = smtp_send(postfix.smtp_port, xclient=xclient, helo="mail.sender.example",
                           mail_from=SENDER, rcpts=[RCPT], data=data, starttls=bool(login))
        assert result.accepted, (result, mw.log_text()[-2000:])
        got = sink.wait_for_match(msgid.encode())
        assert got.header_values("Authentication-Results"), got.data[:500]
    log_text = mw.log_text()
    assert "crashed" not in log_text and "Traceback" not in log_text, log_text[-3000:]


def test_refuses_root_without_a_user(tmp_path, e2e_dir):
    done = run_refused(tmp_path, "")
    assert "allow_root" in done.stderr and "root" in done.stderr, done.stderr


def test_refuses_user_root_without_allow_root(tmp_path, e2e_dir):
    done = run_refused(tmp_path, "user = root\n")
    assert "allow_root" in done.stderr, done.stderr


@pytest.mark.parametrize("extra,why", [
    ("user = no-such-user-mailwarden\n", "no such user 'no-such-user-mailwarden'"),
    ("user = nobody\ngroup = no-such-group-mailwarden\n",
     "no such group 'no-such-group-mailwarden'"),
    ("user = nobody\nsocket_mode = 0999\n", "[milter] socket_mode: expected an octal mode"),
])
def test_refuses_unknown_user_group_and_bad_mode(tmp_path, e2e_dir, extra, why):
    done = run_refused(tmp_path, extra)
    assert why in done.stderr, done.stderr


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_dkim_key_readable_by_group_or_others_refused_at_start(tmp_path, e2e_dir, mode):
    key = tmp_path / "outbound.private"
    shutil.copy(KEYS / "outbound-rsa2026.private", key)
    os.chmod(key, mode)
    done = run_refused(tmp_path, f"user = nobody\n[check.dkim_sign]\n"
                                 f"keys = outbound.example:rsa2026:{key}")
    assert str(key) in done.stderr and f"{mode:04o}" in done.stderr, done.stderr
    assert "group or others" in done.stderr


# --------------------------------------------------------------------------
# injection

EVIL_LIST = {"check.submission": {"enabled": "no"},
             "check.dnsbl.evil": {"zone": "evil.dnsbl.mailwarden.test", "kind": "ip",
                                  "score": "1"}}


def assert_log_lines_whole(text: str) -> None:
    for line in text.splitlines():
        assert LINE_START.match(line), f"a log line was split or is a traceback: {line!r}"


def _conversation(port: int, commands: list) -> list:
    """Raw SMTP: each command's full reply (all its lines)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        rfile = sock.makefile("rb")

        def reply():
            lines = []
            while True:
                line = rfile.readline(8192)
                if not line:
                    return lines
                lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
                if len(line) < 4 or line[3:4] != b"-":
                    return lines

        out = [reply()]
        for command in commands:
            sock.sendall(command)
            out.append(reply())
        return out


def test_crlf_in_helo_envelope_and_txt_reason_through_postfix(postfix, sink, mailwarden):
    mw = mailwarden({**EVIL_LIST, "check.dnsbl.evil": {**EVIL_LIST["check.dnsbl.evil"],
                                                       "reject": "yes"}})
    # XCLIENT decodes xtext: the HELO name reaches Postfix with CR LF in it
    replies = _conversation(postfix.smtp_port, [
        b"EHLO client.test.example\r\n",
        b"XCLIENT ADDR=198.51.100.66 HELO=mail+0D+0AX-Injected:+20yes+0D+0A250+20ok\r\n",
        b"EHLO client.test.example\r\n",
        b"MAIL FROM:<a\rX-Injected: yes@sender.example>\r\n",
        f"MAIL FROM:<{SENDER}>\r\n".encode(),
        b"QUIT\r\n"])
    for lines in replies:
        for line in lines:
            assert re.match(r"^\d{3}[ -]", line), (line, replies)
            assert not line.startswith("X-Injected") and "\r" not in line
    # the listed client is refused with the TXT reason, kept on its one line
    refused = [lines for lines in replies if any("evil.dnsbl" in x for x in lines)]
    assert refused, replies
    assert any("X-Injected" in x for x in refused[0]) and len(refused[0]) == 1, replies
    assert_log_lines_whole(mw.log_text(since_start=True))

    # a scored (not refused) listing and a hostile HELO: the message's headers
    mw = mailwarden(EVIL_LIST)
    data, msgid = make_message("injected helo")
    result = smtp_send(postfix.smtp_port, xclient={"ADDR": "198.51.100.66",
                                                    "HELO": "mail\r\nX-Injected: yes"},
                       helo="client.test.example", mail_from=SENDER, rcpts=[RCPT], data=data)
    assert result.accepted, (result, mw.log_text()[-2000:])
    got = sink.wait_for_match(msgid.encode())
    assert got.headers.get_all("X-Injected") is None, got.data[:1500]
    head = got.data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line
        assert line[:1] in (b" ", b"\t") or re.match(rb"^[\x21-\x39\x3b-\x7e]+:", line), line
    assert "EVIL_LISTED" in " ".join(got.header_values("X-Mailwarden-Status"))
    assert_log_lines_whole(mw.log_text(since_start=True))


# --------------------------------------------------------------------------
# forged Authentication-Results (RFC 8601 §5)

FORGED = [
    f"{AUTHSERV_ID}; spf=pass smtp.mailfrom=sender.example",
    f"{AUTHSERV_ID.upper()}; dkim=pass header.d=sender.example",
    f"(a comment) {AUTHSERV_ID} (another); dmarc=pass",
    f"(nested (comment)) Mx.Test.Example;\r\n\tdkim=pass",
    f"\r\n\t{AUTHSERV_ID}\r\n\t; spf=pass",
    f"{AUTHSERV_ID} 1; spf=pass",
    f'"{AUTHSERV_ID}"; spf=pass',
    f"{AUTHSERV_ID}.; arc=pass",
    f"{AUTHSERV_ID};spf=pass",
]
KEPT = [
    "other.example; spf=pass smtp.mailfrom=sender.example",
    f"{AUTHSERV_ID}.evil.example; dkim=pass",
    f"evil-{AUTHSERV_ID}; dkim=pass",
    f"(comment {AUTHSERV_ID}) other.example; dkim=pass",
]


def test_forged_authentication_results_removed_in_every_spelling(postfix, sink, mailwarden):
    mw = mailwarden()
    extra = [f"Authentication-Results: {v}" for v in FORGED + KEPT]
    data, msgid = make_message("forged A-R", extra_headers=extra)
    result = smtp_send(postfix.smtp_port, xclient={"ADDR": "198.51.100.7",
                                                    "NAME": "mail.sender.example"},
                       helo="mail.sender.example", mail_from=SENDER, rcpts=[RCPT], data=data)
    assert result.accepted, result
    got = sink.wait_for_match(msgid.encode())
    values = got.header_values("Authentication-Results")
    ours = [v for v in values if v.startswith(f"{AUTHSERV_ID};") and "iprev=" in v]
    assert len(ours) == 1, values
    others = [v for v in values if v not in ours]
    expected = [re.sub(r"\r?\n[ \t]+", " ", v).strip() for v in KEPT]
    assert others == expected, values
    verdict = mw.scan(data, client_ip="198.51.100.7", client_name="mail.sender.example",
                      helo="mail.sender.example", mail_from=SENDER, rcpts=[RCPT])
    assert len(verdict["headers_removed"]) == len(FORGED), verdict["headers_removed"]
