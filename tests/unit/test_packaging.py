"""The Debian package's files agree with the rest of the checkout: its
version, its configuration (the sample, set by ``debian/make-conffile``),
its systemd unit (``contrib/systemd``'s, with the packaged command), its
dependencies (``setup.cfg``'s, as Debian packages) and what ``make test``
installs to build it.  Building, installing and running the package is
``tests/e2e/test_debian_package.py``."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys

import pytest

import mailwarden
from mailwarden.config import ConfigError, loads
from tests.harness import ROOT

DEBIAN = ROOT / "debian"
SAMPLE = ROOT / "conf" / "mailwarden.ini"

# setup.cfg's distribution -> the Debian package that provides it
DEBIAN_NAMES = {
    "pymilter": "python3-milter",
    "dkimpy": "python3-dkim",
    "pyspf": "python3-spf",
    "dnspython": "python3-dnspython",
    "idna": "python3-idna",
    "tldextract": "python3-tldextract",
    "pynacl": "python3-nacl",
    "cryptography": "python3-cryptography",
    "prometheus-client": "python3-prometheus-client",
    "redis": "python3-redis",
}


def _control() -> list:
    """debian/control's paragraphs, as {field: value} with continuation lines joined."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", (DEBIAN / "control").read_text(encoding="utf-8")):
        fields, name = {}, None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and name:
                fields[name] += "\n" + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if fields:
            paragraphs.append(fields)
    return paragraphs


def _relations(value: str) -> list:
    """Package names of a relation field (alternatives and versions dropped),
    substitution variables left out."""
    names = []
    for item in value.replace("\n", " ").split(","):
        item = item.strip()
        if item and not item.startswith("${"):
            names.append(re.split(r"[\s(|]", item, maxsplit=1)[0])
    return names


def _make_conffile(tmp_path) -> str:
    target = tmp_path / "etc" / "mailwarden.ini"
    subprocess.run([sys.executable, str(DEBIAN / "make-conffile"), str(SAMPLE), str(target)],
                   check=True)
    return target.read_text(encoding="utf-8")


def test_the_package_version_is_mailwarden_s():
    first = (DEBIAN / "changelog").read_text(encoding="utf-8").splitlines()[0]
    version = re.match(r"mailwarden \(([^)]+)\)", first).group(1)
    assert version.split("-")[0] == mailwarden.__version__, first


def test_the_installed_configuration_is_the_sample_set_for_debian(tmp_path):
    text = _make_conffile(tmp_path)
    config = loads(text, path="/etc/mailwarden/mailwarden.ini")
    assert config.milter.socket == "unix:/run/mailwarden/milter.sock"
    assert (config.milter.user, config.milter.group) == ("mailwarden", "postfix")
    assert config.milter.socket_mode == "0660"
    assert config.checks["dmarc"].history == "/var/lib/mailwarden/dmarc.sqlite"
    # every other line as in the sample: the comments document every key
    sample = SAMPLE.read_text(encoding="utf-8").splitlines()
    body = [line for line in text.splitlines() if line not in sample]
    changed = [line for line in body if not line.startswith(";")]
    assert sorted(changed) == sorted([
        "socket = unix:/run/mailwarden/milter.sock", "user = mailwarden", "group = postfix",
        "history = /var/lib/mailwarden/dmarc.sqlite"]), changed


def test_make_conffile_fails_when_the_sample_loses_a_key(tmp_path):
    sample = tmp_path / "sample.ini"
    sample.write_text(SAMPLE.read_text(encoding="utf-8").replace("\nhistory =", "\n;history ="),
                      encoding="utf-8")
    done = subprocess.run([sys.executable, str(DEBIAN / "make-conffile"), str(sample),
                           str(tmp_path / "out.ini")], capture_output=True, text=True)
    assert done.returncode != 0
    assert "[check.dmarc] history: found 0 times" in done.stderr
    assert not (tmp_path / "out.ini").exists()


def test_the_installed_configuration_still_needs_an_authserv_id_set(tmp_path):
    """The one value the package cannot know; the placeholder is the
    sample's, which README.Debian tells the admin to replace."""
    text = _make_conffile(tmp_path)
    assert "Set [authserv] id" in text
    with pytest.raises(ConfigError, match=r"\[authserv\] id"):
        loads(text.replace("\nid = mx.example.org", "\nid ="))


def _unit(path) -> dict:
    """{(section, directive): [values]} of a systemd unit, comments dropped."""
    found, section = {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key), []).append(value)
    return found


def test_the_unit_is_contrib_s_with_the_packaged_command():
    contrib = _unit(ROOT / "contrib" / "systemd" / "mailwarden.service")
    packaged = _unit(DEBIAN / "mailwarden.service")
    for directives in (contrib, packaged):
        directives.pop(("Unit", "Documentation"))
    expected = {key: [v.replace("/usr/local/bin/", "/usr/bin/") for v in values]
                for key, values in contrib.items()}
    assert packaged == expected
    assert packaged[("Service", "ExecStart")] == [
        "/usr/bin/mailwarden run -c /etc/mailwarden/mailwarden.ini"]
    assert packaged[("Service", "RuntimeDirectory")] == ["mailwarden"]
    assert "-/var/lib/mailwarden" in packaged[("Service", "ReadWritePaths")][0].split()


def test_the_package_depends_on_every_library_as_debian_names_it():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    required = {re.match(r"[A-Za-z0-9_.-]+", line.strip()).group(0).lower()
                for line in cfg["options"]["install_requires"].splitlines()
                if line.strip() and not line.strip().startswith("#")}
    binary = _control()[1]
    depends = set(_relations(binary["Depends"]))
    assert {DEBIAN_NAMES[name] for name in required} <= depends
    # the redis extra: only for a shared Redis store
    assert _relations(binary["Recommends"]) == ["python3-redis"]
    # authres is a test tool, not a runtime library
    assert "python3-authres" not in depends


def test_make_test_installs_what_builds_the_package_and_its_libraries():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z_]+) :?= (.*)$", makefile, re.M))

    def expand(name: str) -> set:
        words = set()
        for word in variables[name].split():
            ref = re.fullmatch(r"\$\(([A-Z_]+)\)", word)
            words |= expand(ref.group(1)) if ref else {word}
        return words

    listed = expand("TEST_APT_PACKAGES")
    assert expand("DEB_BUILD_APT_PACKAGES") <= listed
    source = _control()[0]
    build_depends = set(_relations(source["Build-Depends"])) - {"debhelper-compat"}
    assert build_depends | {"debhelper", "dpkg-dev"} <= expand("DEB_BUILD_APT_PACKAGES")
    assert "lintian" in listed
    binary = _control()[1]
    assert set(_relations(binary["Depends"])) | {"python3-redis"} <= listed
