"""The shape of the package (DESIGN.md, "The house"): imports run one way.

* no import cycles among gobucket's modules, and no function-level import of a
  gobucket module unless a ``why:`` comment says why it must stay;
* every module imports on its own in a fresh interpreter;
* the layers below the facades never import ``gobucket.bucket`` or ``gobucket.group``.

The import graph has an edge from a module to each gobucket module it names in
an ``import`` or ``from ... import`` (top-level or inside a function); imports
under ``if TYPE_CHECKING:`` do not count (they never run). A package's
``__init__`` (run implicitly when one of its modules is imported) is not an
edge: the package faces only re-export.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gobucket"
LOWER_LAYERS = ("actors", "executors", "wire", "discovery", "recovery")
FACADES = {"gobucket.bucket", "gobucket.group", "gobucket.serve"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported gobucket module, line, inside a function) for every import that runs."""
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def target(name: str) -> str:
        return name if name in MODULES else name.rsplit(".", 1)[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, in_function)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("gobucket"):
                        found.append((target(alias.name), child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")
                    if not is_package:
                        anchor = anchor[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                if base == "gobucket" or base.startswith("gobucket."):
                    for alias in child.names:
                        name = f"{base}.{alias.name}"
                        found.append((name if name in MODULES else base, child.lineno, in_function))
            visit(
                child,
                in_function
                or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
            )

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {t for t, _, _ in _imports(path) if t in MODULES and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_module_import_graph_has_no_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_of_gobucket_modules_say_why():
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for _target, line, in_function in _imports(path):
            if not in_function:
                continue
            here = lines[line - 1]
            above = lines[line - 2] if line >= 2 else ""
            if "why:" not in here and "why:" not in above:
                unexplained.append(f"{name}:{line}: {here.strip()}")
    assert unexplained == []


def test_the_layers_below_the_facades_do_not_import_them():
    offenders = []
    for name, path in MODULES.items():
        if name.split(".")[1:2] and name.split(".")[1] in LOWER_LAYERS:
            offenders += [f"{name} imports {t}" for t, _, _ in _imports(path) if t in FACADES]
    assert offenders == []


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    # One parent process starts a fresh `python -c "import <module>"` per module.
    script = (
        "import subprocess, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    run = subprocess.run([sys.executable, '-c', 'import ' + name],\n"
        "                         capture_output=True, text=True)\n"
        "    if run.returncode:\n"
        "        failed.append(name + ': ' + run.stderr.strip().splitlines()[-1])\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, *sorted(MODULES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_serving_sits_beside_the_facades_and_imports_neither():
    # serve.py may use the actors, the wire, config, errors and types; the facades
    # assemble it (group.py), never the other way round.
    imported = {t for t, _, _ in _imports(MODULES["gobucket.serve"])}
    assert imported & {"gobucket.bucket", "gobucket.group"} == set()
