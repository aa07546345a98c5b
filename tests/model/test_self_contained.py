"""The model folder is shipped next to exported weights: it may import only relatively, plus
third-party packages; an import of `mhc_lm` must be guarded by `except ImportError`."""

import ast
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parents[2] / "mhc_lm" / "model"


def _guarded(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            return True
    return False


def test_model_folder_imports_are_relative_or_guarded():
    offenders = []
    for path in sorted(MODEL_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                offenders.append(f"{path.name}: from {'.' * node.level}{node.module or ''}")
            if isinstance(node, ast.ImportFrom) and node.level == 1 and (node.module is None or "." in node.module):
                offenders.append(f"{path.name}: from .{node.module or ''} (only `from .file import x` is copied)")
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n == "mhc_lm" or n.startswith("mhc_lm.") for n in names) and not _guarded(node, parents):
                offenders.append(f"{path.name}: unguarded import of {names}")
    assert not offenders, offenders


def test_model_folder_has_no_import_circle():
    """The relative imports between the folder's files form a DAG (module-level and function-level alike)."""
    graph = {}
    for path in sorted(MODEL_DIR.glob("*.py")):
        graph[path.stem] = {node.module for node in ast.walk(ast.parse(path.read_text()))
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    done, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError("import circle: " + " -> ".join(on_path[on_path.index(name):] + [name]))
        if name in done:
            return
        on_path.append(name)
        for dep in graph.get(name, ()):
            visit(dep)
        on_path.pop()
        done.add(name)

    for name in graph:
        visit(name)
