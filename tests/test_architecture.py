"""The package's layering, read from its source: every import (function-local ones included) forms a
graph without cycles, and the layers below the backends know no backend."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jitorch"

# what each layer must not import: the IR knows no backend, code generator, executor or compiler;
# the primitive table, autograd, gradients and the compiler know no particular backend (they ask
# `jitorch.backends.backend_for(device)`), so a new backend plugs in without editing them
A_BACKEND = ("jitorch.backends.", "jitorch.codegen")
FORBIDDEN = {
    "jitorch.ir": ("jitorch.backends", "jitorch.codegen", "jitorch.runtime", "jitorch.compiler"),
    "jitorch.primitives": A_BACKEND + ("jitorch.runtime",),
    "jitorch.autograd": A_BACKEND + ("jitorch.runtime",),
    "jitorch.gradients": A_BACKEND + ("jitorch.runtime",),
    "jitorch.compiler": A_BACKEND,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its code (a parent package it lives in is
    always loaded first and does not count)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        deps.update(t for t in targets if t in modules and not (name + ".").startswith(t + "."))
    deps.discard(name)
    return deps


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or None (an iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_package_imports_form_no_cycle():
    graph = _graph()
    assert len(graph) > 30  # the walk found the package
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_layers_below_the_backends_import_no_backend():
    graph = _graph()
    offenders = [(name, dep) for name, deps in graph.items() for layer, banned in FORBIDDEN.items()
                 if name == layer or name.startswith(layer + ".") for dep in deps if dep.startswith(banned)]
    assert offenders == []


def test_errors_are_a_leaf():
    graph = _graph()
    assert graph["jitorch.errors"] <= {"jitorch._trace_state"}
    assert graph["jitorch._trace_state"] == set()
