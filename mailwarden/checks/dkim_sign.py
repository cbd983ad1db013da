"""dkim_sign: DKIM-sign what our own users send (RFC 6376, RFC 8463).

A message is signed when its client is authenticated or in ``[relay]
trusted_networks`` (never mail that arrived from outside) and the domain of
its single RFC5322.From address has a key: with each of that domain's keys,
so a domain with an RSA and an Ed25519 key gets both signatures (RFC 8463
§5 advises both while verifiers learn Ed25519).  With
``sign_parent_domains``, a From domain without a key of its own is signed
with the nearest parent domain's keys (``d=`` the parent, DMARC-aligned in
relaxed mode).

Keys are read at start-up, before privileges are dropped (see
:mod:`mailwarden.dkimsign`): a key file readable by group or others,
unreadable, or not an RSA/Ed25519 key is a start-up error naming the path.
``mailwarden genkey`` makes keys and prints the TXT record to publish.

The h= list holds ``sign_headers`` as often as each occurs, and the
``oversign_headers`` once more so that none can be added afterwards.

INI keys (``[check.dkim_sign]``):
  enabled              yes
  keys                 (empty)  DOMAIN:SELECTOR:PATH, several (comma or space separated)
  canonicalization     relaxed/relaxed   header/body: simple or relaxed
  sign_headers         RFC 6376 §5.4.1's list (see conf/mailwarden.ini)
  oversign_headers     From
  sign_parent_domains  no
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import dkim

from .. import dkimsign
from ..address import AddressProblem, authors, normalize_domain
from ..config import ValueProblem, opt, parse_bool, parse_list
from . import Check, CheckOptions


def parse_key_specs(text: str) -> tuple:
    specs = []
    for item in parse_list(text):
        parts = item.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueProblem(f"expected DOMAIN:SELECTOR:PATH, got {item!r}")
        domain_text, selector, path = parts
        try:
            domain = normalize_domain(domain_text)
        except AddressProblem as exc:
            raise ValueProblem(f"{item!r}: {exc}") from None
        if domain.startswith("["):
            raise ValueProblem(f"{item!r}: an address literal cannot sign")
        if not dkimsign.valid_selector(selector):
            raise ValueProblem(f"{item!r}: not a DKIM selector: {selector!r}")
        specs.append((domain, selector.lower(), path))
    return tuple(specs)


def _parse_canonicalization(text: str) -> tuple:
    try:
        return dkimsign.parse_canonicalization(text)
    except ValueError as exc:
        raise ValueProblem(str(exc)) from None


def _parse_header_names(text: str) -> tuple:
    names = parse_list(text)
    for name in names:
        if not all(33 <= ord(c) <= 126 and c != ":" for c in name):
            raise ValueProblem(f"not a header field name: {name!r}")
    return names


@dataclass(frozen=True)
class DkimSignOptions(CheckOptions):
    keys: tuple = opt((), parse_key_specs)
    canonicalization: tuple = opt(("relaxed", "relaxed"), _parse_canonicalization)
    sign_headers: tuple = opt(dkimsign.DEFAULT_SIGN_HEADERS, _parse_header_names)
    oversign_headers: tuple = opt(("From",), _parse_header_names)
    sign_parent_domains: bool = opt(False, parse_bool)
    # domain -> (SigningKey, ...), read by resolve(), never from the INI
    loaded: dict = field(default_factory=dict)

    def resolve(self, error):
        names = {h.lower() for h in self.sign_headers + self.oversign_headers}
        if "from" not in names:
            raise error("sign_headers", "From must be signed (RFC 6376 §5.4)")
        bad = names & {"received", "return-path", "dkim-signature", "bcc", "resent-bcc"}
        if bad:
            raise error("sign_headers", f"must not sign {', '.join(sorted(bad))} "
                        f"(RFC 6376 §5.4: changed in transit or private)")
        loaded: dict = {}
        seen = set()
        for domain, selector, path in self.keys:
            if (domain, selector) in seen:
                raise error("keys", f"{domain} selector {selector} given twice")
            seen.add((domain, selector))
            try:
                key = dkimsign.load_key(path, domain, selector)
            except dkimsign.KeyProblem as exc:
                raise error("keys", str(exc)) from None
            loaded.setdefault(domain, []).append(key)
        return dataclasses.replace(self, loaded={d: tuple(k) for d, k in loaded.items()})


class DkimSignCheck(Check):
    name = "dkim_sign"
    Options = DkimSignOptions
    symbols = {"DKIM_SIGNED": 0.0}

    def _keys_for(self, domain: str) -> tuple:
        keys = self.options.loaded.get(domain)
        if keys or not self.options.sign_parent_domains:
            return keys or ()
        labels = domain.split(".")
        # never climb to a top-level domain
        for i in range(1, len(labels) - 1):
            keys = self.options.loaded.get(".".join(labels[i:]))
            if keys:
                return keys
        return ()

    def on_eom(self, ctx):
        if not self.options.loaded:
            return None
        trust = ctx.engine.trust(ctx.conn)
        if trust not in ("authenticated", "trusted"):
            return None
        found = authors(ctx.msg.header_texts("From"))
        if not found.single:
            ctx.log.info("dkim_sign: not signed: no single From address")
            return None
        domain = found.domains[0]
        keys = self._keys_for(domain)
        if not keys:
            return None
        message = ctx.msg.as_bytes()
        include = dkimsign.headers_to_sign([n for n, _ in ctx.msg.headers],
                                           self.options.sign_headers,
                                           self.options.oversign_headers)
        now = ctx.now()
        added = []
        cache: dict = {}
        for key in keys:
            try:
                value = dkimsign.sign(message, key, include, self.options.canonicalization, now,
                                      cache)
            except dkim.DKIMException as exc:
                ctx.log.warning("dkim_sign: cannot sign for %s: %s", key.domain, exc)
                return self.result("permerror", self.error_symbol(),
                                   f"cannot sign for {key.domain}: {exc}", tempfail=False)
            # the milter protocol takes LF line ends; the MTA writes CRLF
            added.append(("DKIM-Signature", value.decode("ascii").replace("\r\n", "\n")))
        selectors = ", ".join(f"d={k.domain} s={k.selector} a={k.algorithm}" for k in keys)
        ctx.log.info("dkim_sign: signed (%s) for %s client", selectors, trust)
        return self.result("pass", "DKIM_SIGNED", f"signed: {selectors}",
                           add_headers=tuple(added))


CHECKS = (DkimSignCheck,)
