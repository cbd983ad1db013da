"""Domain names: their syntax, the organizational domain of a name, the
registered domain of a host, and what a DMARC record is.

This module is mailwarden's one reader of the Public Suffix List: the
dmarc check, ``dmarc-report``, ``audit`` and the URL / domain lists all ask
it, so that they all draw the same boundaries.  It is also the one place
that says what a domain name may look like (:func:`is_domain`,
:func:`is_label`) and which TXT record is a DMARC record
(:func:`is_dmarc_record`).

The list is tldextract's bundled snapshot, read once on first use and never
fetched (``suffix_list_urls=()``, ``cache_dir=None``).  Both sections of the
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
import re
import threading

__all__ = ["organizational", "registered_domain", "public_suffix",
           "is_domain", "is_label", "is_dmarc_record"]

# RFC 1035 §2.3.1 / RFC 5321 §4.1.2 Domain: letters, digits, hyphens inside
_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# the same with "_": the DNS names of SPF's domain-spec (RFC 7208 §7.1),
# DKIM key names and DNS list zones hold service labels such as _spf
_DNS = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
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
    labels = name.split(".")
    if multi_label and (len(labels) < 2 or labels[-1].isdigit()):
        return False
    pattern = _DNS if underscore else _LDH
    return all(pattern.match(label) for label in labels)


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record is a DMARC record: it starts with ``v=DMARC1``
    followed by ``;`` or its end (RFC 9989's ``v`` tag: a record that does
    not start so is ignored; ``v=DMARC10`` and ``v=dmarc1`` are none)."""
    return _DMARC_VERSION.match(text) is not None

_SPECIAL_SUFFIXES = ("test", "example", "invalid")
_extractor = None
_extractor_lock = threading.Lock()


def _tld():
    """The one TLDExtract instance, built on first use; reads are thread-safe."""
    global _extractor
    if _extractor is None:
        with _extractor_lock:
            if _extractor is None:
                import tldextract
                ex = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None,
                                           include_psl_private_domains=True,
                                           extra_suffixes=_SPECIAL_SUFFIXES)
                ex("warm.example.com")        # build the suffix trie now, under the lock
                _extractor = ex
    return _extractor


def _clean(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _split(name: str) -> tuple:
    """(suffix, label under it) by the list; suffix '' when the list knows
    no suffix of ``name``."""
    try:
        r = _tld()(name)
    except ValueError:
        # tldextract before 3.2 (Debian 12 has 3.1.2) hands a name that
        # starts with a digit to socket.inet_aton, which raises ValueError on
        # a NUL in it; later releases answer ('', last label) there, which
        # every caller reads as "no suffix the list knows", as this does
        return "", ""
    return r.suffix, r.domain


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
