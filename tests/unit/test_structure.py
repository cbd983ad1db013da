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


# -- what nothing called is gone, and stays gone ------------------------------------

def _defined(path: Path) -> set:
    """Names ``path`` defines: module level as ``name``, in a class as
    ``Class.name`` (methods, class attributes, ``self.name = ...``)."""
    names = set()
    tree = _tree(path)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(f"{node.name}.{item.name}")
            elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                names |= {f"{node.name}.{t.id}" for t in targets if isinstance(t, ast.Name)}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) \
                    and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                names.add(f"{node.name}.{sub.attr}")
    return names


REMOVED = [  # (module, name): nothing called them; explain.py writes the verdict line
    ("engine.py", "Engine.describe"),
    ("engine.py", "_escape"),
    ("engine.py", "Engine._open"),
    ("engine.py", "Engine._open_lock"),
    ("policy.py", "STOPPING"),
    ("signing.py", "SigningKey.public_txt"),
    ("config.py", "default_hostname"),
    ("dns.py", "Answer.nonexistent"),
]


def test_the_definition_reader_sees_each_kind_of_name():
    assert {"Engine.eom", "run_offline", "Engine._pool"} <= _defined(PACKAGE / "engine.py")
    assert {"ACTIONS", "Verdict.action"} <= _defined(PACKAGE / "policy.py")
    assert "SigningKey.sign_digest" in _defined(PACKAGE / "signing.py")
    assert "Answer.temporary" in _defined(PACKAGE / "dns.py")


@pytest.mark.parametrize("module, name", REMOVED)
def test_what_nothing_called_is_not_defined_again(module, name):
    assert name not in _defined(PACKAGE / module)


def test_the_signing_library_is_not_named_like_the_signing_check():
    # mailwarden/dkimsign.py next to mailwarden/checks/dkim_sign.py read as one
    # thing twice; the library is mailwarden/signing.py
    assert (PACKAGE / "signing.py").is_file()
    assert not (PACKAGE / "dkimsign.py").exists()
    importers = []
    for path in _sources():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom):
                names = [_imported_module(path, node)]
                names += [f"{names[0]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.split(".")[-1] == "signing" for n in names):
                importers.append(str(path.relative_to(ROOT)))
            assert not any("dkimsign" in n.split(".") for n in names), (path, node.lineno)
    assert {"mailwarden/checks/dkim_sign.py", "mailwarden/genkey.py"} <= set(importers)


def _services_fields() -> set:
    for node in _tree(PACKAGE / "engine.py").body:
        if isinstance(node, ast.ClassDef) and node.name == "Services":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("no class Services in engine.py")


def _services_reads(path: Path) -> list:
    """(line, name) of each ``services.NAME`` or ``getattr(services, "NAME")``."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute):
            owner = ast.unparse(node.value)
            if owner == "services" or owner.endswith(".services"):
                found.append((node.lineno, node.attr))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant)):
            owner = ast.unparse(node.args[0])
            if owner == "services" or owner.endswith(".services"):
                found.append((node.lineno, node.args[1].value))
    return found


def test_code_reads_only_what_services_has():
    # a hook Services never carries (``services.random``) is a reading of nothing;
    # the audit's ``services`` are master.cf's, another thing
    fields = _services_fields()
    assert {"config", "resolver", "clock", "hostname", "state"} <= fields
    reads = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "audit" not in path.relative_to(PACKAGE).parts:
            reads[str(path.relative_to(ROOT))] = _services_reads(path)
    assert sum(map(len, reads.values())) >= 5           # the reads were found
    unknown = {p: [(line, n) for line, n in hits if n not in fields]
               for p, hits in reads.items()}
    assert {p: hits for p, hits in unknown.items() if hits} == {}
