"""The package's structure: no module imports a module that imports it (directly or through others)."""

import ast
import os

from tests.conftest import ROOT


def _package_imports() -> dict:
    """{module: set of nerf modules it imports at any level}, e.g. "nerf.rendering" -> {"nerf.occupancy", ...}."""
    graph = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "nerf")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            package = parts[:-1]
            imported = set()
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom):
                    base = package[:len(package) - node.level + 1] if node.level else []
                    target = ".".join(base + ([node.module] if node.module else []))
                    if target.startswith("nerf"):
                        imported.add(target)
                        imported.update(f"{target}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    imported.update(a.name for a in node.names if a.name.startswith("nerf"))
            graph[module] = imported
    return {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}


def _cycle(graph: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = _package_imports()
    assert {"nerf.rendering", "nerf.occupancy", "nerf.compositing", "nerf.methods.base"} <= set(graph)
    assert "nerf.occupancy" in graph["nerf.rendering"]  # the pipeline: rendering builds on the sampler ...
    assert "nerf.rendering" not in graph["nerf.occupancy"]  # ... and not the other way round
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
