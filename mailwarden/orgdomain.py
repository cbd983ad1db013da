"""Domain names: their syntax, the organizational domain of a name (by
RFC 9989's DNS tree walk, and by the Public Suffix List), the registered
domain of a host, and what a DMARC record is.

It is the one place that says what a domain name may look like
(:func:`is_domain`, :func:`is_label`), which TXT record is a DMARC record
(:func:`is_dmarc_record`) and what its tags are (:func:`dmarc_tags`).

The DNS tree walk (RFC 9989 §4.10)
----------------------------------
:func:`tree_walk` finds, for a domain, the DMARC policy record that applies
to it and its organizational domain, from DMARC records in the DNS alone:
no list.  It asks a ``lookup`` callable for the TXT records at
``_dmarc.NAME``, so that the dmarc check feeds it from the message's
budgeted resolver and ``audit`` from its own; :func:`walk_names` says which
names it can ask for, in order, so that a caller can start those lookups
together (they do not depend on each other: the walk only decides which
answers it reads).  The rules, with the RFC's words:

* the names: the domain itself, then its parent, and so on up to the
  top-level label; a domain of more than eight labels goes from itself
  straight to its last seven labels (§4.10 step 4), so that no walk asks
  more than eight names;
* at each name, TXT records that do not start with ``v=DMARC1`` are
  discarded, and several DMARC records at one name count as none
  (steps 2 and 6); a single record with ``psd=y`` or ``psd=n`` stops the
  walk (a record that does not say, ``psd=u``, does not);
* the organizational domain (§4.10.2), from the records found, longest
  name first: a ``psd=n`` record's name; else one label below a ``psd=y``
  record's name (unless that record is the domain's own); else the name
  with the fewest labels that has a record; with no record at all, the
  domain itself;
* the policy record (§4.10.1): the domain's own, else the organizational
  domain's, else the ``psd=y`` record of its public suffix domain;
  none when the walk found none of these.

A name whose lookup fails (``lookup`` returns None: SERVFAIL, timeout)
ends the walk there and is named in ``failed``; answers beyond where the
walk stops are never read.  The policy record is still known when the
domain has its own (nothing further up can change it), the
organizational domain is not ('').

The Public Suffix List
----------------------
The dmarc check, ``audit`` and ``dmarc-report``'s external destination
check no longer use it (RFC 9989 replaced it by the tree walk; RFC 9990
compares tree-walk organizational domains).  It remains for the URL and
domain block lists (:func:`registered_domain`), and for the order in
which an aggregate report lists DKIM results (a presentation choice that
asks no DNS).

The list is the snapshot the tldextract package ships, read here by our own
reader once on first use (or at start-up, by the warm-up) and never fetched;
tldextract itself is not imported, which spares its HTTP stack (some 6 MB
per process) and its trie (another 6 MB).  Both sections of the
list apply, ICANN and private: a private entry such as ``eu.org``,
``github.io`` or ``blogspot.com`` is where an operator hands out names to
unrelated customers, so ``attacker.eu.org`` and ``victim.eu.org`` are two
organizations, not one.  With the ICANN section alone both reduce to
``eu.org``, and SPF or DKIM of one tenant would align with the other's From
under relaxed DMARC alignment.

:func:`organizational` is RFC 7489 §3.2: the public suffix plus one label.
A name under a top-level domain the list does not know takes the list's
default rule ``*``: its last label is the suffix (``mail.corp.internal`` ->
``corp.internal``).  A name that is itself a public suffix is its own
organizational domain.

:func:`registered_domain` is the same boundary with the conventions of URL
and domain block lists (SURBL, URIBL, Spamhaus DBL, RFC 5782): a host under
an unknown top-level domain has no registered domain (``''``: nothing to
look up), a host that is a public suffix itself is looked up as it is (that
is how RFC 5782's ``TEST`` and ``INVALID`` entries are reached), and
customer names under hosting suffixes stay apart (``x.blogspot.com``), as
those lists list them.  The special-use names ``test``, ``example`` and
``invalid`` (RFC 2606, RFC 6761) count as suffixes, so that test data behaves
like real data; for organizational domains this changes nothing, the
default rule ``*`` already treats them so.

Both take a normalised ASCII name (lower case, punycode, no trailing dot);
they strip and lower-case again, which is cheap.  Recent answers are kept:
the same names come back message after message.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import threading
from dataclasses import dataclass

import idna

__all__ = ["organizational", "registered_domain", "public_suffix",
           "is_domain", "is_label", "is_dmarc_record", "dmarc_tags",
           "walk_names", "tree_walk", "TreeWalk", "WALK_LIMIT"]

# RFC 1035 §2.3.1 / RFC 5321 §4.1.2 Domain: letters, digits, hyphens inside
_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# the same with "_": the DNS names of SPF's domain-spec (RFC 7208 §7.1),
# DKIM key names and DNS list zones hold service labels such as _spf
_DNS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
# whole names of such labels, matched at once (a "." is in neither label set,
# so the match never backtracks across labels)
_LDH_NAME = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_DNS_NAME = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
MAX_NAME = 253                  # RFC 1035 §2.3.4: 255 octets on the wire
# RFC 9989 and RFC 7489 §6.4, dmarc-version = "v" equals %s"DMARC1": the
# tag name is an ABNF string (either case), the value case-sensitive, and
# equals is *WSP "=" *WSP
_DMARC_VERSION = re.compile(r"[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")


def is_label(label: str, *, underscore: bool = False) -> bool:
    """One label of 1 to 63 octets: letters, digits and inner hyphens
    (and ``_`` anywhere when ``underscore``)."""
    return (_DNS if underscore else _LDH).match(label) is not None


def is_domain(name: str, *, underscore: bool = False, multi_label: bool = False) -> bool:
    """Domain-name syntax, without a trailing dot: labels as
    :func:`is_label` says, 253 characters at most.

    ``underscore``: DNS names rather than host names (SPF domain-specs,
    DNS list zones).  ``multi_label``: at least two labels and a last one
    that is not all digits (RFC 7208 §7.1 ``toplabel``), so that neither a
    bare word nor an IPv4 address passes as a mail domain.
    """
    if not name or len(name) > MAX_NAME:
        return False
    if multi_label:
        rest, dot, last = name.rpartition(".")
        if not dot or last.isdigit():
            return False
    return (_DNS_NAME if underscore else _LDH_NAME).match(name) is not None


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record is a DMARC record: it starts with ``v=DMARC1``
    followed by ``;`` or its end (RFC 9989's ``v`` tag: a record that does
    not start so is ignored; ``v=DMARC10`` and ``v=dmarc1`` are none)."""
    return _DMARC_VERSION.match(text) is not None


