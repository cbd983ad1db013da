"""Config and engine limited to the connection checks (iplist, iprev, limits,
helo, dnsbl), and spf, which limits reads (a sender SPF passed is counted
alone): other checks' verdicts stay out of these checks' tests."""

from mailwarden.checks.dnsbl import DnsblCheck
from mailwarden.checks.helo import HeloCheck
from mailwarden.checks.iplist import IplistCheck
from mailwarden.checks.iprev import IprevCheck
from mailwarden.checks.limits import LimitsCheck
from mailwarden.checks.spf import SpfCheck
from mailwarden.config import loads as _loads
from mailwarden.engine import Engine as _Engine

REGISTRY = {c.name: c for c in (IplistCheck, IprevCheck, SpfCheck, LimitsCheck, HeloCheck,
                                 DnsblCheck)}


def loads(text, path="<string>"):
    return _loads(text, path, registry=REGISTRY)


def Engine(config, **kw):
    kw.setdefault("registry", REGISTRY)
    return _Engine(config, **kw)
