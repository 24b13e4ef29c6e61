"""The shape of the code, checked: no import circle (type-only imports and imports inside
functions included), dependencies flowing one way (storage -> model -> worker -> entry points),
and no module over 500 lines in the package and the dashboard."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mrq", "dashboard")
MAX_LINES = 500

#: Lowest first. A module may import its own layer and the layers below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("mrq.version", "mrq.exceptions", "mrq.clock", "mrq.utils", "mrq.options", "mrq.config", "mrq.iocount",
     "mrq.connections", "mrq.legacy_mongo", "mrq.storage", "mrq.store", "mrq.backoff", "mrq.faultpoints"),
    ("mrq.current", "mrq.task", "mrq.helpers", "mrq.stats", "mrq.queue", "mrq.lifecycle", "mrq.job", "mrq.joblogs",
     "mrq.log", "mrq.subpool", "mrq.context", "mrq.tracing", "mrq.aio", "mrq.workflow"),
    ("mrq.worker", "mrq.scheduler", "mrq.maintenance", "mrq.reconcile", "mrq.basetasks", "mrq.startup"),
    ("mrq.cli", "mrq.processes", "mrq.testing", "dashboard", "mrq"),
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of ours that `name` imports, anywhere in its file."""
    targets: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for candidate in candidates:
            while candidate and candidate not in known and "." in candidate:
                candidate = candidate.rsplit(".", 1)[0]
            if candidate in known and candidate != name:
                targets.add(candidate)
                break
    return targets


def layer_of(name: str) -> int:
    best = (-1, -1)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = (index, len(prefix))
    assert best[0] >= 0, f"{name} belongs to no layer: add it to LAYERS"
    return best[0]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_import_circle() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert circles == []


def test_dependencies_flow_one_way() -> None:
    upward = defaultdict(list)
    for name, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(name):
                upward[name].append(target)
    assert dict(upward) == {}


def test_no_module_over_500_lines() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