_TAG_NAME = re.compile(r"[A-Za-z]+\Z")       # RFC 9989 §4.8: dmarc-tag = 1*ALPHA equals ...


def dmarc_tags(text: str) -> dict:
    """The tags of a DMARC record after ``v=DMARC1``: lower-case name ->
    value with its surrounding space removed.  The first of a repeated tag
    counts; a part that is no ``name=value`` is a syntax error and dropped
    (RFC 9989 §4.8: syntax errors are discarded).  Values keep their case:
    each tag's reader decides."""
    tags: dict = {}
    for part in text.split(";")[1:]:
        name, sep, value = part.partition("=")
        name = name.strip()
        if sep and _TAG_NAME.match(name):
            tags.setdefault(name.lower(), value.strip())
    return tags


def _psd(text: str) -> str:
    """A record's ``psd`` value: ``y``, ``n``, or ``u`` (the default, and
    what a value outside the three stands for)."""
    value = dmarc_tags(text).get("psd", "u").lower()
    return value if value in ("y", "n", "u") else "u"


# --------------------------------------------------------------------------
# RFC 9989 §4.10: the DNS tree walk

WALK_LIMIT = 8       # names asked at most; past 8 labels, the walk jumps to the last 7


def walk_names(domain: str) -> tuple:
    """The names a tree walk from ``domain`` may ask for, in the order it
    asks: ``a.b.example.com`` -> (``a.b.example.com``, ``b.example.com``,
    ``example.com``, ``com``); of ten labels, the name, then its last seven
    labels, six, ... one."""
    domain = _clean(domain)
    if not domain:
        return ()
    labels = domain.split(".")
    names = [domain]
    rest = labels[1:] if len(labels) <= WALK_LIMIT else labels[-(WALK_LIMIT - 1):]
    while rest:
        names.append(".".join(rest))
        rest = rest[1:]
    return tuple(names)


