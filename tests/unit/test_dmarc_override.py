"""dmarc: local overrides of a failing DMARC policy (trusted ARC sealers,
client networks, envelope sender domains, List-Id), the guard for our own
From domains, and what the aggregate report says of an overridden message.

ARC chains are made with dkimpy's arc_sign (another implementation than
ours), as a mailing list would: the author's DKIM signature broken by a
footer and a subject tag, then the list's seal.
"""

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import dkim
import pytest
import xmlschema

from mailwarden import dmarc_report
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline
from tests.dkimkeys import rsa_key, sign
from tests.unit.authcase import dmarc_of, resinfo

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).resolve().parents[1] / "data" / "dmarc"
                                 / "rfc9990.xsd"))
NS = {"d": dmarc_report.NAMESPACE}
LIST = "lists.sealer.example"
OTHER = "fwd.other.example"
AUTHOR = "origin.example"
LIST_IP = "198.51.100.9"
BASE = """[authserv]
id = mx.test.example
[relay]
trusted_networks = 127.0.0.0/8
local_domains = rcpt.example
"""
AAR_PASS = (f"dkim=pass header.d={AUTHOR}; spf=pass smtp.mailfrom=author@{AUTHOR}; "
            f"dmarc=pass header.from={AUTHOR}")
AAR_FAIL = (f"dkim=fail header.d={AUTHOR}; spf=fail smtp.mailfrom=author@{AUTHOR}; "
            f"dmarc=fail header.from={AUTHOR}")


@pytest.fixture(scope="module")
def keys():
    return {AUTHOR: rsa_key(), LIST: rsa_key(), OTHER: rsa_key()}


def zone(keys):
    lines = [k.zone_line("arc" if d != AUTHOR else "s1", d) for d, k in keys.items()]
    lines += [f'_dmarc.{AUTHOR}. TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{AUTHOR}"',
              f'{AUTHOR}. TXT "v=spf1 -all"',
              '_dmarc.rcpt.example. TXT "v=DMARC1; p=reject"',
              f'{LIST}. TXT "v=spf1 ip4:{LIST_IP} -all"']
    return "\n".join(lines) + "\n"


def authored(keys, author=AUTHOR):
    msg = (f"From: Author <author@{author}>\r\nTo: list@{LIST}\r\nSubject: hello\r\n"
           f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a1@{author}>\r\n"
           "\r\nHello list.\r\n").encode()
    return sign(msg, keys[AUTHOR], "s1", AUTHOR)


def through_list(message, keys, sealer=LIST, aar=AAR_PASS, list_id=b""):
    """What a list does: a subject tag and a footer (the author's signature
    breaks), then its own A-R and seal."""
    head, _, body = message.partition(b"\r\n\r\n")
    head = head.replace(b"Subject: hello", b"Subject: [list] hello") + b"\r\n" + list_id
    changed = head.rstrip(b"\r\n") + b"\r\n\r\n" + body + b"-- \r\nlist footer\r\n"
    changed = f"Authentication-Results: {sealer}; arc=none; {aar}\r\n".encode() + changed
    made = dkim.arc_sign(changed, b"arc", sealer.encode(), keys[sealer].private,
                         sealer.encode(),
                         include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert made, "dkimpy made no ARC set"
    return b"".join(made) + changed


def run(message, keys, text="", *, ip=LIST_IP, mail_from=f"list-bounces@{LIST}", cfg=None):
    cfg = cfg or loads(BASE + text)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(zone(keys))),
                    hostname="mx.test.example")
    try:
        verdict, _conn, msg = run_offline(engine, client_ip=ip, helo="mx.lists.example",
                                          mail_from=mail_from, rcpts=["bob@rcpt.example"],
                                          message=message)
        msg.close()
        return verdict
    finally:
        engine.close()


def dmarc_resinfo(verdict):
    return resinfo(verdict, "dmarc")


def refused(verdict):
    found = dmarc_of(verdict)
    return found.reply is not None and found.reply.code == 550


