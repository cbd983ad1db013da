"""arc: verify the ARC chain of every message, and seal what we pass on
(RFC 8617).

Verification (RFC 8617 §5.2), at end of message, for every client:

1. every ARC header field (ARC-Authentication-Results, ARC-Message-Signature,
   ARC-Seal) is read for its instance ``i=``; a field whose instance cannot
   be read, an instance over 50, or more than 150 ARC fields make the chain
   ``fail`` before any key is asked for or any hash is made;
2. instances 1..N must each have exactly one field of each kind;
3. the highest seal's ``cv=fail`` ends the chain: ``fail``;
4. seal 1 must say ``cv=none``, every later one ``cv=pass``;
5. the ARC-Message-Signature of instance N must verify (its ``c=`` as
   written, relaxed when absent; an ``h=`` naming ARC-Seal or more than
   100 fields does not);
6. every ARC-Seal, from N down, must verify; the seal hashes the sets in
   increasing instance order whatever their place in the header;
7. the oldest-pass: the AMS of N-1, N-2, ... are checked while they
   verify (``header.oldest-pass``, 0 when all do), within the CPU budget.

Each field is checked as dkimpy's ``ARC.verify_sig`` checks it (its key
record read by dkimpy, the same canonicalization, the body hash when the
field has ``bh=``, RSA keys of 1024 bits at least), with the DKIM check's
own code (:mod:`mailwarden.signing`): the fields as received, the body
never copied, RSA by OpenSSL, a key record read once per text.  The steps
above are done here, where dkimpy's ``ARC`` class departs from RFC 8617: it ignores an ARC field whose
``i=`` it cannot read, does not bound the instances it verifies, hashes a
seal's sets in the order they stand in the header (a chain whose sets were
reordered in transit fails, or worse passes on other fields), verifies
every AMS when only the highest is required, and finds an AMS by a text
search that raises an IndexError on ``i=1`` written last.  Keys are looked
up through this message's :class:`~mailwarden.dns.Lookup` (the lookup
budget, the cache, ``[dns]``), never as decisive lookups, so that a chain
of 50 sealers cannot use up DMARC's reserve; a SERVFAIL or timeout is
``temperror``.  CPU time is bounded by ``cpu_budget``: past it the chain
is ``fail`` (not a temperror, which a sender could repeat at will).

Results: ``pass`` (ARC_PASS_TRUSTED, -0.5, when the sealer that handed us
the message, the last of the chain, is in ``trusted_sealers``; ARC_PASS,
0, for a sealer we do not know), ``fail`` (ARC_FAIL, 0: a broken chain is
common and says nothing of the author), ``none`` (no ARC field; ARC_NONE,
0), ``temperror`` (ARC_TEMPERROR, 0).  Only a trusted pass lets
:mod:`mailwarden.checks.dmarc` override a DMARC failure, and only when
that sealer's ARC-Authentication-Results says the message passed there.  Our Authentication-Results
says ``arc=RESULT smtp.remote-ip=IP header.oldest-pass=N``, the two
properties the IANA registry defines for the method (RFC 8617 §10.1), and
the sealer domains (each seal's ``d=``, instance 1 first) in a comment,
``(arc.chain=a.example:b.example)``: ``arc.chain`` as some peers write it is
no registered ptype, and a strict RFC 8601 parser refuses it.

Other checks read the findings through the Result's accessors
(:class:`~mailwarden.model.Result`): ``arc_valid``, ``arc_chain`` (the
sealer domains), ``arc_last_valid`` (the highest instance whose sets and
seals 1..N are good) and ``arc_hops`` (one
:class:`~mailwarden.model.ArcHop` per set: what its sealer's
ARC-Authentication-Results said for dmarc, dkim, spf, ...).

Sealing (RFC 8617 §5.1): a message we pass on to another domain gets an ARC
set, the ARC-Authentication-Results a copy of our own
Authentication-Results (with its ``arc=`` result, which gives ``cv=``).
The engine asks for it last (``on_leave``), after every other change the
milter makes (the A-R, the status header, DKIM signatures, removals), on
the message as it will leave; the set is put on top.  ``seal``:

* ``forward`` (default): mail from an authenticated client, or one in
  ``[relay] trusted_networks``, with a recipient outside ``[relay]
  local_domains`` (every recipient is outside when that list is empty);
* ``always``: every message accepted;
* ``never``.

A valid chain is continued (``cv=pass``, instance N+1, the seal covers
every set); a broken one is sealed with ``cv=fail`` and the seal covers our
set alone (RFC 8617 §5.1.2).  No set is added to a chain whose highest
seal already says ``cv=fail``, to one with 50 sets, nor when the chain
could not be checked (temperror).  The key is the first of ``keys``
(``DOMAIN:SELECTOR:PATH``, read as ``[check.dkim_sign] keys`` are, see
:mod:`mailwarden.signing`); RFC 8617 defines rsa-sha256 alone, and
verifiers (dkimpy among them) refuse anything else, so an Ed25519 key is
refused at start-up.  The AMS signs the fields of RFC 6376 §5.4.1's list
and DKIM-Signature as often as they occur, From once more.

INI keys (``[check.arc]``):
  enabled            yes
  tempfail_on_error  no     an unreachable ARC key should not hold mail
  seal               forward   forward, always or never
  keys               (empty)   DOMAIN:SELECTOR:PATH (RSA), the first one seals
  cpu_budget         2s     CPU time for one message's chain
  trusted_sealers    (empty)   sealer domains (``.example.org``: and subdomains)
                               whose passing chain may override a DMARC failure
  trusted_sealers_file (empty) the same, one domain a line
"""

