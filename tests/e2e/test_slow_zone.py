"""One zone that never answers must not starve everyone's lookups.

A DNS stand-in in front of unbound drops every query under
``slow.test.example`` and the client's reverse zone of the hostile
connections (203.0.113.0/24), and hands every other answer on with TTL 0,
so that each legitimate message asks again (a cold cache, the case where
its lookups must share the workers).  Hostile connections (bounded in
number and in time, loopback only) then keep mailwarden waiting on that
zone at every stage: PTR, HELO name, MAIL FROM domain, DKIM key, DMARC
record.  Meanwhile legitimate mail, SPF-, DKIM- and DMARC-aligned, must
keep its normal verdicts: accepted, with iprev, spf, dkim and dmarc pass.

The legitimate messages' outcomes and times are printed (``-s`` shows
them); ``bench/`` is where speed is measured, here only verdicts count.
"""

from __future__ import annotations

import re
import statistics
import threading
import time

import dns.exception
import dns.message
import pytest

from tests import dkimkeys
from tests.udpserver import UdpServer, forward

from tests.harness import AUTHSERV_ID, make_message, smtp_send

SLOW_SUFFIXES = (".slow.test.example", ".113.0.203.in-addr.arpa")
LEGIT = {"ADDR": "198.51.100.141", "NAME": "relay.mw-auth.example",
         "HELO": "relay.mw-auth.example"}
HOSTILE_CONNECTIONS = 48
LEGIT_MESSAGES = 16
LEGIT_SENDERS = 2
LEGIT_PAUSE = 0.7            # between one sender's messages: they span ~5 s of hostile load
RUN_LIMIT = 150.0            # seconds for the whole run, whatever happens


class SlowZoneDns(UdpServer):
    """Drops queries into the slow zones; forwards the rest, TTLs set to 0."""

    def __init__(self, upstream_port: int):
        super().__init__()
        self.upstream_port = upstream_port
        self.dropped = 0

    def handle(self, data: bytes):
        try:
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text(True).lower()
        except (dns.exception.DNSException, IndexError):
            return None
        if name.endswith(SLOW_SUFFIXES):
            self.dropped += 1
            return None
        answer = forward(data, self.upstream_port)
        if answer is None:
            return None
        try:
            response = dns.message.from_wire(answer)
        except dns.exception.DNSException:
            return answer
        for rrset in response.answer:
            rrset.ttl = 0
        return response.to_wire()


@pytest.fixture(scope="module")
def legit_key(dns_server):
    key = dkimkeys.ed25519_key()
    dns_server.add(key.zone_line("slowtest", "mw-reject.example"))
    return key


@pytest.fixture
def slow_dns(dns_server):
    server = SlowZoneDns(dns_server.port).start()
    yield server
    server.stop()


def _hostile(port: int, index: int, stop: threading.Event, outcomes: list) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        tag = f"{index}-{n}"
        data, _ = make_message("hostile", sender=f"x@f{tag}.slow.test.example",
                               body=" ".join(f"http://www.u{i}-{tag}.example.com/"
                                             for i in range(8)) + "\n",
                               extra_headers=[
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=k{tag}.slow.test.example;"
            f" s=s{n}; h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;"
            f" b=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZQ=="])
        result = smtp_send(port, xclient={"ADDR": f"203.0.113.{index % 250 + 1}",
                                          "NAME": "[UNAVAILABLE]"},
                           helo=f"h{tag}.slow.test.example",
                           mail_from=f"x@m{tag}.slow.test.example",
                           rcpts=["bob@rcpt.example"], data=data, timeout=60)
        outcomes.append(result.code)


def _legit(port: int, key, count: int, sink, found: list, pause: float = 0.0) -> None:
    for i in range(count):
        if i and pause:
            time.sleep(pause)           # spread over the hostile transactions' stages
        data, msgid = make_message("legit under load", sender="a@mw-reject.example",
                                   body="See https://www.mw-reject.example/news today.\n")
        data = dkimkeys.sign(data, key, "slowtest", "mw-reject.example")
        started = time.monotonic()
        result = smtp_send(port, xclient=LEGIT, helo=LEGIT["HELO"],
                           mail_from="a@mw-reject.example", rcpts=["bob@rcpt.example"],
                           data=data, timeout=60)
        elapsed = time.monotonic() - started
        ar = ""
        if result.accepted:
            got = sink.wait_for_match(msgid.encode(), timeout=30)
            ours = [v for v in got.header_values("Authentication-Results")
                    if v.lower().startswith(AUTHSERV_ID + ";")]
            ar = re.sub(r"\s+", " ", ours[0]) if ours else ""
        found.append((result.code, f"{result.stage}: {result.enhanced} {result.text[:80]}",
                      elapsed, ar))