TRUST = f"[check.arc]\ntrusted_sealers = {LIST}\n"


def test_trusted_sealer_overrides_a_list_broken_signature(keys):
    verdict = run(through_list(authored(keys), keys), keys, TRUST)
    found = dmarc_of(verdict)
    (dkim_r,) = [r for r in verdict.results if r.check == "dkim"]
    (arc_r,) = [r for r in verdict.results if r.check == "arc"]
    assert dkim_r.result == "fail" and arc_r.symbol == "ARC_PASS_TRUSTED"
    assert found.result == "fail" and found.symbol == "DMARC_FAIL_OVERRIDDEN"
    assert found.reply is None and not found.quarantine
    ar = dict(verdict.headers_added)["Authentication-Results"]
    assert f"overridden: trusted ARC sealer {LIST}" in ar
    assert "dis=none" in ar
    assert dmarc_resinfo(verdict).result == "fail"


def test_same_chain_from_an_untrusted_sealer_is_rejected(keys):
    verdict = run(through_list(authored(keys), keys, sealer=OTHER), keys, TRUST)
    (arc_r,) = [r for r in verdict.results if r.check == "arc"]
    assert arc_r.symbol == "ARC_PASS"
    assert refused(verdict) and dmarc_of(verdict).symbol == "DMARC_FAIL_REJECT"


def test_no_trusted_sealers_configured_rejects(keys):
    assert refused(run(through_list(authored(keys), keys), keys))


def test_aar_saying_fail_at_the_trusted_hop_is_no_override(keys):
    verdict = run(through_list(authored(keys), keys, aar=AAR_FAIL), keys, TRUST)
    assert [r.symbol for r in verdict.results if r.check == "arc"] == ["ARC_PASS_TRUSTED"]
    assert refused(verdict)


def test_aar_passing_an_unrelated_domain_is_no_override(keys):
    aar = "dkim=pass header.d=elsewhere.example; spf=pass smtp.mailfrom=x@elsewhere.example"
    assert refused(run(through_list(authored(keys), keys, aar=aar), keys, TRUST))


def test_broken_chain_cv_fail_is_never_trusted(keys):
    sealed = through_list(authored(keys), keys)
    broken = sealed.replace(b"list footer", b"changed after sealing")
    verdict = run(broken, keys, TRUST)
    (arc_r,) = [r for r in verdict.results if r.check == "arc"]
    assert arc_r.result == "fail"
    assert refused(verdict)
    # and sealed on top by the trusted sealer with cv=fail: still no trust
    head = f"Authentication-Results: {LIST}; arc=fail; {AAR_PASS}\r\n".encode() + broken
    made = dkim.arc_sign(head, b"arc", LIST.encode(), keys[LIST].private, LIST.encode(),
                         include_headers=[b"from", b"to", b"subject"])
    verdict = run(b"".join(made) + head, keys, TRUST)
    (arc_r,) = [r for r in verdict.results if r.check == "arc"]
    assert arc_r.result == "fail" and refused(verdict)


def test_override_network(keys):
    message = through_list(authored(keys), keys, sealer=OTHER)
    verdict = run(message, keys, "[check.dmarc]\noverride_networks = 198.51.100.0/24\n")
    found = dmarc_of(verdict)
    assert found.reply is None and found.symbol == "DMARC_FAIL_OVERRIDDEN"
    assert "overridden: client 198.51.100.9 in override_networks" in found.reason
    assert refused(run(message, keys, "[check.dmarc]\noverride_networks = 192.0.2.0/24\n"))


def test_override_sender(keys):
    message = through_list(authored(keys), keys, sealer=OTHER)
    verdict = run(message, keys, f"[check.dmarc]\noverride_senders = {LIST}\n")
    assert dmarc_of(verdict).reply is None
    assert f"envelope sender domain {LIST}" in dmarc_of(verdict).reason
    assert refused(run(message, keys, "[check.dmarc]\noverride_senders = x.example\n"))


