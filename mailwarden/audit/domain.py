"""``mailwarden audit DOMAIN``: what a mail domain publishes in DNS, judged.

Areas and what each finding means:

* ``mx``: at least two MX hosts (failover), each a host name (not an IP
  literal, not a CNAME: RFC 5321 §5.1, RFC 2181 §10.3) with a public
  address; the preferences explained; a null MX (RFC 7505) recognised.
* ``rdns``: every MX address has a PTR that resolves back to it (FCrDNS).
* ``spf``: exactly one ``v=spf1`` record, valid syntax (macros included),
  at most 10 DNS-querying terms and 2 void lookups counted through includes
  and redirects (RFC 7208 §4.6.4), no more than 10 MX names per ``mx``,
  ending in ``-all`` or ``~all``, no ``ptr``.
* ``dkim``: for each selector, the key is published, parses, is RSA of at
  least 2048 bits or Ed25519, is not revoked, allows sha256, and matches the
  local private key when one is known.
* ``arc``: for each ARC selector (``--arc-selector``, ``--arc-key``, or
  ``[check.arc] keys``), the key record at ``S._domainkey.DOMAIN`` is judged
  as a DKIM key is, by the same code, except that it must be RSA: RFC 8617
  defines rsa-sha256 alone, and verifiers refuse an ARC seal made with any
  other algorithm, so an Ed25519 key fails.  No ARC selector, no ``arc``
  finding: sealing is optional.
* ``dmarc``: as RFC 9989 reads it.  The DNS tree walk from the domain up
  (each name asked and what it has, where it stops), the organizational
  domain it gives, and the record that applies: the domain's own, its
  organizational domain's or a public suffix domain's (``psd=y``), found
  as the dmarc check finds it (:func:`mailwarden.orgdomain.tree_walk`).
  Then the record: valid, its policy, ``sp``, ``np``, ``psd``, ``t=y``
  (testing), the RFC 7489 tags RFC 9989 removed (``pct``, ``rf``, ``ri``:
  noted, with what a receiver now does with them), alignment modes, report
  addresses, and the authorisation of external report addresses
  (RFC 9990 §3, RFC 7489 §7.1).
* ``mta-sts`` / ``tls-rpt``: the ``_mta-sts`` and ``_smtp._tls`` records.
  The MTA-STS policy file is served over HTTPS: this audit asks DNS only and
  says so.

Lookups that fail (SERVFAIL, timeout) are findings of their own and make
the audit incomplete: the command then exits 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import dataclass, field

from ..address import AddressProblem, idna_to_ascii
from ..dns import Answer, Resolver, Status, normalize, ptr_name
from ..orgdomain import dmarc_tags, is_dmarc_record, is_domain, tree_walk, walk_names
from .findings import FAIL, OK, WARN, Finding, render
from .records import (SPF_LOOKUP_MECHANISMS, RecordError, is_spf, parse_dkim_key,
                      parse_dmarc, parse_spf, parse_sts, parse_tlsrpt)

__all__ = ["DomainAudit", "Report", "audit_domain", "register", "configured_keys"]

SPF_LOOKUP_LIMIT = 10
SPF_VOID_LIMIT = 2
SPF_MX_NAME_LIMIT = 10
# how many SPF records one audit reads through include/redirect: a bound on
# work, well above what a receiver would follow before its permerror
_SPF_RECORD_BOUND = 60
_RSA_MIN_BITS = 1024        # RFC 8301 §3.2: shorter keys MUST NOT be accepted
_RSA_GOOD_BITS = 2048       # RFC 8301 §3.2: signers SHOULD use at least this
_RSA_MAX_VERIFIED = 4096    # RFC 8301: verifiers need not go beyond this

# Addresses no sender on the internet can reach.  The documentation ranges
# are deliberately absent: they are what test zones use.
_UNREACHABLE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8"))

_POLICY_STRENGTH = {"none": 0, "quarantine": 1, "reject": 2}


@dataclass
class Report:
    domain: str
    findings: list = field(default_factory=list)
    errors: list = field(default_factory=list)    # lookups that failed

    def problems(self) -> list:
        """(area, level, subject) of every finding that is not ok."""
        return [(f.area, f.level, f.subject) for f in self.findings if f.level != OK]


@dataclass
class _SpfWalk:
    lookups: int = 0
    per_domain: dict = field(default_factory=dict)
    voids: list = field(default_factory=list)
    records: int = 0
    syntax_errors: int = 0


class DomainAudit:
    """One audit of one domain.  Answers are remembered for this audit only,
    so that every finding is about the same view of DNS."""

    def __init__(self, resolver: Resolver, domain: str, selectors=(), keys=(),
                 arc_selectors=(), arc_keys=()):
        self.resolver = resolver
        self.domain = normalize(domain)
        # selector -> local key path; selectors without a local key -> None
        self.selectors = _selector_map(selectors, keys)
        self.arc_selectors = _selector_map(arc_selectors, arc_keys)
        self._answers: dict = {}
        self.report = Report(self.domain)

    # -- plumbing -------------------------------------------------------------

    def add(self, area, level, subject, message, value="") -> None:
        self.report.findings.append(Finding(area, level, subject, message, value))

    def prefetch(self, queries) -> None:
        todo = [(normalize(n), t) for n, t in queries if (normalize(n), t) not in self._answers]
        todo = list(dict.fromkeys(todo))
        for (name, rdtype), answer in zip(todo, self.resolver.query_many(todo)):
            self._answers[(name, rdtype)] = answer

    def q(self, name: str, rdtype: str) -> Answer:
        key = (normalize(name), rdtype)
        answer = self._answers.get(key)
        if answer is None:
            answer = self.resolver.query(name, rdtype)
            self._answers[key] = answer
        return answer

    def failed(self, area: str, subject: str, answer: Answer) -> None:
        """A lookup that gave no answer: a finding, and the audit is incomplete."""
        detail = f"{answer.name}/{answer.rdtype}: {answer.status.value}"
        if answer.detail:
            detail += f" ({answer.detail})"
        self.add(area, FAIL, subject, f"lookup failed, cannot judge: {detail}")
        if detail not in self.report.errors:
            self.report.errors.append(detail)

    def addresses(self, name: str):
        """(addresses, failed Answer or None); NXDOMAIN and NODATA give none."""
        found, failure = [], None
        for rdtype in ("A", "AAAA"):
            answer = self.q(name, rdtype)
            if answer.ok:
                # DNS gives records in any order: sort, so that runs compare
                found.extend(sorted(answer.records, key=_ip_sort_key))
            elif answer.temporary and failure is None:
                failure = answer
        return found, failure

    # -- the audit ------------------------------------------------------------

    def run(self) -> Report:
        d = self.domain
        self.prefetch([(d, "MX"), (d, "TXT"), (f"_dmarc.{d}", "TXT"),
                       (f"_mta-sts.{d}", "TXT"), (f"_smtp._tls.{d}", "TXT")]
                      + [(f"{s}._domainkey.{d}", "TXT")
                         for s in dict.fromkeys([*self.selectors, *self.arc_selectors])])
        if not self.audit_mx():
            return self.report
        self.audit_spf()
        self.audit_dkim()
        self.audit_arc()
        self.audit_dmarc()
        self.audit_mta_sts()
        self.audit_tls_rpt()
        return self.report

    # -- MX and reverse DNS -----------------------------------------------------

    def audit_mx(self) -> bool:
        """False when the domain does not exist: nothing else is worth asking."""
        d = self.domain
        answer = self.q(d, "MX")
        if answer.temporary:
            self.failed("mx", d, answer)
            return True
        if answer.status is Status.NXDOMAIN:
            self.add("mx", FAIL, d, "the domain does not exist (NXDOMAIN)")
            return False
        if not answer.ok or not answer.records:
            found, failure = self.addresses(d)
            if failure is not None:
                self.failed("mx", d, failure)
            elif found:
                self.add("mx", WARN, d, "no MX record: mail goes to the domain's own address "
                         "(implicit MX, RFC 5321 §5.1); publish MX records", ", ".join(found))
            else:
                self.add("mx", FAIL, d, "no MX record and no address: the domain cannot "
                         "receive mail (publish MX records, or a null MX if that is meant)")
            return True
        records = sorted({(pref, normalize(host)) for pref, host in answer.records})
        null = [(pref, host) for pref, host in records if host in ("", "@")]
        if null:
            if len(records) > 1:
                self.add("mx", FAIL, d, "null MX (RFC 7505) next to other MX records: "
                         "a null MX must be the only one", _mx_text(records))
            elif null[0][0] != 0:
                self.add("mx", WARN, d, "null MX (RFC 7505) with preference "
                         f"{null[0][0]}: it should be 0", _mx_text(records))
            else:
                self.add("mx", OK, d, "null MX (RFC 7505): the domain accepts no mail",
                         _mx_text(records))
            return True

        hosts = list(dict.fromkeys(host for _, host in records))
        if len(hosts) >= 2:
            self.add("mx", OK, d, f"{len(hosts)} MX hosts: senders fail over between them",
                     _mx_text(records))
        else:
            self.add("mx", WARN, d, "one MX host: no failover when it is down "
                     "(senders queue and retry); publish a second MX", _mx_text(records))
        if len(hosts) >= 2:
            self.add("mx", OK, "preferences", _explain_preferences(records))

        queries = []
        for host in hosts:
            queries += [(host, "CNAME"), (host, "A"), (host, "AAAA")]
        self.prefetch(queries)
        host_addresses = {}
        for host in hosts:
            addrs = self.audit_mx_host(host)
            if addrs:
                host_addresses[host] = addrs
        if len(host_addresses) >= 2 and len({frozenset(a) for a in host_addresses.values()}) == 1:
            self.add("mx", WARN, d, "every MX host has the same address: the second "
                     "MX is no failover", ", ".join(next(iter(host_addresses.values()))))
        self.audit_rdns(host_addresses)
        return True

    def audit_mx_host(self, host: str) -> list:
        literal = host.strip("[]")
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            pass
        else:
            self.add("mx", FAIL, host, "MX target is an IP address; RFC 5321 §5.1 "
                     "requires a host name (most senders treat it as a name that does not exist)")
            return []
        cname = self.q(host, "CNAME")
        if cname.ok and cname.records:
            self.add("mx", FAIL, host, f"MX target is an alias (CNAME to {cname.records[0]}); "
                     "RFC 2181 §10.3: point MX at the canonical name", cname.records[0])
            return []
        if cname.temporary:
            self.failed("mx", host, cname)
            return []
        found, failure = self.addresses(host)
        if failure is not None:
            self.failed("mx", host, failure)
            return []
        if not found:
            self.add("mx", FAIL, host, "MX host has no A or AAAA record: mail cannot be "
                     "delivered to it")
            return []
        bad = [a for a in found if any(ipaddress.ip_address(a) in n for n in _UNREACHABLE
                                       if n.version == ipaddress.ip_address(a).version)]
        if bad:
            self.add("mx", FAIL, host, "MX host resolves to an address the internet cannot "
                     "reach (private, loopback, link-local or reserved)", ", ".join(found))
            return []
        self.add("mx", OK, host, "resolves", ", ".join(found))
        return found

    def audit_rdns(self, host_addresses: dict) -> None:
        addresses = list(dict.fromkeys(a for addrs in host_addresses.values() for a in addrs))
        self.prefetch([(ptr_name(a), "PTR") for a in addresses])
        for address in addresses:
            ip = ipaddress.ip_address(address)
            answer = self.q(ptr_name(address), "PTR")
            if answer.temporary:
                self.failed("rdns", address, answer)
                continue
            if not answer.ok or not answer.records:
                self.add("rdns", FAIL, address, "no PTR record: many receivers distrust or "
                         "refuse mail from an address without reverse DNS")
                continue
            names = sorted({normalize(n) for n in answer.records})
            rdtype = "A" if ip.version == 4 else "AAAA"
            self.prefetch([(n, rdtype) for n in names])
            confirmed, failure = None, None
            for name in names:
                forward = self.q(name, rdtype)
                if forward.ok and any(_same_ip(ip, r) for r in forward.records):
                    confirmed = name
                    break
                if forward.temporary and failure is None:
                    failure = forward
            if confirmed:
                self.add("rdns", OK, address, "PTR resolves back to the address (FCrDNS)",
                         confirmed)
            elif failure is not None:
                self.failed("rdns", address, failure)
            else:
                self.add("rdns", FAIL, address, f"PTR {', '.join(names)} does not resolve "
                         "back to the address (no forward-confirmed reverse DNS)",
                         ", ".join(names))

    # -- SPF --------------------------------------------------------------------

    def spf_record(self, domain: str):
        """("one", record) | ("none", None) | ("void", None) | ("many", [...]) |
        ("error", Answer)"""
        answer = self.q(domain, "TXT")
        if answer.temporary:
            return "error", answer
        if not answer.ok:
            return "void", None
        found = sorted(r for r in answer.records if is_spf(r))
        if not found:
            return "none", None
        if len(found) > 1:
            return "many", found
        return "one", found[0]

    def audit_spf(self) -> None:
        d = self.domain
        status, record = self.spf_record(d)
        if status == "error":
            self.failed("spf", d, record)
            return
        if status in ("none", "void"):
            self.add("spf", FAIL, d, "no SPF record: receivers cannot tell your hosts from "
                     "forgers; publish 'v=spf1 ... -all'")
            return
        if status == "many":
            self.add("spf", FAIL, d, f"{len(record)} SPF records: receivers return permerror "
                     "(RFC 7208 §4.5); merge them into one", " | ".join(record))
            return
        self.add("spf", OK, d, "one SPF record", record)
        walk = _SpfWalk()
        result = self.spf_walk(d, record, walk, (d,))
        if walk.syntax_errors == 0:
            self.add("spf", OK, "syntax", "valid"
                     + (f" ({walk.records} records through include/redirect)"
                        if walk.records > 1 else ""))
        breakdown = ", ".join(f"{n} {c}" for n, c in walk.per_domain.items() if c)
        if walk.lookups > SPF_LOOKUP_LIMIT:
            self.add("spf", FAIL, "dns lookups", f"{walk.lookups} DNS-querying terms through "
                     f"includes: over {SPF_LOOKUP_LIMIT} receivers return permerror "
                     "(RFC 7208 §4.6.4)", breakdown)
        else:
            self.add("spf", OK, "dns lookups", f"{walk.lookups} of at most {SPF_LOOKUP_LIMIT} "
                     "DNS-querying terms (include, a, mx, ptr, exists, redirect)", breakdown)
        if len(walk.voids) > SPF_VOID_LIMIT:
            self.add("spf", FAIL, "void lookups", f"{len(walk.voids)} lookups find no record: "
                     f"over {SPF_VOID_LIMIT} receivers return permerror (RFC 7208 §4.6.4)",
                     ", ".join(walk.voids))
        else:
            self.add("spf", OK, "void lookups", f"{len(walk.voids)} of at most "
                     f"{SPF_VOID_LIMIT} lookups that find no record", ", ".join(walk.voids))
        if walk.syntax_errors:
            return
        if result == "-":
            self.add("spf", OK, "all", "-all: mail from hosts not listed fails SPF")
        elif result == "~":
            self.add("spf", OK, "all", "~all: mail from hosts not listed soft-fails SPF "
                     "(DMARC turns that into its policy)")
        elif result == "?":
            self.add("spf", WARN, "all", "?all: hosts not listed are neutral, so SPF "
                     "protects nothing; end with -all or ~all")
        elif result == "+":
            self.add("spf", FAIL, "all", "+all: every host on the internet passes SPF "
                     "for this domain; end with -all or ~all")
        elif result is None:
            self.add("spf", WARN, "all", "no 'all' and no redirect: hosts not listed are "
                     "neutral; end with -all or ~all")

    def spf_walk(self, domain: str, record: str, walk: _SpfWalk, stack: tuple):
        """Count lookups in ``record`` and what it includes; return the
        qualifier of the 'all' that ends it (through redirect), None if none,
        or "" when that could not be known."""
        walk.records += 1
        try:
            terms = parse_spf(record)
        except RecordError as exc:
            walk.syntax_errors += 1
            self.add("spf", FAIL, domain, f"syntax error: {exc} (receivers return permerror)",
                     record)
            return ""
        mechanisms = [t for t in terms if not t.modifier]
        all_index = next((i for i, t in enumerate(mechanisms) if t.name == "all"), None)
        redirect = next((t for t in terms if t.modifier and t.name == "redirect"), None)
        if all_index is not None and all_index < len(mechanisms) - 1:
            self.add("spf", WARN, domain, "terms after 'all' are never evaluated",
                     " ".join(t.text for t in mechanisms[all_index + 1:]))
        if all_index is not None and redirect is not None:
            self.add("spf", WARN, domain, "redirect= is ignored: the record has 'all'",
                     redirect.text)
        if any(t.name == "ptr" for t in mechanisms):
            self.add("spf", WARN, domain, "'ptr' mechanism: slow and unreliable, RFC 7208 "
                     "§5.5 says not to use it; list the addresses instead",
                     " ".join(t.text for t in mechanisms if t.name == "ptr"))

        for term in mechanisms:
            if term.name in SPF_LOOKUP_MECHANISMS:
                walk.lookups += 1
                walk.per_domain[domain] = walk.per_domain.get(domain, 0) + 1
            if term.macros:
                if term.name == "include":
                    self.add("spf", WARN, domain, "include with macros is not followed: "
                             "its lookups are not counted", term.text)
                continue
            if term.name == "include":
                result = self.spf_follow(domain, term, walk, stack)
                if result == "+":
                    self.add("spf", FAIL, domain, f"{term.text}: that record ends in +all, "
                             "so the include matches every host", term.target)
            elif term.name == "a":
                target = term.target or domain
                found, failure = self.addresses(target)
                if failure is not None:
                    self.failed("spf", domain, failure)
                elif not found:
                    walk.voids.append(f"{term.text} ({target})")
            elif term.name in ("mx", "exists"):
                target = term.target or domain
                answer = self.q(target, "MX" if term.name == "mx" else "A")
                if answer.temporary:
                    self.failed("spf", domain, answer)
                elif not answer.ok or not answer.records:
                    walk.voids.append(f"{term.text} ({target})")
                elif term.name == "mx" and len(answer.records) > SPF_MX_NAME_LIMIT:
                    self.add("spf", FAIL, domain, f"{term.text}: {len(answer.records)} MX "
                             f"names, over {SPF_MX_NAME_LIMIT} receivers return permerror "
                             "(RFC 7208 §4.6.4)", target)
        if all_index is not None:
            return mechanisms[all_index].qualifier
        if redirect is None:
            return None
        walk.lookups += 1
        walk.per_domain[domain] = walk.per_domain.get(domain, 0) + 1
        if redirect.macros:
            self.add("spf", WARN, domain, "redirect with macros is not followed: its "
                     "lookups are not counted", redirect.text)
            return ""
        return self.spf_follow(domain, redirect, walk, stack)

    def spf_follow(self, domain: str, term, walk: _SpfWalk, stack: tuple):
        target = normalize(term.target)
        if target in stack:
            self.add("spf", FAIL, domain, f"{term.text}: a loop back to {target} "
                     "(receivers return permerror)", " > ".join(stack + (target,)))
            return ""
        if walk.records >= _SPF_RECORD_BOUND:
            return ""
        status, record = self.spf_record(target)
        if status == "error":
            self.failed("spf", domain, record)
            return ""
        if status == "void":
            walk.voids.append(f"{term.text}")
        if status in ("void", "none"):
            self.add("spf", FAIL, domain, f"{term.text}: {target} publishes no SPF record "
                     "(receivers return permerror, RFC 7208 §5.2)", target)
            return ""
        if status == "many":
            self.add("spf", FAIL, domain, f"{term.text}: {target} publishes {len(record)} SPF "
                     "records (receivers return permerror)", target)
            return ""
        return self.spf_walk(target, record, walk, stack + (target,))

    # -- DKIM -------------------------------------------------------------------

    def audit_dkim(self) -> None:
        d = self.domain
        if not self.selectors:
            self.add("dkim", WARN, d, "no selector given (--selector, --key or [dkim_sign] "
                     "keys): DNS cannot list selectors, so no key was checked")
            return
        types = []
        for selector, key_path in self.selectors.items():
            key_type = self.audit_key("dkim", selector, key_path)
            if key_type:
                types.append(key_type)
        if types and all(t == "ed25519" for t in types):
            self.add("dkim", WARN, d, "only Ed25519 keys: receivers without RFC 8463 see "
                     "no valid signature; sign with an RSA key as well")

    def audit_arc(self) -> None:
        """ARC keys are DKIM key records (RFC 8617 §4.1.3), judged by the
        same code; only the algorithms differ."""
        for selector, key_path in self.arc_selectors.items():
            self.audit_key("arc", selector, key_path)

    def audit_key(self, area: str, selector: str, key_path) -> str:
        """Findings for one selector's key record, in ``area`` ("dkim" or
        "arc"); the key type when a usable key is published."""
        name = f"{selector}._domainkey.{self.domain}"
        made = "ARC seals" if area == "arc" else "signatures"
        answer = self.q(name, "TXT")
        if answer.temporary:
            self.failed(area, name, answer)
            return ""
        if not answer.ok or not answer.records:
            self.add(area, FAIL, name, f"no key published: {made} with this selector "
                     "cannot be verified")
            return ""
        if len(answer.records) > 1:
            self.add(area, WARN, name, f"{len(answer.records)} TXT records: verifiers may "
                     "pick any (RFC 6376 §3.6.2.2); publish one")
        text = sorted(answer.records)[0]
        try:
            key = parse_dkim_key(text)
        except RecordError as exc:
            self.add(area, FAIL, name, f"key record does not parse: {exc}")
            return ""
        if not key.public:
            self.add(area, FAIL, name, f"key revoked (empty p=): {made} with this "
                     "selector fail")
            return ""
        if key.key_type == "rsa":
            try:
                from dkim.crypto import UnparsableKeyError, parse_public_key
                public = parse_public_key(key.public)
            except (UnparsableKeyError, IndexError, TypeError, ValueError):
                self.add(area, FAIL, name, "p= is not an RSA public key")
                return ""
            bits = public["modulus"].bit_length()
            if bits < _RSA_MIN_BITS:
                self.add(area, FAIL, name, f"RSA key of {bits} bits: verifiers must "
                         f"reject keys under {_RSA_MIN_BITS} bits (RFC 8301 §3.2)", f"{bits} bits")
            elif bits < _RSA_GOOD_BITS:
                self.add(area, WARN, name, f"RSA key of {bits} bits: weak; use "
                         f"{_RSA_GOOD_BITS} bits (RFC 8301 §3.2)", f"{bits} bits")
            elif bits > _RSA_MAX_VERIFIED:
                self.add(area, WARN, name, f"RSA key of {bits} bits: verifiers need not "
                         f"handle more than {_RSA_MAX_VERIFIED} (RFC 8301 §3.2)", f"{bits} bits")
            else:
                self.add(area, OK, name, f"RSA key of {bits} bits", f"{bits} bits")
        elif key.key_type == "ed25519" and area == "arc":
            self.add(area, FAIL, name, "Ed25519 key: RFC 8617 defines rsa-sha256 alone for "
                     "ARC, and verifiers refuse a seal made with any other algorithm; "
                     "publish an RSA key for sealing", "k=ed25519")
            return ""
        elif key.key_type == "ed25519":
            if len(key.public) != 32:
                self.add(area, FAIL, name, f"Ed25519 key of {len(key.public)} bytes, "
                         "not 32 (RFC 8463)")
                return ""
            public = key.public
            self.add(area, OK, name, "Ed25519 key (RFC 8463)")
        else:
            self.add(area, FAIL, name, f"unknown key type k={key.key_type}: verifiers "
                     "ignore the key")
            return ""
        if key.hashes and "sha256" not in key.hashes:
            self.add(area, FAIL, name, "h= excludes sha256: only sha1 is left, which "
                     "verifiers refuse (RFC 8301 §3.1)", key.tags.get("h", ""))
        if key.services and not ({"email", "*"} & set(key.services)):
            self.add(area, FAIL, name, "s= excludes email: the key may not verify mail",
                     key.tags.get("s", ""))
        if "y" in key.flags:
            treat = ("may ignore its ARC seals" if area == "arc"
                     else "may treat its signatures as unsigned")
            self.add(area, WARN, name, f"testing mode (t=y): verifiers {treat}",
                     key.tags.get("t", ""))
        if key_path:
            self.compare_local_key(area, name, key.key_type, public, key_path)
        return key.key_type

    def compare_local_key(self, area: str, name: str, key_type: str, published,
                          path: str) -> None:
        """The same key loader as signing, so that the audit refuses what
        ``run`` would refuse (an unreadable, group-readable or odd key)."""
        from ..signing import KeyProblem, load_key
        made = "ARC seals" if area == "arc" else "signatures"
        try:
            local = load_key(path)
        except KeyProblem as exc:
            self.add(area, FAIL, name, f"local key {exc}")
            return
        if local.kind != key_type:
            self.add(area, FAIL, name, f"local key {path} is {local.kind}, the published "
                     f"key is {key_type}: {made} will not verify")
            return
        public = local.private.public_key()
        if key_type == "rsa":
            numbers = public.public_numbers()
            same = (numbers.n == published["modulus"]
                    and numbers.e == published["publicExponent"])
        else:
            from cryptography.hazmat.primitives import serialization
            same = public.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw) == published
        if same:
            self.add(area, OK, name, f"published key matches the local key {path}")
        else:
            self.add(area, FAIL, name, f"published key does not match the local key {path}: "
                     f"{made} will not verify")

    # -- DMARC ------------------------------------------------------------------

    def dmarc_records(self, domain: str):
        answer = self.q(f"_dmarc.{domain}", "TXT")
        if answer.temporary:
            return answer, []
        # RFC 9989 §4.10 step 2: records that do not start with v=DMARC1 are discarded
        return answer, sorted(r for r in answer.records
                              if is_dmarc_record(r)) if answer.ok else []

    def dmarc_walk(self, domain: str):
        """RFC 9989's tree walk from ``domain`` on this audit's answers, all
        its names asked at once; None (and a finding) when a lookup it
        reads fails."""
        self.prefetch([(f"_dmarc.{n}", "TXT") for n in walk_names(domain)])

        def lookup(qname):
            answer = self.q(qname, "TXT")
            if answer.temporary:
                return None
            return answer.records if answer.ok else ()
        walk = tree_walk(domain, lookup)
        if walk.failed:
            name = f"_dmarc.{walk.failed}"
            self.failed("dmarc", name, self.q(name, "TXT"))
            return None
        return walk

    def audit_dmarc(self) -> None:
        d = self.domain
        answer, own = self.dmarc_records(d)
        if answer.temporary:
            self.failed("dmarc", f"_dmarc.{d}", answer)
            return
        if len(own) > 1:
            self.add("dmarc", FAIL, f"_dmarc.{d}", f"{len(own)} DMARC records: receivers "
                     "ignore them all (RFC 9989 §4.10) and look further up the tree",
                     " | ".join(own))
            return
        walk = self.dmarc_walk(d)
        if walk is None:
            return
        found = dict(walk.found)
        for name in walk.asked:
            text = found.get(name)
            if text is None:
                what = "no single DMARC record"
            else:
                psd = dmarc_tags(text).get("psd", "u").lower()
                what = f"a record, psd={psd if psd in ('y', 'n') else 'u'}"
                if name == walk.stop:
                    what += ": the walk stops here"
            self.add("dmarc", OK, "tree walk", f"_dmarc.{name}: {what}", name)
        self.add("dmarc", OK, "organizational domain",
                 f"{walk.organizational}, by the tree walk (RFC 9989 §4.10.2): SPF and DKIM "
                 "domains at or under it align with relaxed alignment", walk.organizational)
        policy_domain = walk.policy_domain or d
        inherited = walk.source in ("organizational", "psd")
        record_name = f"_dmarc.{policy_domain}"
        if not walk.policy_record:
            self.add("dmarc", FAIL, record_name, "no DMARC record: receivers apply no policy "
                     "to mail forged in your name, and you get no reports")
            return
        text = walk.policy_record
        try:
            record = parse_dmarc(text)
        except RecordError as exc:
            self.add("dmarc", FAIL, record_name, f"syntax error: {exc}", text)
            return
        if walk.source == "organizational":
            self.add("dmarc", OK, record_name, f"no record at _dmarc.{d}: the organizational "
                     "domain's record applies (found by the tree walk, RFC 9989 §4.10.1)",
                     text)
        elif walk.source == "psd":
            self.add("dmarc", OK, record_name, f"no record at _dmarc.{d} nor at its "
                     f"organizational domain {walk.organizational}: the public suffix "
                     "domain's record (psd=y) applies (RFC 9989 §4.10.1)", text)
        else:
            self.add("dmarc", OK, record_name, "one DMARC record, syntax valid", text)
        if record.unknown:
            self.add("dmarc", WARN, record_name, "unknown tags, ignored by receivers",
                     ", ".join(record.unknown))
        for tag in record.historic:
            self.add("dmarc", WARN, tag, f"{tag}={record.tags[tag]}: removed by RFC 9989 "
                     "(historic), receivers that follow it ignore it" + (
                         f"; pct={record.pct} does not sample any more: "
                         + ("mailwarden reads pct=0 without t= as t=y; say t=y"
                            if record.pct == 0 else "the policy applies to all failing mail")
                         if tag == "pct" else ""), record.tags[tag])
        if record.psd == "y":
            self.add("dmarc", OK, "psd", "psd=y: a public suffix domain: its record applies "
                     "to names under it whose organization publishes none", "y")
        elif record.psd == "n":
            self.add("dmarc", OK, "psd", f"psd=n: {policy_domain} is the organizational "
                     "domain of itself and its subdomains: the tree walk stops here", "n")
        if record.p is None:
            self.add("dmarc", FAIL, "p", "no p= tag: receivers treat the record as p=none "
                     "if it has a valid rua=, else apply no DMARC (RFC 9989 §4.10.1)")
        policy = record.p
        if inherited:
            policy = record.sp or record.p
        subject = "sp" if inherited and record.sp else "p"
        if policy == "none":
            self.add("dmarc", WARN, subject, "p=none: monitoring only, mail that fails DMARC "
                     "is delivered as usual; move to quarantine or reject", "none")
        elif policy == "quarantine":
            self.add("dmarc", OK, subject, "quarantine: mail that fails DMARC goes to spam",
                     policy)
        elif policy == "reject":
            self.add("dmarc", OK, subject, "reject: mail that fails DMARC is refused", policy)
        if record.t == "y" and policy and policy != "none":
            self.add("dmarc", WARN, "t", f"t=y: testing: receivers apply the next weaker "
                     f"policy than {policy}", "y")
        if not inherited:
            if record.sp is None:
                if record.p:
                    self.add("dmarc", OK, "sp", f"subdomains inherit p={record.p}")
            elif record.p and _POLICY_STRENGTH[record.sp] < _POLICY_STRENGTH[record.p]:
                self.add("dmarc", WARN, "sp", f"sp={record.sp} is weaker than p={record.p}: "
                         "forged subdomains get through", record.sp)
            else:
                self.add("dmarc", OK, "sp", f"subdomain policy {record.sp}", record.sp)
        if record.np is not None:
            self.add("dmarc", OK, "np", f"np={record.np}: for names under "
                     f"{policy_domain} that do not exist (NXDOMAIN)", record.np)
        modes = {"r": "relaxed", "s": "strict"}
        self.add("dmarc", OK, "adkim/aspf", f"{modes[record.adkim]} DKIM, "
                 f"{modes[record.aspf]} SPF alignment",
                 f"adkim={record.adkim} aspf={record.aspf}")
        if record.rua:
            self.add("dmarc", OK, "rua", "aggregate reports requested",
                     ", ".join(u.uri for u in record.rua))
        elif policy == "none":
            self.add("dmarc", FAIL, "rua", "p=none and no rua=: the record neither protects "
                     "nor reports, it is as good as none; add rua=mailto:...")
        else:
            self.add("dmarc", WARN, "rua", "no rua=: you get no aggregate reports, so you "
                     "cannot see who sends mail as you")
        if record.ruf:
            self.add("dmarc", OK, "ruf", "failure reports requested",
                     ", ".join(u.uri for u in record.ruf))
        else:
            self.add("dmarc", OK, "ruf", "no failure reports requested (few receivers send "
                     "them)")
        for uri in record.rua + record.ruf:
            if uri.scheme != "mailto":
                self.add("dmarc", WARN, uri.uri, f"{uri.scheme}: report URI: receivers send "
                         "reports by mail only")
        self.audit_report_authorisation(policy_domain, record)
        self.audit_report_delivery("dmarc", [u.address for u in record.rua + record.ruf
                                             if u.scheme == "mailto"])

    def audit_report_delivery(self, area: str, addresses) -> None:
        """A report address whose domain has neither MX nor address takes no
        mail: the reports asked for are lost."""
        hosts = list(dict.fromkeys(normalize(a.rsplit("@", 1)[1].split("?")[0])
                                   for a in addresses))
        self.prefetch([(h, "MX") for h in hosts])
        for host in hosts:
            answer = self.q(host, "MX")
            if answer.temporary:
                self.failed(area, host, answer)
                continue
            if answer.ok and answer.records:
                continue
            found, failure = self.addresses(host)
            if failure is not None:
                self.failed(area, host, failure)
            elif not found:
                self.add(area, WARN, host, f"report address domain {host} has no MX and no "
                         "address: reports sent there are lost")

    def audit_report_authorisation(self, policy_domain: str, record) -> None:
        """RFC 9990 §3: a report address whose organizational domain is not
        the policy domain's must be authorised by its host.  Organizational
        domains are RFC 9989's, by the tree walk, as receivers find them."""
        own = self.dmarc_walk(policy_domain)
        if own is None:
            return
        hosts = []
        for uri in record.rua + record.ruf:
            if uri.scheme != "mailto":
                continue
            host = normalize(uri.address.rsplit("@", 1)[1])
            if host in hosts or host == own.organizational:
                continue
            walk = self.dmarc_walk(host) if is_domain(host, underscore=True) else None
            if walk is None or walk.organizational != own.organizational:
                hosts.append(host)
        names = [f"{policy_domain}._report._dmarc.{host}" for host in hosts]
        self.prefetch([(n, "TXT") for n in names])
        for name, host in zip(names, hosts):
            answer = self.q(name, "TXT")
            if answer.temporary:
                self.failed("dmarc", name, answer)
            elif answer.ok and any(is_dmarc_record(r) for r in answer.records):
                self.add("dmarc", OK, name, f"{host} accepts reports for {policy_domain} "
                         "(RFC 9990 §3)")
            else:
                self.add("dmarc", FAIL, name, f"report address at {host} is not authorised: "
                         f"{host} must publish 'v=DMARC1' there, or receivers send it no "
                         "reports (RFC 9990 §3)")

    # -- MTA-STS and TLS-RPT ----------------------------------------------------

    def audit_mta_sts(self) -> None:
        d = self.domain
        name = f"_mta-sts.{d}"
        answer = self.q(name, "TXT")
        if answer.temporary:
            self.failed("mta-sts", name, answer)
            return
        found = sorted(r for r in answer.records if r.startswith("v=STSv1")) if answer.ok else []
        if not found:
            self.add("mta-sts", WARN, name, "no MTA-STS record: sending servers cannot "
                     "insist on TLS to you (RFC 8461)")
            return
        if len(found) > 1:
            self.add("mta-sts", FAIL, name, f"{len(found)} MTA-STS records: senders treat "
                     "that as no policy (RFC 8461 §3.1)", " | ".join(found))
            return
        try:
            fields = parse_sts(found[0])
        except RecordError as exc:
            self.add("mta-sts", FAIL, name, f"syntax error: {exc}", found[0])
            return
        self.add("mta-sts", OK, name, "MTA-STS record", f"id={fields['id']}")
        host = f"mta-sts.{d}"
        found_addresses, failure = self.addresses(host)
        if failure is not None:
            self.failed("mta-sts", host, failure)
        elif not found_addresses:
            self.add("mta-sts", FAIL, host, "the policy host does not resolve: senders "
                     "cannot fetch the policy, so it has no effect")
        else:
            self.add("mta-sts", OK, host, f"resolves; https://{host}/.well-known/mta-sts.txt "
                     "was not fetched (this audit asks DNS only)", ", ".join(found_addresses))

    def audit_tls_rpt(self) -> None:
        name = f"_smtp._tls.{self.domain}"
        answer = self.q(name, "TXT")
        if answer.temporary:
            self.failed("tls-rpt", name, answer)
            return
        found = sorted(r for r in answer.records
                       if r.startswith("v=TLSRPTv1")) if answer.ok else []
        if not found:
            self.add("tls-rpt", WARN, name, "no TLS-RPT record: you get no reports of "
                     "failed TLS to your MX hosts (RFC 8460)")
            return
        if len(found) > 1:
            self.add("tls-rpt", FAIL, name, f"{len(found)} TLS-RPT records: senders treat "
                     "that as none (RFC 8460 §3)", " | ".join(found))
            return
        try:
            fields = parse_tlsrpt(found[0])
        except RecordError as exc:
            self.add("tls-rpt", FAIL, name, f"syntax error: {exc}", found[0])
            return
        self.add("tls-rpt", OK, name, "TLS reports requested", ", ".join(fields["rua"]))
        self.audit_report_delivery("tls-rpt", [u.split(":", 1)[1] for u in fields["rua"]
                                               if u.lower().startswith("mailto:")])


