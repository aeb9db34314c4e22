"""The runtime's layering: which package may import which, and no import circles anywhere in the kit.

Read from the source (the AST), not by importing, so that a lazy import inside a function counts as much
as one at the top. Imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "training", "export", "benchmarks")
SHARED = {"errors", "optional", "protocol", "files"}  # runtime's top-level modules every step may use

# runtime's steps -> the steps they may import (besides SHARED); the order of a frame through the kit
ALLOWED = {
    "model": set(),
    "sources": set(),
    "datasets": {"sources"},
    "evaluation": {"datasets", "sources"},
    "map": {"model", "sources", "datasets", "evaluation"},
    "localize": {"model", "sources", "map"},
    "outputs": {"model", "sources", "map", "localize"},
    "cli": {"model", "sources", "datasets", "evaluation", "map", "localize", "outputs"},
    "ros2": {"model", "sources", "datasets", "evaluation", "map", "localize", "outputs", "cli"},
}
# the kit's top-level packages -> those they may import
ALLOWED_TOP = {
    "runtime": set(),
    "training": {"runtime"},
    "export": {"runtime", "training"},
    "benchmarks": {"runtime", "training", "export"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO_ROOT / pkg).rglob("*.py"))}


def _skip_type_checking(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name imported from a package counts as its module when
    it is one, else as the package)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str | None] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _skip_type_checking(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else resolve(base))
        graph[name] = {t for t in targets if t and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _step(module: str) -> str:
    """``runtime.map.store`` -> ``map``; ``runtime.errors`` -> ``errors``; ``runtime`` -> ``runtime``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "runtime"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_imports(graph):
    # a check that reads nothing would pass anything: known edges, a lazy one included
    assert "runtime.map.calibrate" in graph["runtime.localize.localizer"]
    assert "runtime.localize.pipeline" in graph["runtime.localize.localizer"]
    assert "runtime.outputs.web.server" in graph["runtime.cli.session"]  # imported inside a function
    assert len(graph) > 100


def test_no_import_circles(graph):
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]  # the detector works


def test_runtime_steps_import_only_the_steps_before_them(graph):
    assert set(ALLOWED) | SHARED == {
        p.stem
        for p in (REPO_ROOT / "runtime").iterdir()
        if p.name != "__init__.py" and p.suffix in {"", ".py"}
    } - {"__pycache__"}, "a new runtime package or top-level module: place it in ALLOWED or SHARED"
    wrong = []
    for module, targets in graph.items():
        if not module.startswith("runtime.") or module == "runtime":
            continue
        step = _step(module)
        for target in targets:
            if not target.startswith("runtime"):
                continue
            other = _step(target)
            if other == step:
                continue
            if other == "runtime":
                wrong.append(f"{module} imports the package face 'runtime'; import the module itself")
            elif step in SHARED and other not in SHARED:
                wrong.append(f"{module} (shared) imports {target}")
            elif step in ALLOWED and other not in SHARED | ALLOWED[step]:
                wrong.append(f"{module} ({step}) imports {target} ({other})")
    assert wrong == []


def test_packages_import_only_those_below_them(graph):
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if (a := module.split(".")[0]) != (b := target.split(".")[0]) and b not in ALLOWED_TOP[a]
    ]
    assert wrong == []


def test_the_public_face_names_what_it_loads():
    import runtime

    assert sorted(runtime.__all__) == sorted(["NetVLADKitError", *runtime._PUBLIC])
    for name in runtime.__all__:
        assert getattr(runtime, name).__name__ == name
    with pytest.raises(AttributeError, match="module 'runtime' has no attribute 'Localiser'"):
        runtime.Localiser  # noqa: B018