from __future__ import annotations

import base64
import dataclasses
import re
import time
from dataclasses import dataclass, field

import dkim as dkimpy
from dkim.canonicalization import (
    CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed,
)
from dkim.util import InvalidTagValueList, parse_tag_value

from .. import authresults, signing
from ..signing import (
    KeyCache, PublicKey, body_digest, header_hash_input, no_space, relaxed_name,
    select_headers, signature_valid,
)
from ..address import analyze
from ..address import DomainSet
from ..model import ArcHop, Trust
from ..options import (domains_and_file, opt, parse_bool, parse_choice, parse_cpu_budget,
                       parse_domains, parse_path)
from ..orgdomain import is_domain
from . import Check, CheckOptions

MAX_INSTANCE = 50            # RFC 8617 §4.2.1
MAX_SIGNED = 100             # names in an AMS's h= at most (more: it does not verify)
ARC_NAMES = ("arc-authentication-results", "arc-message-signature", "arc-seal")
_AAR, _AMS, _AS = ARC_NAMES
SEAL_HEADERS = signing.DEFAULT_SIGN_HEADERS + ("DKIM-Signature",)

_AAR_INSTANCE = re.compile(rb"\s*i\s*=\s*([0-9]+)\s*;")
# a header field name as dkimpy reads one (printable US-ASCII, no colon)
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
MIN_KEY_BITS = 1024          # RSA keys shorter than this verify nothing (RFC 8301)


@dataclass(frozen=True)
class ArcOptions(CheckOptions):
    tempfail_on_error: bool = opt(False, parse_bool)
    seal: str = opt("forward", parse_choice("forward", "always", "never"))
    keys: tuple = opt((), signing.parse_key_specs)
    cpu_budget: float = opt(2.0, parse_cpu_budget)
    trusted_sealers: tuple = opt((), parse_domains)
    trusted_sealers_file: str = opt("", parse_path)
    # the sealing key, read by resolve(), never from the INI
    sealer: object = field(default=None)
    # trusted_sealers and the file's domains, merged by resolve(); not an INI key
    trusted: DomainSet = field(default=DomainSet())

    def resolve(self, error):
        self = dataclasses.replace(self, trusted=domains_and_file(
            self.trusted_sealers, self.trusted_sealers_file, "trusted_sealers_file", error))
        if not self.keys:
            return self
        domain, selector, path = self.keys[0]
        try:
            key = signing.load_key(path, domain, selector)
        except signing.KeyProblem as exc:
            raise error("keys", str(exc)) from None
        if key.algorithm != "rsa-sha256":
            raise error("keys", f"{path}: an {key.kind} key cannot seal: RFC 8617 "
                        f"defines rsa-sha256 alone and verifiers refuse other ARC seals")
        return dataclasses.replace(self, sealer=key)


