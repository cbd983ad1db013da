"""A sender that spends the message's DNS budget: SPF records of 111
lookups, DKIM signatures of its own domains and many URLs, around a forged
From of a p=reject domain (the unit and end-to-end budget tests)."""

from __future__ import annotations


def hostile_zone() -> str:
    """The SPF records of budget-evil.example (MAIL FROM) and mail.budget-evil.example
    (HELO) each ask ten MX mechanisms of ten hosts each: 111 lookups each,
    within RFC 7208's limit of 10 DNS mechanisms."""
    lines = []
    for identity, tag in (("budget-evil.example", "m"), ("mail.budget-evil.example", "n")):
        lines.append(f'{identity}. TXT "v=spf1 ' +
                     " ".join(f"mx:{tag}{i}.budget-evil.example" for i in range(10)) + ' -all"')
        for i in range(10):
            for j in range(10):
                lines.append(f"{tag}{i}.budget-evil.example. MX {j} h{j}.{tag}{i}.budget-evil.example.")
                lines.append(f"h{j}.{tag}{i}.budget-evil.example. A 203.0.113.{j + 1}")
    return "\n".join(lines) + "\n"


def signature(domain: str, selector: str) -> str:
    return (f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};"
            " h=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;"
            " b=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZQ==\r\n")


def forged(urls: int = 20, other_signatures: int = 9) -> bytes:
    """From a p=reject domain, not aligned, full of lookups a sender controls."""
    sigs = "".join(signature(f"s{i}.budget-evil.example", "x") for i in range(other_signatures))
    sigs += signature("mw-reject.example", "forged")     # aligned, and forged
    body = " ".join(f"http://www.domain{i}.example.net/" for i in range(urls))
    return (sigs + "From: ceo@mw-reject.example\r\nTo: bob@rcpt.example\r\n"
            "Subject: wire the money\r\nMessage-ID: <1@budget-evil.example>\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n" + body + "\r\n").encode()
