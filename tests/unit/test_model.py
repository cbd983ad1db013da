"""mailwarden.model: the named accessors of Result, through which a check
reads another check's findings (never by the Authentication-Results layout);
a body spooled to a file past a threshold, and the message bytes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mailwarden.checks.dkim import _properties as dkim_properties
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from mailwarden.model import Result

ROOT = Path(__file__).resolve().parents[2]

ZONE = """
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
8.100.51.198.in-addr.arpa. PTR forged.sender.example.
forged.sender.example. A 192.0.2.99
sender.example. TXT "v=spf1 ip4:198.51.100.7 -all"
mail.sender.example. TXT "v=spf1 a -all"
"""

MESSAGE = b"From: a@sender.example\r\nTo: b@test.example\r\nSubject: t\r\n\r\nHello.\r\n"


def _run(client_ip: str):
    config = loads("[authserv]\nid = mx.test.example\n")
    engine = Engine(config, resolver=Resolver(config.dns, backend=ZoneBackend(ZONE)))
    try:
        verdict, _, msg = run_offline(engine, client_ip=client_ip, helo="mail.sender.example",
                                      mail_from="a@sender.example", rcpts=["b@test.example"],
                                      message=MESSAGE)
        if msg is not None:
            msg.close()
    finally:
        engine.close()
    return verdict.results


def test_verified_name_is_the_name_iprev_confirmed():
    [iprev] = [r for r in _run("198.51.100.7") if r.check == "iprev"]
    assert iprev.result == "pass"
    assert iprev.verified_name == "mail.sender.example"


def test_a_name_iprev_could_not_confirm_is_not_verified():
    [iprev] = [r for r in _run("198.51.100.8") if r.check == "iprev"]
    assert iprev.result == "fail"
    assert "forged.sender.example" in str(iprev.properties)     # shown, not verified
    assert iprev.verified_name == ""


def test_mailfrom_is_the_identity_spf_checked():
    spf = [r for r in _run("198.51.100.7") if r.check == "spf"]
    mailfrom = [r for r in spf if r.symbol == "SPF_PASS"]
    assert [r.mailfrom for r in mailfrom] == ["a@sender.example"]
    # the HELO identity's result has no MAIL FROM identity
    assert all(r.mailfrom == "" for r in spf if r.symbol.startswith("SPF_HELO"))


def test_header_d_and_s_are_what_dkim_reports():
    r = Result("dkim", "pass", properties=dkim_properties(
        {b"d": b"example.com", b"s": b"sel1", b"a": b"rsa-sha256", b"b": b"abcdefghij"}))
    assert (r.header_d, r.header_s) == ("example.com", "sel1")
    assert (r.verified_name, r.mailfrom) == ("", "")


def test_a_result_without_properties_has_nothing_to_read():
    r = Result("x", "none")
    assert (r.verified_name, r.mailfrom, r.header_d, r.header_s) == ("", "", "", "")


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(d=_text, s=_text, identity=_text, name=_text, other=_text)
def test_values_are_data_and_keys_are_matched_exactly(d, s, identity, name, other):
    """Sender-controlled values (d=, s=, MAIL FROM, a PTR name) come back as
    given; a value that looks like a key is never read as one."""
    assume(other not in PRODUCERS)
    r = Result("x", "pass", properties=(
        ("header.dx", other), ("x.header.d", other), ("policy.iprev", other, name),
        ("header.d", d), ("header.s", s), ("smtp.mailfrom", identity, other),
        (f"{other}", "header.d")))
    assert r.header_d == d and r.header_s == s and r.mailfrom == identity
    assert r.verified_name == name
    assert Result("x", "fail", properties=r.properties).verified_name == ""


# -- structure: checks read each other only through the accessors -----------

PRODUCERS = {"smtp.mailfrom": {"spf"}, "header.d": {"dkim"}, "header.s": {"dkim"},
             "policy.iprev": {"iprev"}}


def _check_modules():
    return sorted((ROOT / "mailwarden" / "checks").glob("*.py"))


@pytest.mark.parametrize("path", _check_modules(), ids=lambda p: p.stem)
def test_no_check_reads_another_checks_properties_or_asks_the_engine_for_trust(path):
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docs and node.value in PRODUCERS:
            assert path.stem in PRODUCERS[node.value], \
                f"{path.stem} reads {node.value!r} by key: use the Result accessor"
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id == "prop":
            pytest.fail(f"{path.stem} reads a property tuple by position")
        if isinstance(node, ast.Attribute) and node.attr == "trust" \
                and isinstance(node.value, ast.Attribute) and node.value.attr == "engine":
            pytest.fail(f"{path.stem} asks the engine for the trust class: use ctx.trust")



def test_a_spooled_body_is_read_by_several_threads_at_once_without_mixing():
    import threading
    from mailwarden.model import Body
    body = Body(spool_threshold=1000)
    data = b"".join(b"line %06d of the body\r\n" % i for i in range(20000))
    for start in range(0, len(data), 4096):
        body.write(data[start:start + 4096])
    assert body.spooled
    seen: list = []

    def reader(kind):
        got = body.read() if kind == "read" else b"".join(body.chunks(777))
        seen.append(got == data)
    threads = [threading.Thread(target=reader, args=(k,)) for k in ("read", "chunks") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [True] * 8
    body.close()


@pytest.mark.parametrize("size", [0, 5000, 300_000])
def test_the_message_buffer_is_the_message_bytes(size):
    from mailwarden.model import Body, Message
    msg = Message(body=Body(spool_threshold=100_000))
    msg.add_header("From", b" <a@example.org>")
    msg.add_header("X-Folded", b" one\n\ttwo")
    payload = bytes(range(256)) * (size // 256) + b"end\r\n"
    for start in range(0, len(payload), 65000):
        msg.body.write(payload[start:start + 65000])
    assert bytes(msg.as_buffer()) == msg.as_bytes()
    msg.close()


# -- the words: actions and trust classes ------------------------------------

def test_a_word_is_its_text_everywhere_it_is_used():
    import json
    from mailwarden.model import Action, Trust
    for word in (*Action, *Trust):
        text = word.value
        assert word == text and text == word
        assert hash(word) == hash(text)
        assert text in {word} and word in {text} and word in frozenset({text})
        assert {text: 1}[word] == 1 and {word: 1}[text] == 1
        assert str(word) == text and f"{word}" == text and "%s" % word == text
        assert json.dumps(word) == json.dumps(text)
    assert Action("reject") is Action.REJECT and Trust("other") is Trust.OTHER


def test_no_module_spells_an_action_or_trust_word_where_the_enums_belong():
    """Replies, skip_for sets and trust comparisons use the enums, not
    strings repeated across the checks."""
    import ast
    from pathlib import Path
    package = Path(__file__).resolve().parents[2] / "mailwarden"
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Reply"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.append(f"{path.name}:{node.lineno} Reply({node.args[0].value!r})")
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "skip_for"
                                                      for t in node.targets)):
                found += [f"{path.name}:{node.lineno} skip_for {c.value!r}"
                          for c in ast.walk(node.value) if isinstance(c, ast.Constant)]
    assert not found, found
