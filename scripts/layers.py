"""Measure vtprune's import structure: upward imports between floors, private imports, import circles.

Floors, lowest first (a module may import its own floor and below; DESIGN.md "The house"):
  0 errors, version, options         1 hub, data, testbed (synthetic data, tiny models)
  2 adapters   3 methods   4 runtime   5 api   6 training, eval, bench, viz
  7 cli, demo (the commands), __main__ (python -m vtprune), the package root (vtprune/__init__.py, the public face)

Every import counts, also those inside functions, except those under ``if TYPE_CHECKING:`` (never run). A
private import names a ``_``-prefixed module or object of another package. A circle is a cycle between modules
(not packages). ``python scripts/layers.py`` prints them; ``tests/test_layers.py`` holds the house to its limits.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
FLOORS = {
    "errors": 0, "version": 0, "options": 0, "hub": 1, "data": 1, "testbed": 1, "adapters": 2, "methods": 3,
    "runtime": 4, "api": 5, "training": 6, "eval": 6, "bench": 6, "viz": 6, "cli": 7, "demo": 7, "__main__": 7, "": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1] if len(parts) > 1 else ""]


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(modules: dict[str, Path]) -> list[tuple[str, str, list[str]]]:
    """(importer, imported module, names) for every ``import vtprune...`` / ``from vtprune... import`` in src."""
    out = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test)
                       for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vtprune"):
                names = [a.name for a in node.names]
                sub = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
                if sub:  # ``from vtprune.methods import none``: the submodule is the target
                    out += [(mod, s, []) for s in sub]
                    names = [n for n in names if f"{node.module}.{n}" not in modules]
                    if not names:
                        continue
                out.append((mod, node.module, names))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name, []) for a in node.names if a.name.startswith("vtprune")]
    return out


def circles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def measure() -> dict[str, list]:
    modules = {module_name(p): p for p in sorted((SRC / "vtprune").rglob("*.py"))}
    found = imports(modules)
    upward = sorted({(a, b) for a, b, _ in found if floor(b) > floor(a)})
    private = sorted(
        {(a, f"{b}.{n}" if n else b) for a, b, names in found if package(a) != package(b)
         for n in (names or [""]) if n.startswith("_") and n != "__version__" or "._" in b}
    )
    return {"upward": upward, "private": private, "circles": circles({(a, b) for a, b, _ in found if a != b})}


if __name__ == "__main__":
    result = measure()
    for kind, rows in result.items():
        print(f"{kind}: {len(rows)}")
        for r in rows:
            print("   ", " -> ".join(r) if isinstance(r, tuple) else " <-> ".join(r))
