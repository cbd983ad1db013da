"""The sdist and the wheel, ``pip install`` being a first-class way in.

``scripts/build-dist`` runs ``python -m build`` on a copy of the checkout
(``--no-isolation``: the build tools of ``.venv``, no download).  The
wheel's metadata is what PyPI shows; the wheel goes into a fresh virtual
environment, where its ``mailwarden`` command runs.  The fresh environment
takes the wheel alone (``--no-index --no-deps``) and finds its
dependencies, already downloaded, in ``.venv`` (a ``.pth`` line after its
own site-packages): no test reaches the network, and ``pip check`` there
proves those releases satisfy every requirement the wheel declares.
"""

from __future__ import annotations

import email.parser
import io
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import mailwarden
from tests.harness import ROOT

VERSION = mailwarden.__version__
SDIST = f"mailwarden-{VERSION}.tar.gz"
WHEEL = f"mailwarden-{VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    before = sorted(os.listdir(ROOT))
    done = subprocess.run([str(ROOT / "scripts" / "build-dist"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(os.listdir(ROOT)) == before, "the build left files in the checkout"
    return out


def _metadata(dist):
    with zipfile.ZipFile(dist / WHEEL) as whl:
        names = whl.namelist()
        text = whl.read(f"mailwarden-{VERSION}.dist-info/METADATA").decode("utf-8")
    return email.parser.Parser().parsestr(text), names


def test_build_makes_an_sdist_and_a_wheel(dist):
    assert sorted(p.name for p in dist.iterdir()) == sorted([SDIST, WHEEL])
    with tarfile.open(dist / SDIST) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    # what an admin needs besides the code: the sample configuration, the MTA
    # snippets, the unit, the licence
    for needed in ("PKG-INFO", "LICENSE", "README.rst", "setup.cfg", "pyproject.toml",
                   "conf/mailwarden.ini", "contrib/postfix/main.cf",
                   "contrib/sendmail/mailwarden.mc", "contrib/systemd/mailwarden.service",
                   "mailwarden/cli.py", "mailwarden/py.typed"):
        assert needed in names, needed


def test_the_metadata_reads_well_on_pypi(dist):
    meta, names = _metadata(dist)
    assert meta["Name"] == "mailwarden" and meta["Version"] == VERSION
    assert "milter" in meta["Summary"] and len(meta["Summary"]) < 200
    assert meta["Requires-Python"] == ">=3.9"
    assert meta["License"] == "MIT"
    assert f"mailwarden-{VERSION}.dist-info/LICENSE" in names
    assert meta["Author"] and "@" in meta["Author-email"]
    classifiers = meta.get_all("Classifier")
    for wanted in ("License :: OSI Approved :: MIT License",
                   "Topic :: Communications :: Email :: Filters",
                   "Intended Audience :: System Administrators",
                   "Programming Language :: Python :: 3 :: Only",
                   "Operating System :: POSIX :: Linux"):
        assert wanted in classifiers, wanted
    requires = meta.get_all("Requires-Dist")
    for dist_name in ("pymilter", "dkimpy", "pyspf", "dnspython", "cryptography"):
        assert any(r.startswith(dist_name) for r in requires), dist_name
    # the long description is README.rst, and renders as PyPI renders it
    # (readme_renderer: docutils, warnings are failures)
    assert meta["Description-Content-Type"] == "text/x-rst"
    body = meta.get_payload()
    assert body.strip() == (ROOT / "README.rst").read_text(encoding="utf-8").strip()
    import readme_renderer.rst
    warnings = io.StringIO()
    html = readme_renderer.rst.render(body, stream=warnings)
    assert html is not None, warnings.getvalue()
    assert warnings.getvalue() == ""
    assert "Attaching it to the MTA" in html


def test_the_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-index", "--no-deps", str(dist / WHEEL)],
                   check=True, timeout=120)
    # the dependencies as .venv has them, after the fresh site-packages
    # (.venv's own .pth files, mailwarden's editable install among them, are
    # not read from there)
    purelib = subprocess.run([str(python), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "zz-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    done = subprocess.run([str(venv / "bin" / "mailwarden"), "--version"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"mailwarden {VERSION}"), done
    where = subprocess.run([str(python), "-c", "import mailwarden; print(mailwarden.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    assert where.stdout.strip().startswith(purelib), where.stdout
    # the installed command loads every check on the sample configuration
    done = subprocess.run([str(venv / "bin" / "mailwarden"), "check-config", "-c",
                           str(ROOT / "conf" / "mailwarden.ini")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done
    done = subprocess.run([*pip, "check"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
