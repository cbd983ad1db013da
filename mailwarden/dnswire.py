"""DNS on the wire for the common lookups: a query built and an answer read
in a few dozen microseconds, where dnspython's general message machinery
takes about 300 (measured: a TXT lookup over loopback, 318 us of CPU with
``dns.query.udp``, 38 us of which are the socket's).

Only what mailwarden asks itself goes this way (A, AAAA, TXT, MX, PTR,
CNAME, NS) and only for plain host names (letters, digits, ``-`` and
``_``); anything else, and every name or type this module declines, goes
through dnspython (:class:`mailwarden.dns.DnspythonBackend`), which also
stays the reference the tests compare with.

What the answer says is read as RFC 1035 has it (section 4.1) and checked
as a stub resolver must: the ID, the QR bit, the opcode and the question
must be ours, or the datagram is ignored and the wait goes on (a forged or
late answer does not end it); a compression pointer must point before
itself, a name is at most 255 octets, every length stays inside the
message, or the answer is malformed (:class:`WireError`).  A CNAME chain
in the answer is followed from the name asked, as dnspython does; the
records of the type asked at its end are the answer, their TTL the
smallest of the chain's.  Like dnspython's resolver (and as mailwarden
asked before), queries carry no EDNS and ask for recursion; a truncated
answer is asked again over TCP.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from dataclasses import dataclass

import dns.ipv6
import dns.name

__all__ = ["TYPES", "WireError", "Reply", "askable", "encode_query", "parse_reply",
           "ask_udp", "ask_tcp"]

# the types read here, name -> code (RFC 1035 3.2.2, RFC 3596)
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
_SOA = 6
_CLASS_IN = 1
_CNAME_HOPS = 16

# a name this module sends: labels of letters, digits, "-" and "_", 1 to
# 63 octets each, 253 in all (what normalize() gives for a host name)
_PLAIN_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}\Z")

RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_YXDOMAIN = 0, 3, 6


class WireError(Exception):
    """An answer that cannot be read: the server's fault, told apart from a
    lookup's outcome."""


def askable(name: str, rdtype: str) -> bool:
    """Whether this module sends this query (else dnspython does)."""
    return rdtype in TYPES and len(name) <= 253 and _PLAIN_NAME.match(name) is not None


def encode_query(qid: int, name: str, rdtype: str) -> bytes:
    """The query message: ID ``qid``, RD set, one question, no EDNS."""
    parts = [struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)]
    for label in name.split("."):
        parts.append(bytes((len(label),)) + label.encode("ascii"))
    parts.append(struct.pack("!BHH", 0, TYPES[rdtype], _CLASS_IN))
    return b"".join(parts)


@dataclass
class Reply:
    """What an answer says about the question asked."""
    rcode: int
    truncated: bool
    records: tuple = ()          # values of the type asked, at the end of the CNAME chain
    ttl: float | None = None     # their TTL (with the chain's); None without records
    negative_ttl: float | None = None   # from the SOA in the authority section


def _name(data: bytes, offset: int) -> tuple[tuple, int]:
    """The labels of the name at ``offset`` (without the root's) and the
    offset after it where it is written (not where a pointer led)."""
    labels = []
    size = 0
    hops = 0
    end = None
    pos = offset
    limit = len(data)
    while True:
        if pos >= limit:
            raise WireError("name runs past the end of the message")
        length = data[pos]
        if length >= 0xC0:
            if pos + 1 >= limit:
                raise WireError("compression pointer runs past the end of the message")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            hops += 1
            if target >= pos or hops > 127:
                raise WireError("compression pointer does not point backwards")
            if end is None:
                end = pos + 2
            pos = target
            continue
        if length > 63:
            raise WireError("unknown label type")
        if length == 0:
            if size + 1 > 255:
                raise WireError("name longer than 255 octets")
            return tuple(labels), (pos + 1 if end is None else end)
        size += length + 1
        if size > 255:
            raise WireError("name longer than 255 octets")
        if pos + 1 + length > limit:
            raise WireError("label runs past the end of the message")
        labels.append(data[pos + 1:pos + 1 + length])
        pos += 1 + length


