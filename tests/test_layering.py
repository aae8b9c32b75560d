"""Imports are one-way and acyclic among our packages, read from the source with `ast`.

Layers (a package may import only those to its left, and itself):
    envs  <-  flexmarl  <-  orchestrator  <-  benchmarks
`envs` imports nothing of ours; `flexmarl` may import `envs`; `orchestrator` wires both; `benchmarks` may
import all three, and nothing imports `benchmarks` except the CLI's bench entry point (orchestrator/cli.py).
No package imports `tests`. The layering counts every import, wherever it is written.

Cycles: no module-level import cycle among our modules. "Module-level" means an import that runs when the
module is imported: anywhere outside a function body (inside `if`, `try` or a class body counts). An import
written inside a function runs only when the function is called, so it is not a module-level edge; but it
must not hide a cycle either, so a second test refuses cycles with those imports counted too. Importing
`a.b.c` also runs `a` and `a.b`, so those are edges too, except a module's own enclosing packages, which
Python always initialises before the module.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("envs", "flexmarl", "orchestrator", "benchmarks")
OURS = (*LAYERS, "tests")
ALLOWED_EXTRA = {"orchestrator.cli": {"benchmarks"}}
"""module -> packages it may import beyond its layer's: the CLI's bench command runs the benchmarks."""


def discover_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the given top-level packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(tree: ast.AST, module: str, is_package: bool, module_level_only: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each import statement; relative imports resolved."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, []) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".")[: len(module.split(".")) - child.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, [alias.name for alias in child.names]))
            visit(child)

    visit(tree)
    return found


def import_graph(modules: dict[str, Path], module_level_only: bool) -> dict[str, set[str]]:
    """module -> our modules its import statements run (each imported module and its enclosing packages)."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported, names in _imports(ast.parse(path.read_text()), name, _is_package(name, modules),
                                        module_level_only):
            candidates = [imported] + [f"{imported}.{n}" for n in names]  # `from pkg import submodule`
            for candidate in candidates:
                parts = candidate.split(".")
                targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = targets - own_packages - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))  # graphlib lists it against the import direction
    return None


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...], ours: tuple[str, ...],
                   allowed_extra: dict[str, set[str]]) -> list[str]:
    """'a.b imports c.d' for every import of a package the importer's layer may not use."""
    offenders = []
    for name, targets in sorted(graph.items()):
        package = name.split(".")[0]
        allowed = set(layers[: layers.index(package) + 1]) | allowed_extra.get(name, set())
        offenders += [f"{name} imports {target}" for target in sorted(targets)
                      if target.split(".")[0] in ours and target.split(".")[0] not in allowed]
    return offenders


def test_no_module_level_import_cycle():
    cycle = find_cycle(import_graph(discover_modules(ROOT, LAYERS), module_level_only=True))
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_cycle_closed_by_an_import_inside_a_function():
    cycle = find_cycle(import_graph(discover_modules(ROOT, LAYERS), module_level_only=False))
    assert cycle is None, "import cycle (closed inside a function): " + " -> ".join(cycle)


def test_no_import_against_the_layering():
    graph = import_graph(discover_modules(ROOT, LAYERS), module_level_only=False)
    offenders = upward_imports(graph, LAYERS, OURS, ALLOWED_EXTRA)
    assert not offenders, offenders


# -- the checks themselves, on small packages written for the purpose ---------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files, cycle", [
    ({"low/__init__.py": "", "low/a.py": "from low import b\n", "low/b.py": "from low.a import x\n"},
     ["low.a", "low.b", "low.a"]),
    ({"low/__init__.py": "", "low/a.py": "from . import b\n", "low/b.py": "import low.c\n",
      "low/c.py": "if True:\n    from .a import x\n"},
     ["low.a", "low.b", "low.c", "low.a"]),
    ({"low/__init__.py": "from low.a import x\n", "low/a.py": "", "high/__init__.py": "",  # via a package's __init__
      "high/a.py": "import low.a\n", "low/b.py": "class B:\n    from high.a import y\n"}, None),
])
def test_module_level_cycles_are_found_and_chains_are_not(tmp_path, files, cycle):
    _write(tmp_path, files)
    found = find_cycle(import_graph(discover_modules(tmp_path, ("low", "high")), module_level_only=True))
    if cycle is None:  # low.b -> high.a -> low -> low.a: a chain, not a cycle
        assert found is None
    else:
        assert found is not None and found[0] == found[-1] and set(found) == set(cycle), found


def test_an_import_inside_a_function_is_not_a_cycle(tmp_path):
    _write(tmp_path, {"low/__init__.py": "", "low/a.py": "from low import b\n",
                      "low/b.py": "def f():\n    from low.a import x\n    return x\n"})
    modules = discover_modules(tmp_path, ("low",))
    assert find_cycle(import_graph(modules, module_level_only=True)) is None
    assert find_cycle(import_graph(modules, module_level_only=False)) is not None


def test_an_upward_import_is_found_even_inside_a_function(tmp_path):
    _write(tmp_path, {"low/__init__.py": "", "low/a.py": "def f():\n    import high.b\n",
                      "high/__init__.py": "", "high/b.py": "from low import a\n", "high/cli.py": "import top\n",
                      "top/__init__.py": "import high.b\n"})
    graph = import_graph(discover_modules(tmp_path, ("low", "high", "top")), module_level_only=False)
    assert upward_imports(graph, ("low", "high", "top"), ("low", "high", "top"), {}) == [
        "high.cli imports top", "low.a imports high", "low.a imports high.b"]
    assert upward_imports(graph, ("low", "high", "top"), ("low", "high", "top"), {"high.cli": {"top"}}) == [
        "low.a imports high", "low.a imports high.b"]
