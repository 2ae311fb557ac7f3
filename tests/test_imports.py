"""The package's modules import each other without a circle: every import, at module level or inside a function,
is an edge, and the graph must have no cycle (a circle means two modules cannot be understood, or changed, apart)."""

from __future__ import annotations

import ast
from pathlib import Path

import granite_bench

PACKAGE_DIR = Path(granite_bench.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = ("granite_bench",) + path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports (relative imports resolved; `from x import name` counts x.name if a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for p in PACKAGE_DIR.rglob("*.py") if "suites" not in p.relative_to(PACKAGE_DIR).parts]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges into a package's own __init__ from its submodules are how Python imports them, not a design
    choice: they are dropped (an __init__ importing its own submodules is fine)."""
    return {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}


def test_find_cycle_reports_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "granite_bench.runtime.runner" in graph["granite_bench.runtime.select"]  # a relative import
    assert "granite_bench.runtime.neuron" in graph["granite_bench.runtime.select"]  # inside a function


def test_package_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(parent_packages(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
