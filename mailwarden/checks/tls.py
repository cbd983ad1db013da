"""tls: whether each message arrived encrypted, recorded and enforced.

At MAIL FROM the check reads the TLS macros the MTA passes for the SMTP
session (``{tls_version}``, ``{cipher}``, ``{cipher_bits}``, and
``{cert_subject}``, ``{cert_issuer}``, ``{verify}`` for a client
certificate) and writes the outcome to Authentication-Results:

* ``x-tls=pass smtp.version=TLSv1.3 smtp.cipher=TLS_AES_256_GCM_SHA384
  smtp.bits=256`` for a session in TLS;
* ``x-tls=none`` for one in cleartext.

Symbols: ``TLS_OK`` (TLS 1.2 or later), ``TLS_OLD`` (SSLv2, SSLv3, TLS 1.0
or 1.1, which RFC 8996 deprecates, or a version the MTA names in a way
mailwarden cannot read), ``TLS_NONE`` (cleartext, a small weight).
Authenticated and trusted clients (``[relay] trusted_networks``) get the
``x-tls`` result but no symbol, so they score 0 whatever ``[scores]`` says:
an authenticated client's TLS is ``[check.submission]
require_tls_for_auth``'s business, and a trusted one is the admin's own
network (mail submitted with sendmail(1) has no SMTP session at all).

``require_from`` lists the domains whose mail must arrive over TLS of at
least ``min_version``: mail whose envelope sender domain is listed is
refused at MAIL FROM, mail whose From header names a listed author domain
(any of them: several From fields and addresses, read as
:func:`mailwarden.address.authors` reads them, leniently where the field
cannot be parsed; a From naming more domains than are read is held to the
rule too, as one of them could be listed) at end of data.  Of several
refusals of one message the policy keeps a 5xx (an SPF or DMARC reject)
before this 4xx.  The refusal is ``451 4.7.0`` by default
(``require_action = tempfail``: the sender retries, perhaps over TLS this
time, as an opportunistic sender falls back to cleartext after a failed
handshake) or ``550 5.7.0`` (``require_action = reject``).  A listed name
matches that domain exactly; ``.bank.example`` matches every subdomain of
bank.example (and not bank.example itself: list both for both), as in
``[relay] local_domains``.  Subdomains are not implied because they are
often another party's (a newsletter sent by a mailing service) that the
admin may not want to hold to the same rule.  Only clients neither
authenticated nor trusted are held to it: mail from a trusted network (an
internal hop, a content filter re-injecting mail) cannot show how it first
arrived.  With ``require_from`` set, a crash of this check tempfails the
message (it fails closed, as relay and submission do).

Every value from the MTA is data: the version is written as OpenSSL names
it when it is one of those names, else as the MTA gave it (cut to 32
characters); the cipher is cut to 64 characters; both then go through the
Authentication-Results writer, which quotes what is not a token and drops
what cannot be written safely; the bits are written only when they are a
number.  A client certificate's subject, issuer and verification are
logged (escaped) once per connection when one was presented, never written
to the header.

Where this differs from authentication_milter's TLS handler, which writes
``x-tls=pass smtp.version=V smtp.cipher=C smtp.bits=B`` from the same
macros at MAIL FROM:

* cleartext gets ``x-tls=none``; authentication_milter writes no ``x-tls``
  entry at all, so a reader cannot tell "cleartext" from "not checked";
* a version OpenSSL names is written in OpenSSL's spelling (``TLSv1.0`` as
  ``TLSv1``), the cipher and version are cut, and ``smtp.bits`` is left out
  unless it is a number (authentication_milter writes what the MTA gives,
  e.g. ``128/128`` in its SMTP mode);
* a verified client certificate is only logged (authentication_milter
  logs it and counts it in a metric); neither writes it to the header.

Postfix passes ``{tls_version}``, ``{cipher}`` and ``{cipher_bits}`` for a
TLS session and ``{cert_subject}``/``{cert_issuer}`` (the certificate's
and its issuer's CN) only for a client certificate it verified; it has no
``{verify}``.  Sendmail passes all six, the certificate names as
distinguished names in its xtext form and ``{verify}`` as ``OK``, ``NO``,
``NOT``, ``FAIL``, ``NONE``, ``TEMP``, ``PROTOCOL`` or ``SOFTWARE``.

INI keys (``[check.tls]``):
  enabled             yes
  require_from        (empty)    domains whose mail must arrive over TLS
  require_from_file   (empty)    a file with more of them, one per line
  min_version         TLSv1.2    TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3
  require_action      tempfail   tempfail (451 4.7.0) or reject (550 5.7.0)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from ..address import DomainSet, analyze, author_domain, authors
from ..explain import clean
from ..model import Reply, Stage, tls_name, tls_rank
from ..options import (ValueProblem, domains_and_file, opt, parse_choice,
                       parse_domains, parse_path)
from . import Check, CheckOptions

MIN_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# RFC 8996: TLS 1.0 and 1.1 are deprecated; SSL long before them
OK_FROM = (1, 1, 2)
MAX_VERSION_CHARS = 32
MAX_CIPHER_CHARS = 64
_BITS = re.compile(r"[0-9]{1,5}")
# Sendmail's {verify} when no certificate was looked at: none presented,
# none asked for, no STARTTLS (and nothing, from Postfix)
_NO_CERTIFICATE = frozenset({"", "NO", "NOT", "NONE"})
_REPLIES = {
    "tempfail": ("tempfail", 451, "4.7.0"),
    "reject": ("reject", 550, "5.7.0"),
}


def parse_min_version(text: str) -> str:
    """``TLSv1`` (or ``TLSv1.0``), ``TLSv1.1``, ``TLSv1.2`` or ``TLSv1.3``."""
    value = text.strip()
    name = tls_name(value) if value[:3].upper() == "TLS" else ""
    if name not in MIN_VERSIONS:
        raise ValueProblem(f"expected one of {', '.join(MIN_VERSIONS)}, got {text!r}")
    return name


@dataclass(frozen=True)
class TlsOptions(CheckOptions):
    require_from: tuple = opt((), parse_domains)
    require_from_file: str = opt("", parse_path)
    min_version: str = opt("TLSv1.2", parse_min_version)
    require_action: str = opt("tempfail", parse_choice("tempfail", "reject"))
    # require_from and the file's domains, merged by resolve(); not an INI key
    required: DomainSet = field(default=DomainSet())

    def resolve(self, error):
        return dataclasses.replace(self, required=domains_and_file(
            self.require_from, self.require_from_file, "require_from_file", error))


class TlsCheck(Check):
    name = "tls"
    method = "x-tls"
    Options = TlsOptions
    symbols = {"TLS_OK": 0.0, "TLS_OLD": 0.5, "TLS_NONE": 1.0, "TLS_REQUIRED": 0.0}

    def __init__(self, options, services):
        super().__init__(options, services)
        self._minimum = tls_rank(options.min_version)
        # a policy only when it enforces something: then a crash tempfails
        self.fail_closed = bool(options.required)

    def runs_at(self, stage) -> bool:
        # at end of message only to enforce require_from
        return stage != Stage.EOM or bool(self.options.required)

    # -- what the session was ------------------------------------------------

    def _session(self, ctx):
        """The x-tls result of this connection's session."""
        conn = ctx.conn
        scored = ctx.trust == "other"
        version = conn.tls_version.strip()
        if not version:
            return self.result("none", "TLS_NONE" if scored else None)
        name = tls_name(version)
        props = [("smtp.version", name or version[:MAX_VERSION_CHARS])]
        if conn.tls_cipher.strip():
            props.append(("smtp.cipher", conn.tls_cipher.strip()[:MAX_CIPHER_CHARS]))
        if _BITS.fullmatch(conn.tls_bits.strip()):
            props.append(("smtp.bits", str(int(conn.tls_bits.strip()))))
        rank = tls_rank(version)
        symbol = "TLS_OK" if rank is not None and rank >= OK_FROM else "TLS_OLD"
        return self.result("pass", symbol if scored else None, properties=tuple(props))

    def _log_certificate(self, ctx) -> None:
        """Once per connection, when a client certificate was presented (a
        subject or issuer, or a {verify} that judged one: Sendmail says NO,
        NOT or NONE for every session without one)."""
        conn = ctx.conn
        judged = conn.tls_verify.strip().upper() not in _NO_CERTIFICATE
        if conn.messages != 1 or not (conn.tls_cert_subject or conn.tls_cert_issuer or judged):
            return
        ctx.log.info("tls: client certificate subject=%s issuer=%s verify=%s",
                     clean(conn.tls_cert_subject[:256]), clean(conn.tls_cert_issuer[:256]),
                     clean(conn.tls_verify[:32]))

    # -- what is required ----------------------------------------------------

    def _strong_enough(self, conn) -> bool:
        rank = tls_rank(conn.tls_version)
        return rank is not None and rank >= self._minimum

    def _listed(self, domains) -> str:
        """The first of ``domains`` that require_from holds, or ""."""
        required = self.options.required
        return next((d for d in domains if d and d in required), "")

    def _refuse(self, ctx, domain: str, where: str):
        conn = ctx.conn
        if not conn.tls_version.strip():
            seen = "cleartext"
        else:
            seen = tls_name(conn.tls_version) or "an unknown TLS version"
        why = (f"{where} domain {domain} requires TLS {self.options.min_version} or later, "
               f"this session is {seen}")
        action, code, xcode = _REPLIES[self.options.require_action]
        if domain:
            text = f"TLS {self.options.min_version} or later required for mail from {domain}"
        else:
            why = f"From names more domains than are read, this session is {seen}"
            text = (f"TLS {self.options.min_version} or later required: the From header "
                    f"names too many domains to tell")
        return self.result("fail", "TLS_REQUIRED", why, method=None,
                           reply=Reply(action, code, xcode, text))

    def _enforced(self, ctx) -> bool:
        return bool(self.options.required) and ctx.trust == "other" \
            and not self._strong_enough(ctx.conn)

    # -- stages ----------------------------------------------------------------

    def on_mail(self, ctx):
        self._log_certificate(ctx)
        out = [self._session(ctx)]
        if self._enforced(ctx) and ctx.msg.mail_from:
            route = analyze(ctx.msg.mail_from)
            domains = [route.domain]
            if route.problem:
                # unreadable: the text after the last "@", as a reply would go
                domains.append(author_domain(ctx.msg.mail_from.rpartition("@")[2][:255]) or "")
            listed = self._listed(domains)
            if listed:
                out.append(self._refuse(ctx, listed, "sender"))
        return out

    def on_eom(self, ctx):
        if not self._enforced(ctx):
            return None
        found = authors(ctx.msg.header_texts("From"))
        listed = self._listed(found.domains)
        if listed or found.overflow:
            # a From with more domains than are read could hide a listed one
            return self._refuse(ctx, listed, "From")
        return None


CHECKS = (TlsCheck,)
