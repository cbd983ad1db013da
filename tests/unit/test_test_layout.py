"""The layout of the tests themselves, read with ``ast``: a fixture shared by
several test modules is defined once, in a ``conftest.py``; the real parts on
loopback (Postfix, unbound, Redis, the sink, the load client) are one package,
``tests.harness``, that the e2e tests and ``bench/`` import alike, and nothing
reaches into ``tests/e2e`` for them; the spf, dkim and dmarc checks have
unit test files named after them, sharing ``tests/unit/authcase.py``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
BENCH = ROOT / "bench"


def _fixtures(path: Path) -> set:
    """Names of the functions decorated with ``pytest.fixture`` in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if isinstance(target, ast.Attribute) and target.attr == "fixture":
                names.add(node.name)
            elif isinstance(target, ast.Name) and target.id == "fixture":
                names.add(node.name)
    return names


def _defined_where(name: str) -> list:
    return sorted(str(p.relative_to(ROOT)) for p in TESTS.rglob("*.py")
                  if name in _fixtures(p))


def test_redis_server_fixture_is_defined_once_in_the_unit_conftest():
    assert _defined_where("redis_server") == ["tests/unit/conftest.py"]


def test_the_fixture_finder_sees_a_fixture(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import pytest\n\n@pytest.fixture(scope='module')\ndef redis_server():\n"
                     "    yield 1\n\n@pytest.fixture\ndef other():\n    return 2\n\n"
                     "def not_one():\n    pass\n")
    assert _fixtures(probe) == {"redis_server", "other"}


def _imports(path: Path, source: str | None = None) -> set:
    """Absolute names of the modules ``path`` imports (relative ones resolved)."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _sources() -> list:
    return sorted(list(TESTS.rglob("*.py")) + list(BENCH.glob("*.py")))


def test_the_harness_is_a_package_outside_e2e():
    assert (TESTS / "harness" / "__init__.py").is_file()
    assert not (TESTS / "e2e" / "harness.py").exists()
    assert not (TESTS / "e2e" / "loadclient.py").exists()


def test_nothing_imports_the_harness_from_e2e():
    gone = ("tests.e2e.harness", "tests.e2e.loadclient")
    offenders = {}
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        bad = sorted(m for m in _imports(path)
                     if m.startswith(gone) or (rel.startswith("bench/")
                                               and m.startswith("tests.e2e")))
        if bad:
            offenders[rel] = bad
    assert offenders == {}


def test_bench_and_e2e_import_the_same_harness():
    bench = {p.name for p in BENCH.glob("*.py") if "tests.harness" in _imports(p)}
    e2e = {p.name for p in (TESTS / "e2e").glob("*.py") if "tests.harness" in _imports(p)}
    assert {"throughput.py", "latency.py", "memory.py", "faults.py", "compare.py"} <= bench
    assert {"conftest.py", "test_harness.py", "test_foundation.py"} <= e2e


def test_the_import_reader_resolves_relative_imports():
    probe = TESTS / "e2e" / "probe_layout.py"     # never written: only its path is used
    source = "from .harness import smtp_send\nfrom tests.harness import Postfix\nimport os\n"
    found = _imports(probe, source)
    assert {"tests.e2e.harness", "tests.e2e.harness.smtp_send", "tests.harness",
            "os"} <= found


def test_the_auth_checks_have_test_files_named_after_them():
    unit = TESTS / "unit"
    assert not (unit / "test_checks_auth.py").exists()
    for module in ("spf", "dkim", "dmarc"):
        assert (ROOT / "mailwarden" / "checks" / f"{module}.py").is_file()
        assert (unit / f"test_{module}.py").is_file(), module


def test_every_check_has_a_unit_test_file_named_after_it():
    """tests/unit/test_NAME.py for every checks/NAME.py, and no file named
    after the batch of work that added it (test_checks_*.py)."""
    unit = TESTS / "unit"
    checks = sorted(p.stem for p in (ROOT / "mailwarden" / "checks").glob("*.py")
                    if p.stem != "__init__")
    assert len(checks) >= 14
    assert [c for c in checks if not (unit / f"test_{c}.py").is_file()] == []
    assert sorted(p.name for p in unit.glob("test_checks_*.py")) == []


def test_the_auth_tests_share_authcase_not_a_test_module():
    for name in ("test_spf.py", "test_dkim.py", "test_dmarc.py", "test_authresults.py",
                 "test_orgdomain.py"):
        imported = _imports(TESTS / "unit" / name)
        assert "tests.unit.authcase" in imported, name
        assert not any(m.startswith("tests.unit.test_checks_auth") for m in imported), name


def test_no_test_module_imports_another_test_module():
    """What several test modules share lives in a helper module
    (``authcase``, ``auditcase``, ``budgetcase``, ``hostile``,
    ``codecsteps``, ``tests/e2e/authscenario``) or a ``conftest.py``, never
    in a ``test_*`` module that others import (which would collect its
    tests twice over and tie the files together)."""
    offenders = {}
    for path in _sources():
        own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        bad = sorted(m for m in _imports(path)
                     if m != own and any(part.startswith("test_") for part in m.split(".")[:3])
                     and m.startswith("tests."))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