def _mx_text(records) -> str:
    return ", ".join(f"{pref} {host or '.'}" if host != "@" else f"{pref} ."
                     for pref, host in records)


def _explain_preferences(records) -> str:
    levels: dict = {}
    for pref, host in records:
        levels.setdefault(pref, []).append(host)
    parts = []
    for i, (pref, hosts) in enumerate(sorted(levels.items())):
        role = "primary" if i == 0 else "backup"
        shared = ", load shared at random" if len(hosts) > 1 else ""
        parts.append(f"{pref}: {', '.join(hosts)} ({role}{shared})")
    text = "; ".join(parts)
    if len(levels) > 1:
        text += "; a backup is tried only when every lower preference fails"
    return text


def _ip_sort_key(text):
    try:
        return (0, int(ipaddress.ip_address(text)), text)
    except ValueError:
        return (1, 0, text)


def _same_ip(ip, text) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def _selector_map(selectors, keys) -> dict:
    """selector -> local key path (None for a selector without one)."""
    found: dict = {}
    for selector in selectors:
        found.setdefault(normalize(selector), None)
    for selector, path in keys:
        found[normalize(selector)] = path
    return found


def configured_keys(config, domain: str, check: str = "dkim_sign") -> list:
    """(selector, key path) of the local keys for ``domain`` of ``check``:
    ``dkim_sign`` (signing keys) or ``arc`` (sealing keys).

    Read from that check's ``keys`` option, whose items are
    ``DOMAIN:SELECTOR:PATH`` strings or objects/tuples with domain, selector
    and path; nothing when no such check is configured.
    """
    checks = getattr(config, "checks", {}) or {}
    options = checks.get(check)
    keys = getattr(options, "keys", None) if options is not None else None
    if not keys:
        return []
    if isinstance(keys, dict):
        keys = [(k if isinstance(k, tuple) else (k,)) + (v if isinstance(v, tuple) else (v,))
                for k, v in keys.items()]
    found = []
    for item in keys:
        if isinstance(item, str):
            parts = item.split(":", 2)
        elif isinstance(item, tuple):
            parts = list(item)
        else:
            parts = [getattr(item, "domain", ""), getattr(item, "selector", ""),
                     getattr(item, "path", getattr(item, "key_path", ""))]
        if len(parts) != 3:
            continue
        key_domain, selector, path = (str(p) for p in parts)
        if normalize(key_domain) == normalize(domain) and selector:
            found.append((selector, path))
    return found