class _Temporary(Exception):
    """A key lookup that could not be answered (SERVFAIL, timeout, budget)."""


class _OverBudget(Exception):
    pass


@dataclass
class Chain:
    """The ARC fields of a message, read (no signature checked yet)."""

    sets: dict = field(default_factory=dict)   # instance -> {kind: [(name, raw value)]}
    problem: str = ""                          # a structure that makes it fail at once
    top: int = 0                               # N, of a chain without a problem
    highest: int = 0                           # the highest instance read
    # raw value -> its tags (or the InvalidTagValueList it raised), each
    # field's tag list read once whoever asks; the dicts must not be changed
    parsed: dict = field(default_factory=dict, repr=False)

    @property
    def present(self) -> bool:
        return bool(self.sets) or bool(self.problem)

    def field(self, instance: int, kind: str) -> tuple:
        return self.sets[instance][kind][0]

    def tags(self, instance: int, kind: str) -> dict:
        return self.read_tags(self.field(instance, kind)[1])

    def read_tags(self, value: bytes) -> dict:
        """``parse_tag_value(value)``, read once per value (the dict must
        not be changed)."""
        found = self.parsed.get(value)
        if found is None:
            try:
                found = parse_tag_value(value)
            except InvalidTagValueList as exc:
                found = exc
            self.parsed[value] = found
        if isinstance(found, InvalidTagValueList):
            raise InvalidTagValueList(*found.args)
        return found

    def ordered(self, upto: int) -> list:
        """(name, raw value) of the sets 1..upto, AAR, AMS, AS each: the
        order the seal of ``upto`` hashes them in."""
        return [self.field(i, kind) for i in range(1, upto + 1) for kind in ARC_NAMES]


def read_chain(headers: list) -> Chain:
    """The ARC fields of ``headers`` ((name bytes, raw value bytes) as on
    the wire), grouped by instance, with the first structural problem of
    RFC 8617 §5.2 steps 1-2 (which makes the chain fail), if any.
    ``highest`` is the highest instance read (0 when unknown: too many
    fields to read them all)."""
    chain = Chain()
    count = 0
    for name, value in headers:
        kind = name.decode("ascii", "replace").strip().lower()
        if kind not in ARC_NAMES:
            continue
        count += 1
        if count > 3 * MAX_INSTANCE:
            chain.problem, chain.highest = f"more than {3 * MAX_INSTANCE} ARC header fields", 0
            return chain
        instance = _instance(kind, value, chain)
        if instance is None:
            chain.problem = chain.problem or f"an {kind} field without a valid instance (i=)"
            continue
        chain.highest = max(chain.highest, instance)
        if not 1 <= instance <= MAX_INSTANCE:
            chain.problem = chain.problem or f"instance i={instance} outside 1..{MAX_INSTANCE}"
            continue
        chain.sets.setdefault(instance, {}).setdefault(kind, []).append((name, value))
    if chain.problem or not chain.sets:
        return chain
    chain.top = max(chain.sets)
    for i in range(1, chain.top + 1):
        found = chain.sets.get(i, {})
        for kind in ARC_NAMES:
            n = len(found.get(kind, ()))
            if n != 1:
                chain.problem = (f"ARC set {i} has {n} {kind} fields" if n else
                                 f"ARC set {i} has no {kind} field")
                return chain
    return chain


