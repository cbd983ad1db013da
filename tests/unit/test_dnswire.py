"""mailwarden.dnswire against dnspython, the reference it replaces on the
common lookups: the same question on the wire, the same records, CNAME
chains and negative TTLs out of the same answers; and on hostile bytes
(forged IDs, other questions, compression loops, lengths past the end,
random mutations) no answer it should not believe and no exception but
WireError."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailwarden import dnswire
from mailwarden.dns import (DnspythonBackend, Status, WireBackend, _record_value,
                            _server_addresses)
from tests.dnsstub import StubDns

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)
RAW_LABEL = st.binary(min_size=1, max_size=20)


def _response(name: str, rdtype: str, qid: int = 4242):
    query = dns.message.make_query(name + ".", rdtype)
    query.id = qid
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    return response


def _expected(wire: bytes, rdtype: str):
    """What dnspython's resolver makes of an answer on the wire, as it
    checks it (dns.resolver.Answer, for any type when NXDOMAIN): (records,
    ttl) at the end of the CNAME chain, or None.  Raises what it raises.
    (The wire, not the message: dnspython shuffles a record set's order
    each time it writes one.)"""
    response = dns.message.from_wire(wire)
    qname = response.question[0].name
    if response.rcode() == dns.rcode.NXDOMAIN:
        dns.resolver.Answer(qname, dns.rdatatype.ANY, dns.rdataclass.IN, response)
        return None
    if response.rcode() != dns.rcode.NOERROR:
        return None
    answer = dns.resolver.Answer(qname, dns.rdatatype.from_text(rdtype), dns.rdataclass.IN,
                                 response)
    if answer.rrset is None:
        return None
    return (tuple(_record_value(r) for r in answer.rrset), answer.rrset.ttl,
            answer.chaining_result.minimum_ttl)


def _rdata_strategy(rdtype: str):
    if rdtype == "A":
        return st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
    if rdtype == "AAAA":
        return st.binary(min_size=16, max_size=16).map(
            lambda b: dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.AAAA, b, 0,
                                          16).to_text())
    if rdtype == "TXT":
        # character-strings of any bytes, several per record
        return st.lists(st.binary(max_size=40), min_size=1, max_size=4).map(
            lambda parts: " ".join('"' + "".join(f"\\{c:03d}" for c in p) + '"' for p in parts))
    names = st.lists(RAW_LABEL, min_size=1, max_size=4).map(
        lambda labels: dns.name.Name(tuple(labels) + (b"",)).to_text())
    if rdtype == "MX":
        return st.tuples(st.integers(0, 65535), names).map(lambda t: f"{t[0]} {t[1]}")
    return names


@st.composite
def answers(draw):
    rdtype = draw(st.sampled_from(["A", "AAAA", "TXT", "MX", "PTR", "CNAME", "NS"]))
    name = draw(NAME)
    response = _response(name, rdtype)
    owner = dns.name.from_text(name + ".")
    # a CNAME chain first, now and then (owners in other case: RFC 4343)
    if rdtype != "CNAME":
        for _ in range(draw(st.integers(0, 3))):
            target = dns.name.from_text(draw(NAME) + ".cname.example.")
            spelled = dns.name.from_text(draw(st.sampled_from([str.lower, str.upper]))(
                owner.to_text()))
            response.answer.append(dns.rrset.from_text(
                spelled, draw(st.integers(0, 2**31 - 1)), "IN", "CNAME", target.to_text()))
            owner = target
    if draw(st.booleans()):
        values = draw(st.lists(_rdata_strategy(rdtype), min_size=1, max_size=4))
        response.answer.append(dns.rrset.from_text_list(
            owner, draw(st.integers(0, 2**31 - 1)), "IN", rdtype, values))
    if draw(st.booleans()):
        response.authority.append(dns.rrset.from_text(
            "example.", draw(st.integers(0, 86400)), "IN", "SOA",
            f"ns.example. host.example. 1 2 3 4 {draw(st.integers(0, 86400))}"))
    if draw(st.booleans()):
        response.set_rcode(dns.rcode.NXDOMAIN)
    return name, rdtype, response


@given(answers())
def test_reads_what_dnspython_reads(case):
    name, rdtype, response = case
    wire = response.to_wire()
    try:
        expected = _expected(wire, rdtype)
    except (dns.message.ChainTooLong, dns.message.AnswerForNXDOMAIN):   # refused by both
        with pytest.raises(dnswire.WireError):
            dnswire.parse_reply(wire, response.id, name, rdtype)
        return
    reply = dnswire.parse_reply(wire, response.id, name, rdtype)
    assert reply is not None and not reply.truncated
    assert reply.rcode == response.rcode()
    soa = [rrset for rrset in response.authority if rrset.rdtype == dns.rdatatype.SOA]
    expected_negative = float(min(soa[0].ttl, soa[0][0].minimum)) if soa else None
    assert reply.negative_ttl == expected_negative
    if response.rcode() != dns.rcode.NOERROR:
        assert reply.records == ()
        return
    if expected is None:
        assert reply.records == () and reply.ttl is None
    else:
        records, ttl, chain_ttl = expected
        assert reply.records == records
        # the chain's smallest TTL: never longer than the records' own
        assert reply.ttl <= ttl
        assert reply.ttl == chain_ttl


@given(NAME, st.sampled_from(sorted(dnswire.TYPES)), st.integers(0, 65535))
def test_the_query_is_the_question_dnspython_reads(name, rdtype, qid):
    assert dnswire.askable(name, rdtype)
    query = dns.message.from_wire(dnswire.encode_query(qid, name, rdtype))
    assert query.id == qid and query.flags & dns.flags.RD and not query.flags & dns.flags.QR
    assert query.edns < 0 and len(query.question) == 1
    question = query.question[0]
    assert question.name == dns.name.from_text(name + ".")
    assert dns.rdatatype.to_text(question.rdtype) == rdtype
    assert question.rdclass == dns.rdataclass.IN


@pytest.mark.parametrize("name,rdtype", [
    ("a b.example", "A"), ("a\\.b.example", "TXT"), ("bücher.example", "MX"),
    ("x" * 64 + ".example", "A"), ("a..example", "A"), ("", "A"), ("*.example", "A"),
    ("a.example", "SRV"), ("a.example", "SOA"), ("A.example", "A"),
    (("a" * 63 + ".") * 4, "TXT"),
])
def test_what_it_does_not_send_is_left_to_dnspython(name, rdtype):
    assert not dnswire.askable(name, rdtype)


def test_an_answer_to_another_question_is_not_ours():
    response = _response("a.example", "A")
    response.answer.append(dns.rrset.from_text("a.example.", 60, "IN", "A", "192.0.2.1"))
    wire = response.to_wire()
    assert dnswire.parse_reply(wire, 4242, "a.example", "A").records == ("192.0.2.1",)
    assert dnswire.parse_reply(wire, 4243, "a.example", "A") is None        # other ID
    assert dnswire.parse_reply(wire, 4242, "b.example", "A") is None        # other name
    assert dnswire.parse_reply(wire, 4242, "a.example", "TXT") is None      # other type
    query = wire[:2] + bytes([wire[2] & 0x7F]) + wire[3:]                   # QR clear
    assert dnswire.parse_reply(query, 4242, "a.example", "A") is None
    assert dnswire.parse_reply(wire[:11], 4242, "a.example", "A") is None


def test_records_under_another_name_are_not_the_answer():
    response = _response("a.example", "A")
    response.answer.append(dns.rrset.from_text("evil.example.", 60, "IN", "A", "192.0.2.66"))
    reply = dnswire.parse_reply(response.to_wire(), 4242, "a.example", "A")
    assert reply.records == () and reply.rcode == 0


def _header(qid=4242, flags=0x8180, qd=1, an=1, ns=0, ar=0):
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x01a\x07example\x00" + struct.pack("!HH", 1, 1)


@pytest.mark.parametrize("record", [
    b"\xc0\x1d" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01",   # pointer to itself
    b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 9) + b"\x01\x02",           # rdata past the end
    b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 3) + b"\x01\x02\x03",       # A of 3 octets
    b"\xc0\x0c" + struct.pack("!HH", 1, 1),                                  # header cut
    b"\x41" + b"x" * 20,                                                     # unknown label type
    b"\xc0",                                                                 # pointer cut
])
def test_malformed_answers_are_refused(record):
    with pytest.raises(dnswire.WireError):
        dnswire.parse_reply(_header() + QUESTION + record, 4242, "a.example", "A")


def test_a_compression_loop_ends():
    # a name at 29 that points back to 12 (the question), whose labels then
    # lead to a pointer back again: refused, not followed for ever
    loop = _header(qd=1, an=1) + b"\x01a\xc0\x0c" + struct.pack("!HH", 1, 1)
    with pytest.raises(dnswire.WireError):
        dnswire._name(loop + b"\xc0\x0e", len(loop))


def test_names_in_records_read_as_dnspython_writes_them():
    # a PTR name is the sender's data: dots, spaces, quotes and bytes
    # outside ASCII inside a label stay escaped, exactly as before
    target = dns.name.Name((b"a.b", b"c d", b'"x"', b"\xff\x00", b""))
    response = _response("4.3.2.1.in-addr.arpa", "PTR")
    response.answer.append(dns.rrset.from_rdata_list(
        dns.name.from_text("4.3.2.1.in-addr.arpa."), 60,
        [dns.rdata.from_text("IN", "PTR", target.to_text())]))
    wire = response.to_wire()
    reply = dnswire.parse_reply(wire, 4242, "4.3.2.1.in-addr.arpa", "PTR")
    assert reply.records == (target.to_text(omit_final_dot=True),)
    assert reply.records == _expected(wire, "PTR")[0]


@given(answers(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       st.integers(0, 10**6))
def test_mangled_answers_never_raise_anything_else(case, flips, cut):
    name, rdtype, response = case
    wire = bytearray(response.to_wire())
    assume(len(wire) > 12)
    for where, value in flips:
        wire[12 + where % (len(wire) - 12)] = value       # the ID and flags stay ours
    wire = bytes(wire[:max(12, len(wire) - cut % len(wire))])
    try:
        reply = dnswire.parse_reply(wire, response.id, name, rdtype)
    except dnswire.WireError:
        return
    if reply is not None:
        assert all(isinstance(r, (str, tuple)) for r in reply.records)


@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(data):
    try:
        dnswire.parse_reply(b"\x10\x92" + data, 4242, "a.example", "A")
    except dnswire.WireError:
        pass


ZONE = """\
ok.test.example. 60 A 192.0.2.9
ok.test.example. 60 A 192.0.2.10
ok.test.example. 120 TXT "v=spf1 -all" "second string"
mx.test.example. 300 MX 10 mail.test.example.
mx.test.example. 300 MX 20 Backup.Test.Example.
6.2.0.192.in-addr.arpa. 30 PTR host.test.example.
v6.test.example. 60 AAAA 2001:db8::1
v6.test.example. 60 AAAA ::ffff:192.0.2.1
"""

QUERIES = [("ok.test.example", "A"), ("ok.test.example", "TXT"), ("ok.test.example", "MX"),
           ("mx.test.example", "MX"), ("6.2.0.192.in-addr.arpa", "PTR"),
           ("v6.test.example", "AAAA"), ("none.test.example", "A"),
           ("bad.test.example", "A"), ("a b.test.example", "A"), ("ok.test.example", "SOA")]


def test_the_backend_answers_as_dnspython_does():
    with StubDns(ZONE, servfail=["bad.test.example"]) as server:
        wire = WireBackend(["127.0.0.1"], server.port)
        reference = DnspythonBackend(["127.0.0.1"], server.port)
        for name, rdtype in QUERIES:
            got, want = wire.lookup(name, rdtype, 1.0), reference.lookup(name, rdtype, 1.0)
            # the server shuffles a record set on each answer, as dnspython writes it
            assert (got.status, sorted(got.records, key=str), got.ttl) == \
                (want.status, sorted(want.records, key=str), want.ttl), (name, rdtype, got, want)
    # the last two went through dnspython, the others through dnswire
    assert [dnswire.askable(n, t) for n, t in QUERIES[-3:]] == [True, False, False]


def test_a_server_that_is_not_a_plain_address_leaves_everything_to_dnspython():
    assert _server_addresses(["127.0.0.1", "dns.example"], 53) is None
    assert _server_addresses(["127.0.0.1", "https://dns.example/dns-query"], 53) is None
    servers = WireBackend(["127.0.0.1", "::1"], 5353)._servers
    assert [(text, sockaddr[:2]) for text, _family, sockaddr in servers] == \
        [("127.0.0.1", ("127.0.0.1", 5353)), ("::1", ("::1", 5353))]


def test_a_closed_port_is_a_temporary_failure_at_once():
    import socket
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                              # nothing listens there now
    answer = WireBackend(["127.0.0.1"], port).lookup("a.example", "A", 1.0)
    assert answer.status is Status.SERVFAIL and answer.temporary
    assert "127.0.0.1" in answer.detail


def test_a_forged_answer_first_does_not_cut_the_lookup_short():
    """Datagrams with another ID, another question or garbage, sent before
    the real answer, are ignored: the real answer is the one taken."""
    import socket
    import threading
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)

    def serve():
        data, peer = server.recvfrom(512)
        query = dns.message.from_wire(data)
        forged = dns.message.make_response(query)
        forged.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A",
                                                 "203.0.113.66"))
        forged.id = (query.id + 1) & 0xFFFF
        other = dns.message.make_response(dns.message.make_query("other.example.", "A"))
        other.id = query.id
        real = dns.message.make_response(query)
        real.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A",
                                               "192.0.2.7"))
        for wire in (forged.to_wire(), other.to_wire(), data[:2] + b"\x81\x80\xff\xff",
                     real.to_wire()):
            server.sendto(wire, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        answer = WireBackend(["127.0.0.1"], server.getsockname()[1]).lookup(
            "a.example", "A", 2.0)
    finally:
        thread.join(5)
        server.close()
    assert answer.status is Status.NOERROR and answer.records == ("192.0.2.7",), answer
