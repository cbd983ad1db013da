"""``mailwarden genkey``: a key pair and its DNS record."""

import stat

import dkim



def test_genkey_writes_private_key_and_record(tmp_path, capsys):
    from mailwarden.cli import main
    from mailwarden.signing import load_key, sign, headers_to_sign
    out = tmp_path / "k"
    for kind, selector in (("rsa", "r1"), ("ed25519", "e1")):
        assert main(["genkey", "--domain", "Gen.Example", "--selector", selector,
                     "--type", kind, "--out", str(out)]) == 0
        path = out / f"{selector}.private"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        printed = capsys.readouterr().out
        record = [line for line in printed.splitlines() if not line.startswith(";")][0]
        assert record.startswith(f"{selector}._domainkey.gen.example. IN TXT (")
        strings = record.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2]
        assert all(len(s) <= 255 for s in strings)
        if kind == "rsa":
            assert len(strings) == 2           # a 2048-bit key does not fit one string
        txt = "".join(strings).encode()
        key = load_key(str(path), "gen.example", selector)
        message = b"From: a@gen.example\r\nSubject: x\r\n\r\nbody\r\n"
        value = sign(message, key, headers_to_sign(["From", "Subject"], ["From", "Subject"],
                                                   ["From"]))
        signed = b"DKIM-Signature: " + value + b"\r\n" + message
        assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: txt)
    # never overwrite a key
    assert main(["genkey", "--domain", "gen.example", "--selector", "e1", "--type", "ed25519",
                 "--out", str(out)]) == 1
