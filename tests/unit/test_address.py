"""Where a recipient address really goes (mailwarden.address)."""

import random

import pytest

from mailwarden.address import DomainSet, analyze, normalize_domain

from tests.hostile import RELAY_TRICKS as TRICKS

LOCAL = DomainSet.of(["outbound.example"])

def routes_only_local(address: str) -> bool:
    route = analyze(address)
    return route.ok and all(hop in LOCAL for hop in route.hops)


@pytest.mark.parametrize("address", TRICKS)
def test_every_trick_reaches_a_foreign_domain(address):
    route = analyze(address)
    assert route.ok, route.problem
    assert any(hop not in LOCAL for hop in route.hops), route
    assert not routes_only_local(address)


@pytest.mark.parametrize("address,hops", [
    ("user%other.example@outbound.example", ("other.example", "outbound.example")),
    ("@outbound.example:user@other.example", ("outbound.example", "other.example")),
    ("other.example!user@outbound.example", ("other.example", "outbound.example")),
    ("user@OTHER.example.", ("other.example",)),
    ("user@[203.0.113.5]", ("[203.0.113.5]",)),
    ('"user@other.example"@outbound.example', ("other.example", "outbound.example")),
])
def test_hops_are_named(address, hops):
    assert analyze(address).hops == hops


@pytest.mark.parametrize("address", [
    "bob@outbound.example",
    "<bob@outbound.example>",
    "Bob@OutBound.Example.",
    '"bob smith"@outbound.example',
    "bob+tag@outbound.example",
    "bob%outbound.example@outbound.example",
    "postmaster",
])
def test_local_recipients(address):
    assert routes_only_local(address), analyze(address)


@pytest.mark.parametrize("address", [
    "bob@",
    '"bob@outbound.example',
    '"bob"x@outbound.example',
    'b"ob@outbound.example',
    "bob@outbound..example",
    "bob@[300.1.1.1]",
    "bob@[203.0.113.5",
    "@outbound.example",
    "@outbound.example:",
    "other.example!@outbound.example",
    "bob@exa mple.org",
])
def test_unreadable_addresses_are_flagged(address):
    route = analyze(address)
    assert not route.ok
    assert not routes_only_local(address)


def test_subdomain_entries():
    domains = DomainSet.of([".outbound.example", "exact.example"])
    assert "mx.outbound.example" in domains
    assert "outbound.example" not in domains
    assert "exact.example" in domains
    assert "sub.exact.example" not in domains


def test_idn_domains_compare_as_a_labels():
    assert normalize_domain("Bücher.example.") == "xn--bcher-kva.example"
    assert analyze("a@bücher.example").hops == ("xn--bcher-kva.example",)


def _variants(rng: random.Random, local: str, foreign: str, n: int):
    """Random spellings of tricks that route to ``foreign``."""
    def case(s):
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in s)

    def dot(s):
        return s + "." if rng.random() < 0.5 else s

    forms = [
        lambda: f"u%{dot(case(foreign))}@{dot(case(local))}",
        lambda: f"u@{case(foreign)}@{dot(case(local))}",
        lambda: f'"u@{case(foreign)}"@{dot(case(local))}',
        lambda: f"@{dot(case(local))}:u@{dot(case(foreign))}",
        lambda: f"{case(foreign)}!u@{dot(case(local))}",
        lambda: f"u@{dot(case(foreign))}",
        lambda: f"<u%{case(foreign)}@{case(local)}>",
        lambda: f"{case(local)}!{case(foreign)}!u@{case(local)}",
    ]
    for _ in range(n):
        yield rng.choice(forms)()


def test_generated_variants_never_pass_as_local():
    rng = random.Random(6)
    for address in _variants(rng, "outbound.example", "elsewhere.example", 400):
        assert not routes_only_local(address), address


def test_generated_local_spellings_stay_local():
    rng = random.Random(7)
    for _ in range(200):
        domain = "".join(c.upper() if rng.random() < 0.5 else c for c in "outbound.example")
        address = f"user{rng.randrange(100)}@{domain}{'.' if rng.random() < 0.5 else ''}"
        assert routes_only_local(address), address