def key_names(chain: Chain) -> list:
    """The key names a verification of ``chain`` asks for: each seal's and
    the highest AMS's (the older AMS only matter for oldest-pass)."""
    if chain.problem or not chain.sets:
        return []
    wanted = [(i, _AS) for i in range(chain.top, 0, -1)] + [(chain.top, _AMS)]
    names = []
    for i, kind in wanted:
        try:
            tags = chain.tags(i, kind)
        except InvalidTagValueList:
            continue
        name = (tags.get(b"s", b"").strip() + b"._domainkey." +
                tags.get(b"d", b"").strip()).decode("ascii", "replace").lower()
        if is_domain(name, underscore=True) and name not in names:
            names.append(name)
    return names


def _instance(kind: str, value: bytes, chain: Chain):
    if kind == _AAR:
        m = _AAR_INSTANCE.match(value)
        return int(m.group(1)) if m and len(m.group(1)) <= 3 else None
    try:
        tags = chain.read_tags(value)
    except InvalidTagValueList:
        return None
    raw = tags.get(b"i", b"").strip()
    return int(raw) if raw.isdigit() and len(raw) <= 3 else None


@dataclass
class Verification:
    result: str
    reason: str = ""
    chain: tuple = ()              # sealer domains, instance 1 first
    last_valid: int = 0
    oldest_pass: int | None = None
    hops: tuple = ()
    terminated: bool = False       # the highest seal says cv=fail


def _sealer(chain: Chain, instance: int) -> str:
    try:
        d = chain.tags(instance, _AS).get(b"d", b"")
    except InvalidTagValueList:
        return ""
    text = d.decode("ascii", "replace").strip().lower()
    return text if is_domain(text) else ""


def _hops(chain: Chain) -> tuple:
    out = []
    for i in range(1, chain.top + 1):
        value = chain.field(i, _AAR)[1]
        text = value.decode("utf-8", "replace")
        text = text[text.index(";") + 1:] if ";" in text else ""
        ident, infos = authresults.resinfo_texts(text)
        results = []
        for info in infos:
            read = authresults.read_resinfo(info)
            if read is not None:
                results.append((read[0], read[1], read[3]))
        out.append(ArcHop(i, _sealer(chain, i), ident, tuple(results)))
    return tuple(out)