@dataclass(frozen=True)
class TreeWalk:
    """What a tree walk found for ``domain``.

    ``asked``: the names whose ``_dmarc`` TXT records were read, in order.
    ``failed``: the name whose lookup failed and ended the walk ('' when
    none did); then ``organizational`` is '' (unknown), and so is the
    policy record unless it is the domain's own.
    ``found``: (name, record) of each name that had exactly one DMARC
    record, longest name first.  ``stop``: the name whose ``psd=y`` or
    ``psd=n`` record ended the walk ('' when it ran to the top).
    ``organizational``: the organizational domain.  ``policy_domain`` and
    ``policy_record``: where the applicable record is and its text ('' and
    '' when there is none); ``source`` says which one it is: ``author``
    (the domain's own), ``organizational`` or ``psd`` (a public suffix
    domain's ``psd=y`` record), '' for none.  ``psd``: the ``psd`` value of
    the policy record (``u`` when none).
    """

    domain: str
    asked: tuple
    found: tuple
    stop: str
    organizational: str
    policy_domain: str
    policy_record: str
    source: str
    failed: str = ""

    @property
    def psd(self) -> str:
        return _psd(self.policy_record) if self.policy_record else "u"

    def record_at(self, name: str) -> str:
        return next((text for n, text in self.found if n == name), "")


def _below(name: str, domain: str) -> str:
    """The name one label below ``name`` on the way to ``domain``
    (``example.com`` in ``a.b.example.com`` -> ``b.example.com``)."""
    labels = domain.split(".")
    return ".".join(labels[-(name.count(".") + 2):])


def tree_walk(domain: str, lookup) -> TreeWalk:
    """RFC 9989 §4.10 from ``domain`` (a normalised ASCII name).

    ``lookup(qname)`` returns the TXT strings at ``qname`` (``_dmarc.``
    and a name; empty for NXDOMAIN or no TXT), or None when the lookup
    failed (SERVFAIL, timeout), which ends the walk.  See the module's
    docstring for the rules.
    """
    domain = _clean(domain)
    asked: list = []
    found: list = []
    psds: list = []                     # the psd value of each found record
    stop = failed = ""
    for name in walk_names(domain):
        asked.append(name)
        answer = lookup(f"_dmarc.{name}")
        if answer is None:
            failed = name
            break
        texts = [t for t in answer if is_dmarc_record(t)]
        if len(texts) != 1:
            continue                    # none, or several: all discarded
        found.append((name, texts[0]))
        psds.append(_psd(texts[0]))
        if psds[-1] in ("y", "n"):
            stop = name
            break
    org = domain
    psd_name = ""
    for (name, _text), psd in zip(found, psds):     # longest first
        if psd == "n":
            org = name
            break
        if psd == "y" and name != domain:
            org, psd_name = _below(name, domain), name
            break
    else:
        if found:
            org = found[-1][0]          # the fewest labels
    records = dict(found)
    if failed:
        # nothing further up changes the domain's own record; all else is unknown
        own = domain in records
        return TreeWalk(domain=domain, asked=tuple(asked), found=tuple(found), stop="",
                        organizational="", policy_domain=domain if own else "",
                        policy_record=records.get(domain, ""),
                        source="author" if own else "", failed=failed)
    if domain in records:
        policy, source = domain, "author"
    elif org in records:
        policy, source = org, "organizational"
    elif psd_name:
        policy, source = psd_name, "psd"
    else:
        policy, source = "", ""
    return TreeWalk(domain=domain, asked=tuple(asked), found=tuple(found), stop=stop,
                    organizational=org, policy_domain=policy,
                    policy_record=records.get(policy, ""), source=source)

_SPECIAL_SUFFIXES = ("test", "example", "invalid")
_SNAPSHOT = ".tld_set_snapshot"     # the list as tldextract ships it (the .dat text)
_RULE = re.compile(r"^([.*!]*\w\S*)", re.MULTILINE)
_rules = None                       # frozenset of the list's rules, "!" and "*." kept
_rules_lock = threading.Lock()