def audit_domain(resolver: Resolver, domain: str, selectors=(), keys=(),
                 arc_selectors=(), arc_keys=()) -> Report:
    return DomainAudit(resolver, domain, selectors, keys, arc_selectors, arc_keys).run()


# -- command line ------------------------------------------------------------------

def _domain_arg(text: str) -> str:
    name = text.strip().rstrip(".")
    try:
        name = (name if name.isascii() else idna_to_ascii(name)).lower()
    except AddressProblem:
        raise argparse.ArgumentTypeError(f"not a domain name: {text!r}") from None
    if not is_domain(name, underscore=True, multi_label=True):
        raise argparse.ArgumentTypeError(f"not a domain name: {text!r}")
    return name


def _key_arg(text: str):
    selector, sep, path = text.partition(":")
    if not sep or not selector or not path:
        raise argparse.ArgumentTypeError(f"expected SELECTOR:PATH, got {text!r}")
    return selector, path


def cmd_audit(args) -> int:
    from ..config import ConfigError, DnsOptions, load
    from ..dns import ZoneBackend

    keys = list(args.key or [])
    arc_keys = list(args.arc_key or [])
    if args.config:
        try:
            config = load(args.config)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        dns_options = config.dns
        keys += [k for k in configured_keys(config, args.domain)
                 if k[0] not in {s for s, _ in keys}]
        arc_keys += [k for k in configured_keys(config, args.domain, "arc")
                     if k[0] not in {s for s, _ in arc_keys}]
    else:
        dns_options = DnsOptions()
    backend = None
    if args.zone:
        text = []
        for path in args.zone:
            try:
                with open(path, encoding="utf-8") as fh:
                    text.append(fh.read())
            except OSError as exc:
                print(f"mailwarden: cannot read {path}: {exc.strerror}", file=sys.stderr)
                return 2
        backend = ZoneBackend("\n".join(text))
    resolver = Resolver(dns_options, backend=backend)
    try:
        report = audit_domain(resolver, args.domain, args.selector or (), keys,
                              args.arc_selector or (), arc_keys)
    finally:
        resolver.close()
    return render(f"mailwarden audit {report.domain}", report.findings, args.json,
                  sys.stdout, errors=report.errors)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audit", help="audit a domain's mail DNS: MX, reverse DNS, SPF, DKIM, ARC keys, "
                      "DMARC, MTA-STS, TLS-RPT",
        description="Exit 0 when no finding fails, 1 when one does, 2 when lookups failed.")
    p.add_argument("domain", type=_domain_arg, help="the mail domain, e.g. example.org")
    p.add_argument("-c", "--config", default=None,
                   help="use [dns], the DKIM signing keys ([check.dkim_sign] keys) and the "
                        "ARC sealing keys ([check.arc] keys) of this configuration file "
                        "(default: the system resolver)")
    p.add_argument("--selector", action="append", metavar="S",
                   help="DKIM selector to check (repeat)")
    p.add_argument("--key", action="append", type=_key_arg, metavar="SELECTOR:PATH",
                   help="local DKIM private key of a selector: the published key must "
                        "match it (repeat)")
    p.add_argument("--arc-selector", action="append", metavar="S",
                   help="ARC sealing selector to check, as a DKIM one but RSA only "
                        "(RFC 8617) (repeat)")
    p.add_argument("--arc-key", action="append", type=_key_arg, metavar="SELECTOR:PATH",
                   help="local ARC sealing key of a selector: the published key must "
                        "match it (repeat)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--zone", action="append", metavar="FILE",
                   help="answer DNS from this zone file instead (repeat)")
    p.set_defaults(func=cmd_audit)
