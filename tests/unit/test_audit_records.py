"""The record grammars behind ``mailwarden audit DOMAIN``."""

from __future__ import annotations

import pytest

from mailwarden.audit.records import (RecordError, is_spf, parse_dkim_key, parse_dmarc,
                                      parse_spf, parse_sts, parse_tags, parse_tlsrpt)


def terms(record):
    return [(t.name, t.qualifier, t.target, t.macros, t.cidr4, t.cidr6)
            for t in parse_spf(record) if not t.modifier]


def test_spf_selection_is_exact():
    assert is_spf("v=spf1") and is_spf("v=spf1 -all") and is_spf("V=SPF1 -all")
    assert not is_spf("v=spf10 -all") and not is_spf("v=spf1-all") and not is_spf("spf2.0/pra")


def test_spf_mechanisms_qualifiers_and_cidrs():
    assert terms("v=spf1 a mx/24 -a:mail.example.org/24//64 ~ip4:192.0.2.0/24 "
                 "?ip6:2001:db8::/32 include:_spf.example.net exists:%{ir}.x.example.org "
                 "ptr:example.org -all") == [
        ("a", "+", "", False, None, None),
        ("mx", "+", "", False, 24, None),
        ("a", "-", "mail.example.org", False, 24, 64),
        ("ip4", "~", "192.0.2.0", False, 24, None),
        ("ip6", "?", "2001:db8::", False, None, 32),
        ("include", "+", "_spf.example.net", False, None, None),
        ("exists", "+", "%{ir}.x.example.org", True, None, None),
        ("ptr", "+", "example.org", False, None, None),
        ("all", "-", "", False, None, None),
    ]


def test_spf_modifiers_and_unknown_modifiers():
    parsed = parse_spf("v=spf1 redirect=_spf.example.org exp=explain.%{d} x-foo=%{c}bar")
    assert [(t.name, t.modifier, t.target) for t in parsed] == [
        ("redirect", True, "_spf.example.org"), ("exp", True, "explain.%{d}"),
        ("x-foo", True, "%{c}bar")]


def test_spf_macro_escapes_and_transformers():
    parsed = parse_spf("v=spf1 exists:%{l1r-}.%{d2}.%%.%_.%-.example.org -all")
    assert parsed[0].macros


@pytest.mark.parametrize("record,reason", [
    ("v=spf1 foo", "foo: unknown mechanism 'foo'"),
    ("v=spf1 a:foo", "a:foo: 'foo' is not a fully qualified domain name"),
    ("v=spf1 include", "include: 'include' needs ':domain'"),
    ("v=spf1 include:example.123", "does not end in a valid top label"),
    ("v=spf1 ip4:192.0.2.1/33", "ip4:192.0.2.1/33: bad prefix length '33'"),
    ("v=spf1 ip4:192.0.2.1/024", "bad prefix length '024'"),
    ("v=spf1 ip4:2001:db8::1", "is not an IPv4 address"),
    ("v=spf1 ip6:192.0.2.1", "is not an IPv6 address"),
    ("v=spf1 ip6:fe80::1%eth0", "is not an IPv6 address"),
    ("v=spf1 mx//129", "IPv6 prefix length over 128"),
    ("v=spf1 a/", "bad CIDR length '/'"),
    ("v=spf1 -all:x", "'all' takes no argument"),
    ("v=spf1 include:%{z}.example.org", "unknown macro letter %{z}"),
    ("v=spf1 include:%{c}.example.org", "unknown macro letter %{c}"),
    ("v=spf1 exists:%{d0}.example.org", "macro transformer of 0 labels"),
    ("v=spf1 exists:%x.example.org", "bad macro"),
    ("v=spf1 redirect=a.example.org redirect=b.example.org", "'redirect=' given more than once"),
    ("v=spf1 mx\t-all", "terms must be separated by spaces only"),
    ("v=spf1 a:exämple.org", "non-ASCII"),
    ("v=spf1 -redirect=x.example.org", "unknown mechanism 'redirect'"),
])
def test_spf_syntax_errors_name_the_term(record, reason):
    with pytest.raises(RecordError) as exc:
        parse_spf(record)
    assert reason in str(exc.value)