def _verdict(code: int, ar: str) -> str:
    if code != 250:
        return str(code)
    methods: dict = {}
    for method, result in re.findall(r"(?:^|;)\s*(iprev|spf|dkim|dmarc)=(\w+)", ar):
        methods.setdefault(method, result)
    return "250 " + " ".join(f"{m}={methods.get(m, '-')}" for m in ("iprev", "spf", "dkim",
                                                                      "dmarc"))


# with every DNS list on, more checks share a stage and wait side by side
LISTS_ON = {
    "check.uribl": {"enabled": "yes"},
    "check.dnsbl.zen": {"zone": "zen.dnsbl.mailwarden.test", "kind": "ip",
                        "codes": "127.0.0.2:SBL", "score": "1"},
    "check.dnsbl.dbl": {"zone": "dbl.dnsbl.mailwarden.test", "kind": "domain",
                        "prefix": "SMTP_DBL", "codes": "127.0.1.2:SPAM", "score": "1"},
}


@pytest.mark.parametrize("overrides", [None, LISTS_ON], ids=["defaults", "lists-on"])
def test_legitimate_mail_keeps_its_verdicts_while_a_zone_never_answers(
        postfix, sink, mailwarden, legit_key, slow_dns, overrides):
    mailwarden(overrides, dns_port=slow_dns.port)
    sink.clear()
    # the verdict without load: what the legitimate mail must keep
    quiet: list = []
    _legit(postfix.smtp_port, legit_key, 2, sink, quiet)
    expected = "250 iprev=pass spf=pass dkim=pass dmarc=pass"
    assert [_verdict(c, ar) for c, _e, _t, ar in quiet] == [expected] * 2, quiet

    stop = threading.Event()
    hostile_codes: list = []
    hostile = [threading.Thread(target=_hostile, args=(postfix.smtp_port, i, stop,
                                                        hostile_codes), daemon=True)
               for i in range(HOSTILE_CONNECTIONS)]
    started = time.monotonic()
    for thread in hostile:
        thread.start()
    try:
        # let the hostile connections fill every queue first
        deadline = time.monotonic() + 30
        while slow_dns.dropped < HOSTILE_CONNECTIONS * 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        found: list = []
        senders = [threading.Thread(target=_legit, args=(postfix.smtp_port, legit_key,
                                                          LEGIT_MESSAGES // LEGIT_SENDERS,
                                                          sink, found, LEGIT_PAUSE),
                                    daemon=True)
                   for _ in range(LEGIT_SENDERS)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(max(1.0, RUN_LIMIT - (time.monotonic() - started)))
    finally:
        stop.set()
        for thread in hostile:
            thread.join(max(1.0, RUN_LIMIT + 60 - (time.monotonic() - started)))
    times = sorted(t for _c, _e, t, _a in found)
    verdicts = [_verdict(c, ar) for c, _e, _t, ar in found]
    print(f"\nslow zone ({'lists on' if overrides else 'defaults'}): "
          f"{HOSTILE_CONNECTIONS} hostile connections, "
          f"{len(hostile_codes)} hostile transactions "
          f"({sorted(set(hostile_codes))}), {slow_dns.dropped} queries dropped")
    print("legitimate mail: " + ", ".join(f"{v}: {verdicts.count(v)}"
                                          for v in sorted(set(verdicts))))
    for code, what, _t, _ar in found:
        if code != 250:
            print(f"  refused at {what}")
    if times:
        print(f"legitimate mail times: median {statistics.median(times):.2f}s, "
              f"max {times[-1]:.2f}s, min {times[0]:.2f}s")
    assert len(found) == LEGIT_MESSAGES, found
    assert slow_dns.dropped >= HOSTILE_CONNECTIONS * 2, "the hostile load did not reach DNS"
    assert verdicts == [expected] * LEGIT_MESSAGES, found