def _snapshot_path():
    """Where tldextract keeps its bundled copy of the list, found without
    importing tldextract (which would load requests and urllib3, some 6 MB,
    for nothing: the list is never fetched)."""
    spec = importlib.util.find_spec("tldextract")
    for folder in (spec.submodule_search_locations or ()) if spec else ():
        path = os.path.join(folder, _SNAPSHOT)
        if os.path.isfile(path):
            return path
    raise RuntimeError(f"the Public Suffix List is missing: no {_SNAPSHOT} in tldextract's "
                       "package (is tldextract installed?)")


def _load_rules(text: str) -> frozenset:
    """The rules of the list's text (both sections) and the special-use names.

    A rule in Unicode is kept as written and also in its ASCII form, so
    that a name passed in punycode (``xn--...``) matches it as it is."""
    rules = set(_SPECIAL_SUFFIXES)
    for match in _RULE.finditer(text):
        rule = match.group(1).lower()
        rules.add(rule)
        if not rule.isascii():
            prefix = rule[:1] if rule[:1] == "!" else ""
            try:
                rules.add(prefix + ".".join(
                    label if label == "*" else idna.encode(label).decode("ascii")
                    for label in rule[len(prefix):].split(".")))
            except idna.IDNAError:
                pass                 # not a name IDNA 2008 can spell: the Unicode form stays
    return frozenset(rules)


def _list() -> frozenset:
    """The rules, read on first use; reads are thread-safe."""
    global _rules
    if _rules is None:
        with _rules_lock:
            if _rules is None:
                with open(_snapshot_path(), encoding="utf-8") as f:
                    _rules = _load_rules(f.read())
    return _rules


def _clean(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _split(name: str) -> tuple:
    """(suffix, label under it) by the list (publicsuffix.org's algorithm:
    the longest matching rule wins, an exception rule over a wildcard);
    suffix '' when the list knows no suffix of ``name``."""
    rules = _list()
    labels = name.split(".")
    for i in range(len(labels)):
        tail = ".".join(labels[i:])
        if "!" + tail in rules:
            i += 1                                  # an exception: one label less
        elif not (tail in rules or "*." + ".".join(labels[i + 1:]) in rules
                  and i + 1 < len(labels)):
            continue
        return ".".join(labels[i:]), labels[i - 1] if i else ""
    return "", ""


@functools.lru_cache(maxsize=8192)
def public_suffix(domain: str) -> str:
    """The public suffix of ``domain``, the default rule ``*`` included:
    ``a.b.eu.org`` -> ``eu.org``, ``x.corp.internal`` -> ``internal``."""
    domain = _clean(domain)
    if not domain:
        return ""
    suffix, _label = _split(domain)
    return suffix or domain.rpartition(".")[2]


@functools.lru_cache(maxsize=8192)
def organizational(domain: str) -> str:
    """RFC 7489 §3.2: ``a.news.shop.co.uk`` -> ``shop.co.uk``,
    ``ceo.victim.eu.org`` -> ``victim.eu.org``, ``co.uk`` -> ``co.uk``,
    ``mail.corp.internal`` -> ``corp.internal``."""
    domain = _clean(domain)
    if not domain:
        return ""
    suffix, label = _split(domain)
    if not suffix:
        # the default rule "*": the last label is the public suffix
        return ".".join(domain.split(".")[-2:])
    if not label:
        return domain                  # the name is itself a public suffix
    return f"{label}.{suffix}"


@functools.lru_cache(maxsize=8192)
def registered_domain(host: str) -> str:
    """``a.b.example.co.uk`` -> ``example.co.uk``, ``a.b.blogspot.com`` ->
    ``b.blogspot.com``; '' when the host has no public suffix the list
    knows (``intranet``, ``foo.local``).  The block lists' convention, see
    the module's docstring."""
    suffix, label = _split(_clean(host))
    if suffix and label:
        return f"{label}.{suffix}"
    if suffix:
        return suffix                  # the host is a public suffix itself
    return ""