def test_tag_lists():
    assert parse_tags(" v=DKIM1; k = rsa ;p=AB CD;") == [("v", "DKIM1"), ("k", "rsa"),
                                                         ("p", "AB CD")]
    with pytest.raises(RecordError, match="given twice"):
        parse_tags("p=a; p=b")
    with pytest.raises(RecordError, match="not tag=value"):
        parse_tags("v=DKIM1; rsa")


def test_dkim_key_records():
    key = parse_dkim_key("v=DKIM1; k=ed25519; h=sha256; t=y:s; "
                         "p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert key.key_type == "ed25519" and len(key.public) == 32
    assert key.flags == ("y", "s") and key.hashes == ("sha256",)
    assert parse_dkim_key("p=").public == b""
    assert parse_dkim_key("p=").key_type == "rsa"
    with pytest.raises(RecordError, match="no p= tag"):
        parse_dkim_key("v=DKIM1; k=rsa")
    with pytest.raises(RecordError, match="v= must come first"):
        parse_dkim_key("k=rsa; v=DKIM1; p=")
    with pytest.raises(RecordError, match="not valid base64"):
        parse_dkim_key("p=###")


def test_dmarc_record():
    rec = parse_dmarc("v=DMARC1; p=Reject; sp=none; adkim=s; pct=20; fo=1:d; ri=3600; "
                      "rua=mailto:a@example.org!10m, mailto:b@example.net; foo=bar")
    assert (rec.p, rec.sp, rec.adkim, rec.aspf, rec.pct) == ("reject", "none", "s", "r", 20)
    assert [(u.address, u.limit) for u in rec.rua] == [("a@example.org", "!10m"),
                                                      ("b@example.net", "")]
    assert rec.unknown == ("foo",)
    assert parse_dmarc("v=DMARC1; rua=mailto:a@example.org").p is None


@pytest.mark.parametrize("record,reason", [
    ("p=reject; v=DMARC1", "must start with v=DMARC1"),
    ("v=DMARC1; p=block", "p=block: expected none, quarantine or reject"),
    ("v=DMARC1; p=none; pct=101", "pct=101: expected 0 to 100"),
    ("v=DMARC1; p=none; adkim=x", "adkim=x: expected r or s"),
    ("v=DMARC1; p=none; fo=2", "fo=2"),
    ("v=DMARC1; p=none; rua=a@example.org", "'a@example.org' is not a URI"),
    ("v=DMARC1; p=none; rua=mailto:nobody", "is not a mail address"),
    ("v=DMARC1; p=none; ri=soon", "ri=soon"),
])
def test_dmarc_errors(record, reason):
    with pytest.raises(RecordError) as exc:
        parse_dmarc(record)
    assert reason in str(exc.value)


def test_mta_sts_records():
    assert parse_sts("v=STSv1; id=20190429T010101;") == {"id": "20190429T010101"}
    assert parse_sts("v=STSv1 ;id=abc ; ext=1") == {"id": "abc", "ext": "1"}
    for bad, reason in (("v=STSv1;", "no id="), ("v=STSv1; id=" + "a" * 33, "1 to 32"),
                        ("v=STSv1 id=abc", "must be followed by ';'"),
                        ("v=STSv1; id=a; id=b", "given twice")):
        with pytest.raises(RecordError, match=reason):
            parse_sts(bad)


def test_tls_rpt_records():
    assert parse_tlsrpt("v=TLSRPTv1; rua=mailto:tls@example.org,https://r.example.org/x")["rua"] \
        == ("mailto:tls@example.org", "https://r.example.org/x")
    with pytest.raises(RecordError, match="no rua="):
        parse_tlsrpt("v=TLSRPTv1;")
    with pytest.raises(RecordError, match="not a mailto: or https: URI"):
        parse_tlsrpt("v=TLSRPTv1; rua=http://r.example.org/")
