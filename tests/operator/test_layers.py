"""The operator's modules import one another in one direction only: no import cycle.

Every ``import`` in facepipe.operator counts, at module level, under ``TYPE_CHECKING`` or
inside a function: an import moved into a function still ties the two modules together
(and only hides the cycle until a new caller imports in another order). The layers, from
the bottom: constants → spec → objects, envmap → environment, pod → autoscalers →
builders → validation → kube, apply, packs, claims, ... → handlers → main.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import facepipe.operator

PACKAGE = "facepipe.operator"
ROOT = Path(facepipe.operator.__file__).resolve().parent


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # file:line of the import statement


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join([PACKAGE, *parts])] = path
    return files


def _is_package(module: str, files: dict[str, Path]) -> bool:
    return module in files and files[module].name == "__init__.py"


def _targets(node: ast.Import | ast.ImportFrom, importer: str, files: dict[str, Path]) -> Iterator[str]:
    """The facepipe.operator modules one import statement loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer if _is_package(importer, files) else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    yield base
    for alias in node.names:
        if f"{base}.{alias.name}" in files:  # `from package import submodule`
            yield f"{base}.{alias.name}"


def import_edges() -> list[Edge]:
    files = module_files()
    edges = []
    for importer, path in files.items():
        ancestors = {importer.rsplit(".", n)[0] for n in range(1, importer.count(".") + 1)}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            where = f"{path.relative_to(ROOT.parents[3])}:{node.lineno}"
            for target in _targets(node, importer, files):
                # Importing a.b.c runs the packages a.b first: those are imports too, except the
                # importer's own packages (already being imported when it runs).
                parts = target.split(".")
                for depth in range(len(parts), 0, -1):
                    module = ".".join(parts[:depth])
                    if module in files and module != importer and module not in ancestors:
                        edges.append(Edge(importer, module, where))
    return edges


def find_cycles(edges: list[Edge]) -> list[tuple[set[str], list[Edge]]]:
    """Each strongly connected component of more than one module (Tarjan), with one cycle in it."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, {}).setdefault(edge.imported, edge)
        graph.setdefault(edge.imported, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(component, _cycle_in(graph, component)) for component in components]


def _cycle_in(graph: dict[str, dict[str, Edge]], component: set[str]) -> list[Edge]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt, edge in sorted(graph[node].items()):
            if nxt == start:
                return [*paths[node], edge]
            if nxt in component and nxt not in paths:
                paths[nxt] = [*paths[node], edge]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe(found: tuple[set[str], list[Edge]]) -> str:
    component, cycle = found
    lines = [f"a cycle among {', '.join(sorted(component))}; one of them:"]
    return "\n".join(lines + [f"  {e.importer} -> {e.imported}  ({e.where})" for e in cycle])


def test_the_operator_modules_import_each_other_without_a_cycle() -> None:
    edges = import_edges()
    assert any(e.importer == f"{PACKAGE}.builders" for e in edges), "the scan found no imports at all"
    cycles = find_cycles(edges)
    assert not cycles, "import cycles among facepipe.operator modules:\n" + "\n\n".join(map(describe, cycles))


def test_the_scan_sees_function_level_and_type_checking_imports() -> None:
    """The checker itself: a cycle closed by an import inside a function is found."""
    code = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import facepipe.operator.b\n")
    inner = ast.parse("def f():\n    from facepipe.operator import a\n")
    files = {f"{PACKAGE}.a": ROOT / "a.py", f"{PACKAGE}.b": ROOT / "b.py", PACKAGE: ROOT / "__init__.py"}
    edges = [
        Edge(f"{PACKAGE}.a", target, "a.py")
        for node in ast.walk(code)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target in _targets(node, f"{PACKAGE}.a", files)
        if target in files and target != PACKAGE
    ] + [
        Edge(f"{PACKAGE}.b", target, "b.py")
        for node in ast.walk(inner)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target in _targets(node, f"{PACKAGE}.b", files)
        if target in files and target != PACKAGE
    ]
    cycles = find_cycles(edges)
    assert len(cycles) == 1 and {e.importer for e in cycles[0][1]} == {f"{PACKAGE}.a", f"{PACKAGE}.b"}
