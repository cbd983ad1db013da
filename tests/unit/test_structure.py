"""Where things live, read from the source with ``ast``: the adapter is only
an adapter, and the command modules share what they need through
``mailwarden.command``, never through ``cli``'s own names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mailwarden"

# what makes a process a daemon, none of which is the adapter's
DAEMON_DEFS = {"serve", "run", "Signals", "Drain", "StartupRefused"}
DAEMON_MODULES = {"grp", "pwd", "signal", "select", "threading", "socket"}
PROCESS_CALLS = {  # os.* that change the process or the socket file
    "setuid", "setgid", "setgroups", "seteuid", "setegid", "setresuid", "setresgid",
    "initgroups", "umask", "chmod", "chown", "fork", "setsid", "kill",
}
LIBMILTER_LOOP = {"setconn", "settimeout", "opensocket", "main", "stop"}


def _tree(path: Path, source: str | None = None) -> ast.Module:
    if source is None:
        source = path.read_text(encoding="utf-8")
    return ast.parse(source, filename=str(path))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_module(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` in ``path`` names."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _daemon_code(path: Path) -> list:
    """Each piece of daemon code in ``path``: (line, what)."""
    found = []
    libmilter = {"milter"}          # names pymilter's C module is bound to
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in DAEMON_MODULES:
                    found.append((node.lineno, f"import {alias.name}"))
                if alias.name == "milter":
                    libmilter.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in DAEMON_MODULES:
                found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in DAEMON_DEFS:
            found.append((node.lineno, f"defines {node.name}"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, name = node.value.id, node.attr
            if owner == "os" and name in PROCESS_CALLS:
                found.append((node.lineno, f"os.{name}"))
            elif owner in libmilter and name in LIBMILTER_LOOP:
                found.append((node.lineno, f"{owner}.{name}"))
    return found


def _private_or_constant(name: str) -> bool:
    return name.startswith("_") or (name.isupper() and name.strip("_").isidentifier())


def _reaches_into_cli(path: Path, source: str | None = None) -> list:
    """Each private name or constant of ``mailwarden.cli`` that ``path``
    takes: imported by name, or read as ``cli.NAME``."""
    found = []
    tree = _tree(path, source)
    bound = set()                   # names mailwarden.cli is bound to here
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _imported_module(path, node)
            for alias in node.names:
                if source == "mailwarden.cli" and _private_or_constant(alias.name):
                    found.append((node.lineno, f"from {source} import {alias.name}"))
                if source == "mailwarden" and alias.name == "cli":
                    bound.add(alias.asname or "cli")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mailwarden.cli":
                    bound.add(alias.asname or "mailwarden.cli")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private_or_constant(node.attr)
                and ast.unparse(node.value) in bound):
            found.append((node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
    return found


def _sources() -> list:
    paths = []
    for folder in ("mailwarden", "tests", "bench", "scripts", "contrib"):
        paths += sorted((ROOT / folder).rglob("*.py"))
    return paths


def test_the_adapter_has_no_daemon_code():
    assert _daemon_code(PACKAGE / "milter.py") == []


def test_the_daemon_module_has_it():
    # the rule above holds because the code moved, not because it went away
    found = {what for _line, what in _daemon_code(PACKAGE / "daemon.py")}
    assert {"defines serve", "defines Signals", "defines Drain", "os.setuid",
            "os.setgroups", "os.umask", "libmilter.opensocket", "libmilter.main"} <= found


@pytest.mark.parametrize("module, source", [
    ("dmarc_report.py", "from .cli import EXIT_OK\n"),
    ("audit/postfix.py", "from ..cli import _load_config as load\n"),
    ("audit/postfix.py", "def f():\n    from ..cli import DEFAULT_CONFIG\n"),
    ("genkey.py", "from mailwarden.cli import DEFAULT_CONFIG\n"),
    ("genkey.py", "from mailwarden import cli\nx = cli._load_config\n"),
    ("genkey.py", "import mailwarden.cli\nx = mailwarden.cli.EXIT_FAIL\n"),
])
def test_the_cli_rule_sees_each_way_in(module, source):
    assert len(_reaches_into_cli(PACKAGE / module, source)) == 1


@pytest.mark.parametrize("module, source", [
    ("genkey.py", "from .cli import main\n"),                 # its one public entry
    ("audit/postfix.py", "from .cli import EXIT_OK\n"),       # mailwarden.audit.cli
    ("genkey.py", "from .command import EXIT_OK, load_config\n"),
])
def test_the_cli_rule_lets_the_rest_be(module, source):
    assert _reaches_into_cli(PACKAGE / module, source) == []


def test_no_module_takes_a_private_name_or_constant_from_cli():
    found = {str(p.relative_to(ROOT)): _reaches_into_cli(p) for p in _sources()}
    assert len(found) > 50          # the whole tree was read
    assert {path: hits for path, hits in found.items() if hits} == {}


def test_cli_keeps_no_constant_or_helper_of_its_own():
    tree = _tree(PACKAGE / "cli.py")
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    # its parsers, its hand-offs, and the list of command modules
    assert {n for n in names if _private_or_constant(n)} == {"COMMAND_MODULES"}