def verify(headers: list, body, chain: Chain, dnsfunc, over_budget=lambda: False,
           oldest_pass: bool = True, keys: KeyCache | None = None) -> Verification:
    """RFC 8617 §5.2 on the message whose header fields are ``headers``
    ((name, value) bytes as on the wire, as ``Message.wire_headers``) and
    whose body is ``body`` (a :class:`~mailwarden.model.Body`, bytes or
    None), its ARC fields read into ``chain``.  ``dnsfunc(name, timeout=)``
    answers key lookups (raise to stop: :class:`_Temporary`);
    ``over_budget()`` is asked between signatures; ``keys`` keeps key
    records read (the check's own; a new one when None)."""
    if not chain.present:
        return Verification("none", "no ARC header fields")
    if chain.problem:
        return Verification("fail", chain.problem)
    top = chain.top
    domains = tuple(_sealer(chain, i) for i in range(1, top + 1))
    hops = _hops(chain)
    try:
        seals = {i: chain.tags(i, _AS) for i in range(1, top + 1)}
        top_ams = chain.tags(top, _AMS)
    except InvalidTagValueList as exc:
        return Verification("fail", f"an ARC field's tag list is malformed: {exc}",
                            domains, hops=hops)
    out = Verification("fail", "", domains, hops=hops)
    if seals[top].get(b"cv", b"").strip().lower() == b"fail":
        out.reason, out.terminated = f"ARC-Seal i={top} says cv=fail", True
        return out
    bad_cv = [i for i in range(1, top + 1)
              if seals[i].get(b"cv", b"").strip().lower() != (b"none" if i == 1 else b"pass")]
    for name, _value in headers:
        if not _FIELD_NAME.fullmatch(name):
            out.reason = "the message cannot be read: a header field name that is no name"
            return out
    keys = keys if keys is not None else KeyCache(16)
    digests: dict = {}

    def signature_ok(tags: dict, selected: list, sig_field: tuple) -> bool:
        """dkimpy's verify_sig (key, body hash, header hash, signature) on
        one ARC field whose tags were validated."""
        text = dnsfunc(tags[b"s"] + b"._domainkey." + tags[b"d"] + b".", timeout=5)
        if not text:
            return False                # no key
        key = keys.get(text, _arc_key)
        if key is None or key.tlsrpt:
            return False                # unusable, or a key for TLS reports alone
        canon = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        algorithm = tags[b"a"]
        if b"bh" in tags:
            relaxed_body = canon.body_algorithm is Relaxed
            limit = int(tags[b"l"]) if b"l" in tags else None
            wanted = (relaxed_body, algorithm, limit)
            if wanted not in digests:
                digests[wanted] = body_digest(body, relaxed_body, algorithm, limit)
            if digests[wanted] != base64.b64decode(no_space(tags[b"bh"])):
                return False
        data = header_hash_input(selected, sig_field, canon.header_algorithm is Relaxed)
        signature = base64.b64decode(no_space(tags[b"b"]))
        if not signature_valid(key, algorithm, data, signature):
            return False
        return key.ktag != b"rsa" or key.size >= MIN_KEY_BITS

    def check_ams(i: int, tags: dict) -> bool:
        over = over_budget()
        if over:
            raise _OverBudget()
        try:
            dkimpy.validate_signature_fields(tags, [b"i", b"a", b"b", b"bh", b"d", b"h", b"s"],
                                             True)
            include = [h.strip().lower() for h in tags[b"h"].split(b":")]
            if b"arc-seal" in include:
                return False            # RFC 8617 §4.1.2: the AMS never signs a seal
            if len(include) > MAX_SIGNED:
                return False            # as [check.dkim] max_signed_headers: bounded work
            tags = dict(tags)
            # as dkimpy and the conformance suite: the AMS's c= is honoured,
            # relaxed/relaxed when it has none
            tags.setdefault(b"c", b"relaxed/relaxed")
            canon = CanonicalizationPolicy.from_c_value(tags[b"c"])
            if b"from" in include:
                include.append(b"from")     # a From added above the signed one breaks it
            relaxed = canon.header_algorithm is Relaxed
            selected = select_headers(headers, include,
                                      relaxed_name if relaxed else bytes.lower)
            return signature_ok(tags, selected, chain.field(i, _AMS))
        except (dkimpy.DKIMException, InvalidCanonicalizationPolicyError, ValueError,
                KeyError):
            return False

    def check_seal(i: int) -> bool:
        if over_budget():
            raise _OverBudget()
        tags = dict(seals[i])
        try:
            dkimpy.validate_signature_fields(tags, [b"i", b"a", b"b", b"cv", b"d", b"s"], True)
            if b"h" in tags:
                return False            # RFC 8617 §4.1.3: no h= in a seal
            tags[b"c"] = b"relaxed/relaxed"     # RFC 8617 §4.1.3: a seal is relaxed
            fields = chain.ordered(i)
            # the sets in increasing instance order, the seal itself last
            return signature_ok(tags, fields[:-1], fields[-1])
        except (dkimpy.DKIMException, InvalidCanonicalizationPolicyError, ValueError,
                KeyError):
            return False

    try:
        good = [check_seal(i) for i in range(top, 0, -1)][::-1]     # good[i-1]: seal i
        last = 0
        for i in range(1, top + 1):
            if not good[i - 1] or i in bad_cv:
                break
            last = i
        out.last_valid = last
        if not check_ams(top, top_ams):
            out.reason = f"ARC-Message-Signature i={top} did not verify"
            return out
        if bad_cv:
            i = bad_cv[0]
            out.reason = f"ARC-Seal i={i} says cv={_text(seals[i].get(b'cv', b'?'))[:20]}"
            return out
        if last != top:
            out.reason = f"ARC-Seal i={last + 1} did not verify"
            return out
        out.result, out.reason = "pass", ""
        if oldest_pass:
            try:
                oldest = 0
                for i in range(top - 1, 0, -1):
                    if not check_ams(i, chain.tags(i, _AMS)):
                        oldest = i + 1
                        break
                out.oldest_pass = oldest
            except (_OverBudget, InvalidTagValueList):
                out.oldest_pass = None
        return out
    except _OverBudget:
        out.result, out.reason = "fail", "not checked: the CPU budget is used up"
        out.last_valid = 0
        return out


