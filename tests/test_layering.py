"""The package's layering: no import cycles, and no import from a lower layer to a higher one.

Layers, lowest first: shared helpers (errors, io, plots, distributed, options, allocator) -> data -> model ->
search | train (side by side) -> evaluate -> compress | export (side by side, neither imports the other) ->
serve -> loadtest -> demo -> cli.
Every import counts, including those inside functions: a lazy import does not remove a dependency.
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prunerec"

LAYERS = {"errors": 0, "io": 0, "plots": 0, "distributed": 0, "options": 0, "allocator": 0, "data": 1, "model": 2,
          "search": 3, "train": 3, "evaluate": 4, "compress": 5, "export": 5, "serve": 6, "loadtest": 7, "demo": 8,
          "cli": 9, "__main__": 10, "__init__": 0}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """prunerec modules imported anywhere in `path` (a `from x import y` counts x.y when y is a module)."""
    importer = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = resolve(importer, path.name == "__init__.py", node)
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                     for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "prunerec" and n != importer)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: {m for m in imported_modules(path, known) if m in known}
            for name, path in files.items()}


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in LAYERS:
        pytest.fail(f"{module}: its layer is not declared in tests/test_layering.py")
    return top, LAYERS[top]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for importer, targets in graph.items():
        own_top, own_rank = layer(importer)
        for target in targets:
            top, rank = layer(target)
            if rank > own_rank or (rank == own_rank and top != own_top and own_rank > 0):
                wrong.append(f"{importer} -> {target}")
    return sorted(wrong)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_the_checker_sees_cycles_and_upward_imports():
    graph = {"prunerec.data.a": {"prunerec.search.b"}, "prunerec.search.b": {"prunerec.data.a"},
             "prunerec.compress.c": {"prunerec.export.d"}, "prunerec.export.d": set()}
    assert find_cycle(graph) == ["prunerec.data.a", "prunerec.search.b", "prunerec.data.a"]
    assert upward_imports(graph) == ["prunerec.compress.c -> prunerec.export.d", "prunerec.data.a -> prunerec.search.b"]


def test_lazy_and_relative_imports_are_seen(tmp_path, monkeypatch):
    package = tmp_path / "prunerec"
    (package / "data").mkdir(parents=True)
    (package / "serve").mkdir()
    for folder in (package, package / "data", package / "serve"):
        (folder / "__init__.py").write_text("")
    (package / "serve" / "app.py").write_text("")
    (package / "data" / "catalog.py").write_text("def f():\n    from ..serve import app\n    import prunerec.io\n")
    (package / "io.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert import_graph()["prunerec.data.catalog"] == {"prunerec.serve.app", "prunerec.io"}
