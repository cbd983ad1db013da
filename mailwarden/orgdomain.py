"""The organizational domain of a name, and the registered domain of a host.

This module is mailwarden's one reader of the Public Suffix List: the
dmarc check, ``dmarc-report``, ``audit`` and the URL / domain lists all ask
it, so that they all draw the same boundaries.

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
import threading

__all__ = ["organizational", "registered_domain", "public_suffix"]

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
