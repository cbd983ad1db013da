"""mailwarden's import graph: no cycle among its modules, no check importing
another check.

The graph is read from the source with :mod:`ast`, nothing is imported.  An
edge A -> B is

* every ``import`` and ``from ... import`` statement of A naming B, wherever
  it stands: at module level, inside a function, a ``try`` or an ``if``.  A
  lazy import delays a cycle to the first call; the two modules still cannot
  be read, changed or tested apart, so it counts;
* a string that is exactly the dotted name of one of our modules
  (``"mailwarden.dmarc_report"``): a module loaded by name with importlib,
  as ``cli.COMMAND_MODULES`` does.

Not counted:

* a package importing one of its own submodules inside a function (the
  check registry loading ``checks/*.py``, ``state`` choosing its backend).
  A submodule always runs after its package, so that is the package's way
  of loading its parts, not a cycle; at module level it would be one, and
  is counted;
* imports under ``if TYPE_CHECKING:`` (never run).

A check module is one under ``checks/`` that defines ``CHECKS``; a helper
there that defines no check may be imported by checks.

``from X import y`` is an edge to ``X.y`` when that is a module, else to
``X``.  Run this file as a script to print the graph's violations.
"""

from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "mailwarden")
PACKAGE = "mailwarden"
CHECKS = PACKAGE + ".checks"

# Edges another piece of work removes.  Each entry must name that work, and
# is refused once the edge is gone, so that it is deleted with it.
KNOWN: dict = {
    # (importer, imported): why the edge is still there, until it goes
}


def module_files(root: str, package: str = PACKAGE) -> dict:
    """Dotted module name -> (path, is_package) for every .py under root."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        rel = os.path.relpath(dirpath, root)
        parts = [package] + ([] if rel == "." else rel.split(os.sep))
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            if filename == "__init__.py":
                found[".".join(parts)] = (os.path.join(dirpath, filename), True)
            else:
                found[".".join(parts + [filename[:-3]])] = (os.path.join(dirpath, filename),
                                                          False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST):
    """(node, at_module_level) for every node, skipping TYPE_CHECKING blocks."""
    def walk(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    yield from walk_one(other, top)
                continue
            yield from walk_one(child, top)

    def walk_one(node, top):
        yield node, top
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                              ast.Lambda))
        yield from walk(node, inner)

    yield from walk(tree, True)


def _base(module: str, is_package: bool, level: int) -> str:
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    if level > 1:
        parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts)


def imports_of(module: str, path: str, is_package: bool, modules) -> set:
    """(target, at_module_level) for each import of ``module`` that names one of ours."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    found = set()

    def add(name, top):
        # "a.b.c" with only "a.b" ours: the nearest module that is
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add((name, top))

    for node, top in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name, top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                source = _base(module, is_package, node.level)
                if node.module:
                    source += "." + node.module
            else:
                source = node.module or ""
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source, top)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(PACKAGE + ".") and node.value in modules:
                add(node.value, top)
    return found


def import_graph(root: str = ROOT) -> dict:
    """module -> set of the modules it depends on (see the rules above)."""
    modules = module_files(root)
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = set()
        for target, top in imports_of(module, path, is_package, modules):
            own_child = is_package and target.startswith(module + ".")
            if own_child and not top:
                continue
            edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict, allowed=()) -> list:
    """Every strongly connected set of modules with a cycle, each as a
    sorted list, edges in ``allowed`` left out (Tarjan, iterative)."""
    allowed = set(allowed)
    edges = {m: sorted(t for t in ts if (m, t) not in allowed and t in graph)
             for m, ts in graph.items()}
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1 or node in edges[node]:
                    out.append(sorted(members))
    return sorted(out)


def check_modules(root: str = ROOT) -> set:
    """The modules under checks/ that define checks (a module-level ``CHECKS``);
    a helper module there that defines none is not a check."""
    found = set()
    for module, (path, _) in module_files(root).items():
        if not module.startswith(CHECKS + "."):
            continue
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "CHECKS" for t in targets):
                found.add(module)
    return found


def check_to_check(graph: dict, checks: set, allowed=()) -> list:
    """(check module, other check module) edges."""
    return sorted((m, t) for m, ts in graph.items() for t in ts
                  if m in checks and t in checks and (m, t) not in allowed)


def _describe(graph: dict, members: list) -> str:
    inside = set(members)
    return "; ".join(f"{m} -> {t}" for m in members for t in sorted(graph[m]) if t in inside)


