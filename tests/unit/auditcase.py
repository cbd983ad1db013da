"""What the audit tests share: the zone of audited domains
(tests/data/zones/audit_domains.zone), an audit run on it with the fake
resolver, and the finder of one finding."""

from __future__ import annotations

from pathlib import Path

from mailwarden.audit.domain import audit_domain
from mailwarden.config import DnsOptions
from mailwarden.dns import Resolver, ZoneBackend

DATA = Path(__file__).resolve().parents[1] / "data"
ZONE_FILE = DATA / "zones" / "audit_domains.zone"
ZONE = ZONE_FILE.read_text(encoding="utf-8")


def audit(domain, selectors=("s2048",), keys=(), zone=ZONE, arc_selectors=(), arc_keys=()):
    backend = ZoneBackend(zone)
    resolver = Resolver(DnsOptions(), backend=backend)
    try:
        report = audit_domain(resolver, domain, selectors, keys, arc_selectors, arc_keys)
    finally:
        resolver.close()
    report.backend = backend
    return report


def find(report, area, subject, level=None):
    found = [f for f in report.findings if f.area == area and f.subject == subject
             and (level is None or f.level == level)]
    assert found, f"no {area} finding about {subject}: {report.findings}"
    return found
