"""The layout of the tests themselves, read with ``ast``: a fixture shared by
several test modules is defined once, in a ``conftest.py``."""

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