# --------------------------------------------------------------------------
# the rules, on mailwarden itself

def test_no_import_cycle_among_mailwardens_modules():
    graph = import_graph()
    found = cycles(graph, KNOWN)
    assert not found, "import cycles: " + " | ".join(_describe(graph, c) for c in found)


def test_no_check_imports_another_check():
    graph = import_graph()
    found = check_to_check(graph, check_modules(), KNOWN)
    assert not found, f"a check imports another check: {found}"


def test_every_known_exception_is_still_needed():
    graph = import_graph()
    gone = [edge for edge in KNOWN if edge[1] not in graph.get(edge[0], ())]
    assert not gone, f"no longer imported, delete from KNOWN: {gone}"


def test_the_graph_sees_what_the_layers_say():
    # a sanity floor, so that an empty graph cannot pass the rules above
    graph = import_graph()
    assert len(graph) > 30
    assert "mailwarden.checks" in graph["mailwarden.checks.dkim"]
    assert "mailwarden.checks" in graph["mailwarden.engine"]
    assert "mailwarden.checks" in graph["mailwarden.config"]        # the registry, lazily
    assert "mailwarden.options" in graph["mailwarden.checks"]
    assert "mailwarden.dmarc_report" in graph["mailwarden.cli"]     # by name
    # the check registry loads the checks by name, inside a function: not an edge
    assert not any(t.startswith(CHECKS + ".") for t in graph["mailwarden.checks"])
    assert {"mailwarden.checks.dkim_sign", "mailwarden.checks.submission",
            "mailwarden.checks.dnsbl", "mailwarden.checks.helo"} <= check_modules()


# --------------------------------------------------------------------------
# the rules, on a package made to break them

def _write(root, files: dict) -> str:
    base = os.path.join(str(root), PACKAGE)
    for rel, text in files.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return base


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    root = _write(tmp_path, {
        "__init__.py": "",
        "config.py": "def load():\n    from .checks import registry\n",
        "checks/__init__.py": "from ..config import load\n"
                              "def registry():\n    from . import dns\n    from .a import A\n",
        "checks/a.py": "from . import Base\nfrom .b import helper\nfrom mailwarden import config\n"
                       "from .core import List\nCHECKS = ()\n",
        "checks/b.py": "from .. import config\nCHECKS: tuple = ()\n",
        "checks/core.py": "from . import Base\n",     # a helper of checks, not a check
        "checks/dns.py": "",
        "cli.py": "COMMANDS = ('mailwarden.report',)\n",
        "report.py": "def main():\n    from .cli import COMMANDS\n",
        "state/__init__.py": "def make():\n    from .redis import Redis\n",
        "state/redis.py": "from . import Base\n",
        "typed.py": "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from .cli import COMMANDS\n",
        "eager/__init__.py": "from .part import X\n",
        "eager/part.py": "from . import Y\n",
    })
    graph = import_graph(root)
    assert graph["mailwarden.checks.a"] == {"mailwarden.checks", "mailwarden.checks.b",
                                           "mailwarden.checks.core", "mailwarden.config"}
    assert graph["mailwarden.typed"] == set()
    assert graph["mailwarden.state"] == set()            # its own backend, lazily
    assert cycles(graph) == [["mailwarden.checks", "mailwarden.config"],
                             ["mailwarden.cli", "mailwarden.report"],
                             ["mailwarden.eager", "mailwarden.eager.part"]]
    assert cycles(graph, {("mailwarden.config", "mailwarden.checks"),
                          ("mailwarden.report", "mailwarden.cli"),
                          ("mailwarden.eager", "mailwarden.eager.part")}) == []
    checks = check_modules(root)
    assert checks == {"mailwarden.checks.a", "mailwarden.checks.b"}
    assert check_to_check(graph, checks) == [("mailwarden.checks.a", "mailwarden.checks.b")]
    assert check_to_check(graph, checks, {("mailwarden.checks.a", "mailwarden.checks.b")}) == []


if __name__ == "__main__":
    # python tests/unit/test_import_graph.py [PATH/TO/mailwarden]: every
    # violation, known exceptions included
    where = sys.argv[1] if len(sys.argv) > 1 else ROOT
    g = import_graph(where)
    for c in cycles(g):
        print("cycle:", _describe(g, c))
    for m, t in check_to_check(g, check_modules(where)):
        print("check imports check:", m, "->", t)
    for edge, why in KNOWN.items():
        print("known exception:", " -> ".join(edge), "--", why)