@pytest.mark.parametrize("list_id, overridden", [
    (b"List-Id: Our list <list.lists.sealer.example>\r\n", True),
    (b"List-Id: <LIST.Lists.Sealer.Example>\r\n", True),
    (b"List-Id: list.lists.sealer.example\r\n", True),
    (b"List-Id: <list.lists.sealer.example.evil>\r\n", False),
    (b"List-Id: <list.lists.sealer.example\r\n", False),
    (b"List-Id: <list.lists.sealer.example>\r\nList-Id: <list.lists.sealer.example>\r\n",
     False),
    (b"List-Id: <" + b"a" * 300 + b">\r\n", False),
    (b"", False),
])
def test_override_list_id(keys, list_id, overridden):
    message = through_list(authored(keys), keys, sealer=OTHER, list_id=list_id)
    verdict = run(message, keys, "[check.dmarc]\noverride_list_ids = list.lists.sealer.example\n")
    assert refused(verdict) is not overridden
    if overridden:
        assert "List-Id list.lists.sealer.example in override_list_ids" in \
            dmarc_of(verdict).reason


def test_our_own_from_domain_is_never_overridden_unless_allowed(keys):
    own = "[check.dmarc]\noverride_networks = 198.51.100.0/24\n"
    msg = (b"From: Bob <bob@rcpt.example>\r\nTo: list@x.example\r\nSubject: hi\r\n"
           b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <b1@rcpt.example>\r\n"
           b"\r\nHello.\r\n")
    assert refused(run(msg, keys, own))
    verdict = run(msg, keys, own + "override_local_domains = yes\n")
    assert dmarc_of(verdict).reply is None


def test_bad_override_values_are_refused():
    from mailwarden.config import ConfigError
    with pytest.raises(ConfigError) as err:
        loads(BASE + "[check.dmarc]\noverride_networks = not-a-net\n")
    assert "override_networks" in str(err.value)
    with pytest.raises(ConfigError) as err:
        loads(BASE + "[check.arc]\ntrusted_sealers_file = /nonexistent/sealers\n")
    assert "trusted_sealers_file" in str(err.value)


def test_aggregate_report_says_trusted_forwarder(keys, tmp_path):
    cfg = loads(BASE + TRUST + f"[check.dmarc]\nhistory = {tmp_path / 'history.db'}\n"
                "[dmarc_report]\norg_name = Test Receiver Org\ndomain = mx.test.example\n"
                "email = postmaster@test.example\n")
    verdict = run(through_list(authored(keys), keys), keys, cfg=cfg)
    assert dmarc_of(verdict).reply is None
    reports, _skipped = dmarc_report.make_reports(cfg, since=3600, now=time.time() + 1)
    (report,) = reports
    SCHEMA.validate(report.xml)
    root = ET.fromstring(report.xml)
    (record,) = root.findall("d:record", NS)
    evaluated = record.find("d:row/d:policy_evaluated", NS)
    assert evaluated.find("d:disposition", NS).text == "none"
    assert evaluated.find("d:dkim", NS).text == "fail"
    assert evaluated.find("d:spf", NS).text == "fail"
    (reason,) = evaluated.findall("d:reason", NS)
    assert reason.find("d:type", NS).text == "trusted_forwarder"
    assert reason.find("d:comment", NS).text == f"trusted ARC sealer {LIST}"


def test_trusted_sealers_file(keys, tmp_path):
    listed = tmp_path / "sealers"
    listed.write_text(f"# lists we trust\n{LIST}\n")
    verdict = run(through_list(authored(keys), keys), keys,
                  f"[check.arc]\ntrusted_sealers_file = {listed}\n")
    assert dmarc_of(verdict).reply is None
    listed.write_text("ok.example\nnot a domain!\n")
    from mailwarden.config import ConfigError
    with pytest.raises(ConfigError) as err:
        loads(BASE + f"[check.arc]\ntrusted_sealers_file = {listed}\n")
    assert f"{listed}:2" in str(err.value)
