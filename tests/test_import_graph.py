"""The import graph of mhc_lm/, evals/ and launch/: no circles, and every arrow between layers points down.

Imports are read from the source with `ast` (nothing is imported), wherever they stand: module
level, inside a function (an optional dependency's lazy import is still an arrow) or under
`TYPE_CHECKING`. Importing a package's submodule also runs the package's __init__.py; that implicit
arrow is not counted (it would make every package a circle with its own __init__).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("mhc_lm", "evals", "launch")

# lowest first: a module may import its own layer and the layers under it, never one above
LAYERS = (
    ("mhc_lm.config_utils", "mhc_lm.files"),
    ("mhc_lm.kernels", "mhc_lm.cpu_kernels"),
    ("mhc_lm.model",),
    ("mhc_lm.presets", "mhc_lm.data", "mhc_lm.run_dir"),
    ("mhc_lm.metrics",),
    ("mhc_lm.train",),
    ("mhc_lm.convert",),
    ("evals",),
    ("launch",),
)


# Arrows still to be removed; the checks below ignore them (delete an entry once its arrow is gone).
PENDING: set[tuple[str, str]] = set()


def modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the modules of `mods` it imports}; `from pkg import name` is pkg.name when that is a module."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: `from .x import y`, `from .. import z`
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                out.update(known(f"{source}.{alias.name}") for alias in node.names)
        graph[mod] = {m for m in out if m is not None and m != mod}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def layer(mod: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(mod == n or mod.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{mod} is in no layer of LAYERS: add it")


def checked_graph() -> dict[str, set[str]]:
    return {a: {b for b in outs if (a, b) not in PENDING} for a, outs in imports(modules()).items()}


def test_no_import_circles():
    assert circles(checked_graph()) == []


def test_no_upward_imports():
    graph = checked_graph()
    upward = sorted(f"{a} -> {b}" for a, outs in graph.items() for b in outs if layer(b) > layer(a))
    assert upward == []


def test_the_checks_see_circles_and_upward_arrows():
    """The two checks on a made-up graph: a circle through three modules, an arrow from train up to evals."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert layer("mhc_lm.train.trainer") > layer("mhc_lm.metrics.callbacks") > layer("mhc_lm.run_dir")
    real = imports(modules())
    assert "mhc_lm.run_dir" in real["mhc_lm.metrics.callbacks"]  # the reader finds a real arrow
    assert "mhc_lm.metrics.config" in real["mhc_lm.train.config"]
