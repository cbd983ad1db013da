"""`mailwarden scan`: the same engine offline, JSON out (DESIGN.md contract)."""

import json

from mailwarden import cli

ZONE = """
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
"""


def scan(tmp_path, capsys, *extra, ini="", message=b"From: a@sender.example\r\n\r\nhi\r\n"):
    conf = tmp_path / "m.ini"
    conf.write_text("[authserv]\nid = mx.test.example\n" + ini)
    zone = tmp_path / "z.zone"
    zone.write_text(ZONE)
    eml = tmp_path / "m.eml"
    eml.write_bytes(message)
    rc = cli.main(["scan", "-c", str(conf), "--zone", str(zone), "--client-ip", "198.51.100.7",
                   "--helo", "mail.sender.example", "--mail-from", "a@sender.example",
                   "--rcpt", "b@test.example", *extra, str(eml)])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_scan_prints_the_verdict_as_json(tmp_path, capsys):
    out = scan(tmp_path, capsys)
    assert set(out) == {"action", "score", "smtp_reply", "results", "headers_added",
                        "headers_removed"}
    assert out["action"] == "accept" and out["smtp_reply"] is None
    iprev = [r for r in out["results"] if r["check"] == "iprev"]
    assert iprev == [{"check": "iprev", "result": "pass", "symbol": "IPREV_PASS",
                      "score": 0.0, "reason": ""}]
    assert all(set(r) == {"check", "result", "symbol", "score", "reason"} for r in out["results"])
    names = [h[0] for h in out["headers_added"]]
    assert names == ["Authentication-Results", "X-Mailwarden-Status"]


def test_scan_reports_removed_headers_and_rejects(tmp_path, capsys):
    msg = (b"Authentication-Results: mx.test.example; spf=pass\r\nFrom: a@sender.example\r\n"
           b"Subject: x\r\n\r\nhi\r\n")
    out = scan(tmp_path, capsys, message=msg)
    assert out["headers_removed"] == [["Authentication-Results", "mx.test.example; spf=pass"]]
    forged = b"X-Mailwarden-Status: No, score=-9.00 required=5.00\r\n"
    out = scan(tmp_path, capsys, message=forged + msg)
    assert out["headers_removed"] == [["X-Mailwarden-Status", "No, score=-9.00 required=5.00"],
                                      ["Authentication-Results", "mx.test.example; spf=pass"]]
    out = scan(tmp_path, capsys, "--esmtp-size", "99999", ini="[check.size]\nmax_size = 1K\n")
    assert out["action"] == "reject"
    assert out["smtp_reply"].startswith("552 5.3.4 ")
    assert out["headers_added"] == []
