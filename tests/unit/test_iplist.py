"""iplist on the fake resolver: the local allow and block lists."""

from .foundationcase import BASE, iprev, run


def test_iplist_block_and_allow():
    text = BASE + "[check.iplist]\nblock = 198.51.100.0/24, 2001:db8:bad::/48\nallow = 198.51.100.7\n"
    blocked = run("198.51.100.8", text)
    assert blocked.action == "reject"
    assert blocked.reply.line() == "554 5.7.1 Client address blocked by local policy [198.51.100.8]"
    assert blocked.stage.name == "CONNECT"
    assert run("2001:db8:bad::1", text).action == "reject"
    allowed = run("198.51.100.7", text)        # more specific allow wins
    assert allowed.action == "accept"
    assert iprev(allowed) == []                # reputation checks skipped
    assert [r.symbol for r in allowed.results] == ["IPLIST_ALLOW"]
    assert run("192.0.2.1", text).action != "reject"


def test_iplist_tie_blocks():
    text = BASE + "[check.iplist]\nblock = 198.51.100.0/24\nallow = 198.51.100.0/24\n"
    assert run("198.51.100.8", text).action == "reject"


def test_iplist_from_files(tmp_path):
    (tmp_path / "block").write_text("# bad ones\n203.0.113.0/24  # a whole net\n")
    text = BASE + f"[check.iplist]\nblock_file = {tmp_path / 'block'}\n"
    assert run("203.0.113.5", text).action == "reject"