def _arc_key(text: bytes):
    """A key record as dkimpy reads it for ARC (the whole record, s= one
    value), or None when dkimpy would not use it."""
    try:
        return PublicKey(*dkimpy.evaluate_pk(b"", text))
    except (dkimpy.DKIMException, ValueError, TypeError):
        return None


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip()


def dnsfunc_for(lookup):
    """dkimpy's ``dnsfunc`` on a :class:`~mailwarden.dns.Lookup`: the TXT
    record as bytes, None when there is none; a temporary failure raises
    :class:`_Temporary` through dkimpy (which catches only its own errors)."""
    def get_txt(name, timeout=5):
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        text = text.rstrip(".")
        if not is_domain(text, underscore=True):
            return None              # no such name can exist: asked of no server
        answer = lookup.query(text, "TXT")
        if answer.temporary:
            raise _Temporary(answer.describe())
        if not answer.ok or not answer.records:
            return None
        return answer.records[0].encode("utf-8", "replace")
    return get_txt


def seal_plan(chain: Chain, verdict: str, terminated: bool) -> tuple:
    """(instance, cv, prior fields) of the set to add to a message whose
    chain is ``chain`` and verified ``verdict`` (pass, fail, none), or
    (None, reason, ()) when no set may be added."""
    if verdict not in ("pass", "fail", "none"):
        return None, f"chain not checked ({verdict})", ()
    if terminated:
        return None, "the chain already failed (cv=fail)", ()
    if verdict == "none":
        return 1, "none", ()
    top = chain.top if not chain.problem else chain.highest
    if top >= MAX_INSTANCE:
        return None, f"the chain has {MAX_INSTANCE} sets or more", ()
    if not top:
        # fields whose instances cannot be read: set 1 would have to say
        # cv=none (RFC 8617 §4.1.3), which is not what was found
        return None, "no instance of the broken chain can be read", ()
    if verdict == "pass":
        return top + 1, "pass", chain.ordered(top)
    return top + 1, "fail", ()


def consolidated_aar(authserv_id: str, headers: list) -> str:
    """The A-R fields of ``authserv_id`` among ``headers`` ((name, value)
    text), made one AAR payload: ``id; resinfo; resinfo...`` in the order
    they stand (the form the ARC conformance suite assumes)."""
    infos = []
    for name, value in headers:
        if name.lower() != authresults.HEADER.lower():
            continue
        ident, found = authresults.resinfo_texts(value)
        if ident == authserv_id.lower():
            infos += found
    return authserv_id + "".join(";\r\n " + info for info in infos)


