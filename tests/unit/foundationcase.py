"""What the tests of size, iplist and iprev share: these three checks alone
on the fake resolver, whatever else the project has enabled by default."""

from mailwarden.checks import registry
from mailwarden.config import loads
from mailwarden.dns import Resolver, ZoneBackend
from mailwarden.engine import Engine, run_offline

BASE = "[authserv]\nid = mx.test.example\n"

ZONE = """
; pass: PTR and forward agree
7.100.51.198.in-addr.arpa. PTR mail.sender.example.
mail.sender.example. A 198.51.100.7
; fail: the PTR name points elsewhere
8.100.51.198.in-addr.arpa. PTR liar.sender.example.
liar.sender.example. A 203.0.113.200
; several PTR names, the second one confirms
9.100.51.198.in-addr.arpa. PTR nothing.sender.example.
9.100.51.198.in-addr.arpa. PTR good.sender.example.
good.sender.example. A 198.51.100.9
; temperror on the forward lookup
10.100.51.198.in-addr.arpa. PTR slow.sender.example.
slow.sender.example. TIMEOUT
; temperror on the PTR itself
11.100.51.198.in-addr.arpa. SERVFAIL
; IPv6
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR v6.sender.example.
v6.sender.example. AAAA 2001:db8::25
"""

MESSAGE = b"From: a@sender.example\r\nSubject: test\r\n\r\nHello.\r\n"


# these three checks alone, whatever else the project has enabled by default
FOUNDATION = {name: registry()[name] for name in ("iplist", "iprev", "size")}


def run(ip, text=BASE, message=MESSAGE, **kw):
    cfg = loads(text, registry=FOUNDATION)
    engine = Engine(cfg, resolver=Resolver(cfg.dns, backend=ZoneBackend(ZONE)),
                    hostname="mx.test.example", registry=FOUNDATION)
    kw.setdefault("mail_from", "a@sender.example")
    kw.setdefault("rcpts", ["b@test.example"])
    verdict, _, _ = run_offline(engine, client_ip=ip, message=message, **kw)
    engine.close()
    return verdict


def iprev(verdict):
    return [r for r in verdict.results if r.check == "iprev"]
