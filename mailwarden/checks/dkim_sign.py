"""dkim_sign: DKIM-sign what our own users send (RFC 6376, RFC 8463).

Our signature says "this domain sent it": only who may speak for a domain
gets it.  A message is signed when the domain of its single RFC5322.From
address has a key, and its client is

* authenticated (SMTP AUTH), and ``[check.submission] sender_login_map``
  gives the login every address of the From field (the rule of
  :func:`mailwarden.loginmap.from_refusal`, the one that refuses
  a forged From with 553 5.7.1).  Without a login map, every login is
  signed for every domain with a key (as it may then send as anyone); or
* unauthenticated, and the admin chose to sign for it: its address is in
  ``[relay] trusted_networks`` *and* in ``sign_trusted_networks``, and the
  From domain is in ``sign_trusted_domains``.  Both are empty by default:
  an unauthenticated client is never signed.  A client whose address the
  MTA did not give is never trusted, so never signed without a login.

Mail submitted locally with sendmail(1) reaches ``non_smtpd_milters`` with
no login: Postfix presents it as client ``localhost[127.0.0.1]`` (``::1``
when ``inet_protocols`` puts IPv6 first), the same as any process that
connects to smtpd over loopback.  To sign it, list ``127.0.0.1/32`` (and
``::1/128``) in ``sign_trusted_networks`` and the domains in
``sign_trusted_domains``: every local user may then send signed mail as
those domains (Postfix's ``authorized_submit_users`` limits who may use
sendmail(1)).  Whoever can write to the milter socket can claim any client
and any login: keep it a UNIX socket writable only by the MTA's group
(README, "Attaching it to the MTA").

With each of the From domain's keys: a domain with an RSA and an Ed25519
key gets both signatures (RFC 8463 §5 advises both while verifiers learn
Ed25519).  With ``sign_parent_domains``, a From domain without a key of its
own is signed with the nearest parent domain's keys (``d=`` the parent,
DMARC-aligned in relaxed mode).  A message not signed for want of
permission gets a log line saying why.

Keys are read at start-up, before privileges are dropped (see
:mod:`mailwarden.signing`): a key file readable by group or others,
unreadable, or not an RSA/Ed25519 key is a start-up error naming the path.
``mailwarden genkey`` makes keys and prints the TXT record to publish.

The h= list holds ``sign_headers`` as often as each occurs, and the
``oversign_headers`` once more so that none can be added afterwards.

INI keys (``[check.dkim_sign]``):
  enabled               yes
  keys                  (empty)  DOMAIN:SELECTOR:PATH, several (comma or space separated)
  canonicalization      relaxed/relaxed   header/body: simple or relaxed
  sign_headers          RFC 6376 §5.4.1's list (see conf/mailwarden.ini)
  oversign_headers      From
  sign_parent_domains   no
  sign_trusted_networks (empty)  unauthenticated clients signed (also in [relay] trusted_networks)
  sign_trusted_domains  (empty)  their From domains signed; ".example.org" adds subdomains
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import dkim

from .. import signing
from ..address import AddressProblem, DomainSet, authors, normalize_domain
from ..loginmap import LoginMapFile, from_refusal
from ..options import Networks, ValueProblem, opt, parse_bool, parse_domains, parse_list, \
    parse_networks
from ..model import Trust
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
        if not signing.valid_selector(selector):
            raise ValueProblem(f"{item!r}: not a DKIM selector: {selector!r}")
        specs.append((domain, selector.lower(), path))
    return tuple(specs)


def _parse_canonicalization(text: str) -> tuple:
    try:
        return signing.parse_canonicalization(text)
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
    sign_headers: tuple = opt(signing.DEFAULT_SIGN_HEADERS, _parse_header_names)
    oversign_headers: tuple = opt(("From",), _parse_header_names)
    sign_parent_domains: bool = opt(False, parse_bool)
    # unauthenticated clients are signed only from these networks (which
    # [relay] trusted_networks must hold too) and only for these From
    # domains: an explicit choice, none by default
    sign_trusted_networks: Networks = opt(Networks(), parse_networks)
    sign_trusted_domains: tuple = opt((), parse_domains)
    # domain -> (SigningKey, ...), read by resolve(), never from the INI
    loaded: dict = field(default_factory=dict)
    # sign_trusted_domains as a set, made by resolve()
    trusted_domains: DomainSet = field(default=DomainSet())

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
                key = signing.load_key(path, domain, selector)
            except signing.KeyProblem as exc:
                raise error("keys", str(exc)) from None
            loaded.setdefault(domain, []).append(key)
        if bool(self.sign_trusted_networks) != bool(self.sign_trusted_domains):
            given, missing = (("sign_trusted_networks", "sign_trusted_domains")
                              if self.sign_trusted_networks else
                              ("sign_trusted_domains", "sign_trusted_networks"))
            raise error(given, f"signs nothing without {missing}: set both, or neither")
        for name in self.sign_trusted_domains:
            if name.startswith("."):
                continue                 # subdomains may have keys of their own
            labels = name.split(".")
            owners = [".".join(labels[i:]) for i in
                      range(len(labels) - 1 if self.sign_parent_domains else 1)]
            if not any(o in loaded for o in owners):
                raise error("sign_trusted_domains", f"{name} has no key in keys"
                            + ("" if self.sign_parent_domains else
                               " (nor is sign_parent_domains on)"))
        return dataclasses.replace(self, loaded={d: tuple(k) for d, k in loaded.items()},
                                   trusted_domains=DomainSet.of(self.sign_trusted_domains))


class DkimSignCheck(Check):
    name = "dkim_sign"
    Options = DkimSignOptions
    symbols = {"DKIM_SIGNED": 0.0}

    def __init__(self, options, services):
        super().__init__(options, services)
        # the login map of [check.submission], read again when it changes
        submission = services.config.checks.get("submission")
        self._logins = LoginMapFile.of(submission)
        self._delimiters = getattr(submission, "extension_delimiters", "")

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

    def _refusal(self, ctx, trust: str, domain: str):
        """Why this client may not have ``domain`` signed, or None."""
        conn = ctx.conn
        if trust == Trust.AUTHENTICATED:
            if self._logins is None:
                return None
            return from_refusal(self._logins.get(ctx), conn.auth_user,
                                ctx.msg.header_texts("From"), self._delimiters)
        if conn.client_ip not in self.options.sign_trusted_networks:
            return f"unauthenticated client {conn.label()} not in sign_trusted_networks"
        if domain not in self.options.trusted_domains:
            return f"From domain {domain} not in sign_trusted_domains"
        return None

    def on_eom(self, ctx):
        if not self.options.loaded:
            return None
        trust = ctx.trust
        if trust not in (Trust.AUTHENTICATED, Trust.TRUSTED):
            return None
        found = authors(ctx.msg.header_texts("From"))
        if not found.single:
            ctx.log.info("dkim_sign: not signed: no single From address")
            return None
        domain = found.domains[0]
        keys = self._keys_for(domain)
        if not keys:
            return None
        why = self._refusal(ctx, trust, domain)
        if why is not None:
            # repr: the reason quotes the sender's From field, kept on one line
            ctx.log.info("dkim_sign: not signed for %s (%s client): %r", domain, trust, why)
            return None
        message = ctx.msg.as_bytes()
        include = signing.headers_to_sign([n for n, _ in ctx.msg.headers],
                                          self.options.sign_headers,
                                          self.options.oversign_headers)
        now = ctx.now()
        added = []
        cache: dict = {}
        for key in keys:
            try:
                value = signing.sign(message, key, include, self.options.canonicalization, now,
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