class ArcCheck(Check):
    name = "arc"
    method = "arc"
    replayable = True              # pure but for its lookups (see checks/__init__)
    Options = ArcOptions
    symbols = {
        "ARC_PASS_TRUSTED": -0.5,
        "ARC_PASS": 0.0,
        "ARC_FAIL": 0.0,
        "ARC_NONE": 0.0,
        "ARC_TEMPERROR": 0.0,
    }

    cpu_clock = staticmethod(time.thread_time)

    def __init__(self, options, services):
        super().__init__(options, services)
        self.keys = KeyCache()

    def on_eom(self, ctx):
        msg = ctx.msg
        headers = msg.wire_headers()
        chain = read_chain(headers)
        if not chain.present:
            return self._result(ctx, Verification("none"), "ARC_NONE")
        # every key at once, in parallel (and, on the engine's first pass,
        # started in the background before the check is run again)
        names = key_names(chain)
        if names:
            ctx.dns.query_many([(name, "TXT") for name in names])
        started = self.cpu_clock()
        budget = self.options.cpu_budget
        try:
            found = verify(headers, msg.body, chain, dnsfunc_for(ctx.dns),
                           lambda: self.cpu_clock() - started > budget, keys=self.keys)
        except _Temporary as exc:
            return self._result(ctx, Verification("temperror", f"key lookup: {exc}",
                                                  hops=_hops(chain) if not chain.problem
                                                  else ()), "ARC_TEMPERROR")
        if found.reason.startswith("not checked"):
            ctx.log.warning("arc: CPU budget of %gs used up (%.2fs)", budget,
                            self.cpu_clock() - started)
        symbol = {"pass": "ARC_PASS", "fail": "ARC_FAIL"}[found.result]
        if symbol == "ARC_PASS" and found.chain and found.chain[-1] in self.options.trusted:
            symbol = "ARC_PASS_TRUSTED"
        return self._result(ctx, found, symbol)

    def _result(self, ctx, found: Verification, symbol: str):
        props = []
        ip = ctx.conn.client_ip
        if ip is not None:
            props.append(("smtp.remote-ip", str(ip)))
        if found.result == "pass" and found.oldest_pass is not None:
            props.append(("header.oldest-pass", str(found.oldest_pass)))
        shown = ":".join(d or "invalid" for d in found.chain)
        if shown and props:
            # the sealers, as a comment on the last property (see the docstring)
            props[-1] = props[-1] + (f"arc.chain={shown}",)
        findings = (("arc.chain", found.chain), ("arc.last_valid", found.last_valid),
                    ("arc.hops", found.hops), ("arc.terminated", found.terminated))
        return self.result(found.result, symbol, found.reason, properties=tuple(props),
                           findings=findings)

    # -- sealing ---------------------------------------------------------------

    def wants_seal(self, ctx) -> bool:
        seal = self.options.seal
        if seal == "never" or self.options.sealer is None:
            return False
        if seal == "always":
            return True
        if ctx.trust not in (Trust.AUTHENTICATED, Trust.TRUSTED):
            return False
        local = self.services.config.relay.local
        for rcpt in ctx.msg.rcpts:
            route = analyze(rcpt)
            if route.problem or any(hop not in local for hop in route.hops):
                return True
        return False

    def on_leave(self, ctx, message, authres_value: str) -> tuple:
        """The ARC set to put on top of ``message()`` (the message as it
        leaves, every other change made), as (name, value) pairs in the
        milter's form (LF folding), or () with a log line saying why not."""
        if not self.wants_seal(ctx):
            return ()
        outgoing = message()
        ours = [r for r in ctx.results_of(self.name)]
        if not ours:
            ctx.log.info("arc: not sealed: the chain was not checked")
            return ()
        mine = ours[-1]
        headers, body = dkimpy.rfc822_parse(outgoing)
        chain = read_chain(headers)
        instance, cv, prior = seal_plan(chain, mine.result, mine.arc_terminated)
        if instance is None:
            ctx.log.info("arc: not sealed: %s", cv)
            return ()
        key = self.options.sealer
        include = signing.headers_to_sign(
            [n.decode("ascii", "replace") for n, _v in headers], SEAL_HEADERS, ("From",))
        try:
            made = signing.arc_set(outgoing, key, instance, cv,
                                   authres_value.replace("\n", "\r\n").encode("utf-8"),
                                   prior, include, ctx.now(), parsed=(headers, body))
        except dkimpy.DKIMException as exc:
            ctx.log.warning("arc: cannot seal: %r", str(exc))
            return ()
        ctx.log.info("arc: sealed i=%d cv=%s d=%s s=%s", instance, cv, key.domain, key.selector)
        return tuple((n.decode("ascii"), v.decode("ascii", "replace").replace("\r\n", "\n"))
                     for n, v in made)


CHECKS = (ArcCheck,)