def _key(labels: tuple) -> tuple:
    # names compare without regard to ASCII case (RFC 4343)
    return tuple(label.lower() for label in labels)


def _name_text(labels: tuple) -> str:
    # dnspython's presentation form, escapes included: these names are
    # the sender's data (a PTR, an MX) and must read exactly as before
    return dns.name.Name(labels + (b"",)).to_text(omit_final_dot=True)


def _value(data: bytes, rdtype: int, start: int, end: int):
    """A record's value as mailwarden.dns gives it, and a key that tells
    two records apart as dnspython's rdataset does (a repeated one counts once)."""
    if rdtype == 1:
        if end - start != 4:
            raise WireError("A record of the wrong length")
        value = "%d.%d.%d.%d" % tuple(data[start:end])
        return value, value
    if rdtype == 28:
        if end - start != 16:
            raise WireError("AAAA record of the wrong length")
        value = dns.ipv6.inet_ntoa(data[start:end])
        return value, value
    if rdtype == 16:
        strings = []
        pos = start
        while pos < end:
            length = data[pos]
            if pos + 1 + length > end:
                raise WireError("TXT string runs past its record")
            strings.append(data[pos + 1:pos + 1 + length])
            pos += 1 + length
        if not strings:
            raise WireError("TXT record without a string")
        return b"".join(strings).decode("utf-8", "replace"), tuple(strings)
    if rdtype == 15:
        if end - start < 3:
            raise WireError("MX record too short")
        preference = (data[start] << 8) | data[start + 1]
        labels, after = _name(data, start + 2)
        if after != end:
            raise WireError("MX record of the wrong length")
        return (preference, _name_text(labels)), (preference, _key(labels))
    # PTR, CNAME, NS: one name
    labels, after = _name(data, start)
    if after != end:
        raise WireError("name record of the wrong length")
    return _name_text(labels), _key(labels)


def parse_reply(data: bytes, qid: int, name: str, rdtype: str) -> Reply | None:
    """The answer to our question, or None if ``data`` is not one (another
    ID, not a response, another question): ignored, the wait goes on.
    Raises WireError for an answer to our question that cannot be read."""
    if len(data) < 12:
        return None
    rid, flags, qdcount, ancount, nscount, _arcount = struct.unpack_from("!HHHHHH", data)
    if rid != qid or not flags & 0x8000 or (flags >> 11) & 0xF != 0:
        return None
    rcode = flags & 0xF
    qtype = TYPES[rdtype]
    asked = _key(tuple(label.encode("ascii") for label in name.split(".")))
    pos = 12
    try:
        if qdcount != 1:
            # a server that cannot answer may leave the question out
            # (FORMERR, SERVFAIL, NOTIMP, REFUSED: RFC 1035 4.1.1)
            if qdcount == 0 and rcode in (1, 2, 4, 5):
                return Reply(rcode, bool(flags & 0x0200))
            return None
        labels, pos = _name(data, pos)
        if pos + 4 > len(data):
            return None
        rtype, rclass = struct.unpack_from("!HH", data, pos)
        if _key(labels) != asked or rtype != qtype or rclass != _CLASS_IN:
            return None
    except WireError:
        return None
    pos += 4
    truncated = bool(flags & 0x0200)
    if truncated:
        return Reply(rcode, True)
    # the answer section: (owner key, type) -> [ttls, values, seen keys]
    found: dict = {}
    negative = None
    for section, count in ((0, ancount), (1, nscount)):
        for _ in range(count):
            owner, pos = _name(data, pos)
            if pos + 10 > len(data):
                raise WireError("record header runs past the end of the message")
            rtype, rclass, ttl, length = struct.unpack_from("!HHIH", data, pos)
            pos += 10
            start, pos = pos, pos + length
            if pos > len(data):
                raise WireError("record data runs past the end of the message")
            if rclass != _CLASS_IN:
                continue
            if section == 0 and rtype in (qtype, 5):
                value, key = _value(data, rtype, start, pos)
                entry = found.setdefault((_key(owner), rtype), [ttl, [], {}])
                entry[0] = min(entry[0], ttl)
                if rtype == 5:
                    # a name has one CNAME: of several, dnspython keeps the last
                    entry[1], entry[2] = [value], {key: None}
                elif key not in entry[2]:
                    entry[2][key] = None
                    entry[1].append(value)
            elif section == 1 and rtype == _SOA and negative is None:
                _mname, at = _name(data, start)
                _rname, at = _name(data, at)
                if at + 20 != pos:
                    raise WireError("SOA record of the wrong length")
                minimum = struct.unpack_from("!I", data, at + 16)[0]
                negative = float(min(ttl, minimum))
    if rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        return Reply(rcode, False, negative_ttl=negative)
    # follow the CNAME chain from the name asked; as long a chain as
    # dnspython's resolver follows (16 aliases), no longer; NXDOMAIN's too,
    # which must not end in records of the type asked
    owner = asked
    chain_ttl = None
    for _ in range(_CNAME_HOPS):
        entry = found.get((owner, qtype))
        if entry is not None:
            if rcode == RCODE_NXDOMAIN:
                raise WireError("NXDOMAIN with an answer")
            ttl = entry[0] if chain_ttl is None else min(entry[0], chain_ttl)
            return Reply(rcode, False, tuple(entry[1]), float(ttl), negative)
        alias = found.get((owner, 5))
        if alias is None or qtype == 5:
            return Reply(rcode, False, negative_ttl=negative)
        chain_ttl = alias[0] if chain_ttl is None else min(alias[0], chain_ttl)
        owner = next(iter(alias[2]))
    raise WireError("CNAME chain too long")



def new_id() -> int:
    return int.from_bytes(os.urandom(2), "big")


def ask_udp(family: int, sockaddr, query: bytes, qid: int, name: str, rdtype: str,
            deadline: float, clock=time.monotonic) -> Reply | None:
    """One query to one server over UDP: its answer, or None when none
    came by ``deadline``.  Datagrams that are not our answer are ignored."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)           # only that server's datagrams reach us
        sock.send(query)
        while True:
            left = deadline - clock()
            if left <= 0:
                return None
            # a socket timeout waits with poll(): no limit on the descriptor's
            # number, as select() has (a busy milter holds many)
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except socket.timeout:
                return None
            except InterruptedError:
                continue
            except ConnectionRefusedError:
                raise WireError("connection refused") from None
            reply = parse_reply(data, qid, name, rdtype)
            if reply is not None:
                return reply


def ask_tcp(family: int, sockaddr, query: bytes, qid: int, name: str, rdtype: str,
            deadline: float, clock=time.monotonic) -> Reply | None:
    """The same query over TCP (RFC 7766): its answer, None past ``deadline``."""
    left = deadline - clock()
    if left <= 0:
        return None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(left)
        try:
            sock.connect(sockaddr)
            sock.sendall(struct.pack("!H", len(query)) + query)
            head = _read(sock, 2, deadline, clock)
            if head is None:
                return None
            data = _read(sock, struct.unpack("!H", head)[0], deadline, clock)
        except socket.timeout:
            return None
        except OSError as exc:
            raise WireError(f"TCP: {exc.strerror or exc.__class__.__name__}") from None
        if data is None:
            return None
        reply = parse_reply(data, qid, name, rdtype)
        if reply is None:
            raise WireError("TCP answer to another question")
        return reply


def _read(sock, size: int, deadline: float, clock) -> bytes | None:
    chunks = []
    while size:
        left = deadline - clock()
        if left <= 0:
            return None
        sock.settimeout(left)
        chunk = sock.recv(size)
        if not chunk:
            raise WireError("TCP connection closed before the whole answer")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
