"""The import contract of ``cognitude/``: no cycle, and every import flows down the layers.

    python tests/layers.py        (also run by ``make lint`` and, through test_layers.py, CI)

Every import counts, wherever it stands: at the top of a module, inside a function, under
``if TYPE_CHECKING``. A cycle is reported with the modules and lines that make it; a layer
violation with the importing line.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cognitude"

# Top to bottom. A module may import its own layer and the layers below it, never above:
# management (HTTP) → the hot path → the app state → domain packages → the gate → the base.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("composition", ("cognitude.app", "cognitude.cli")),
    ("http", ("cognitude.management", "cognitude.metrics", "cognitude.openapi")),
    ("hot path", ("cognitude.hotpath",)),
    ("state", ("cognitude.state",)),
    ("domain", ("cognitude.analytics", "cognitude.ledger", "cognitude.identity",
                "cognitude.cache", "cognitude.providers", "cognitude.routing")),
    ("gate", ("cognitude.gate",)),
    ("base", ("cognitude.db", "cognitude.config", "cognitude.errors", "cognitude")),
)
# Development tools, not parts of the service: only the CLI may start them.
TOOLS = ("cognitude.embedded", "cognitude.mock_upstream")
TOOL_USERS = ("cognitude.cli",)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module of cognitude, line) for every import in the module."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cognitude":
                    yield _nearest(alias.name, known), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            if base.split(".")[0] != "cognitude":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else _nearest(base, known)), node.lineno


def _nearest(name: str, known: dict[str, Path]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), i)
    return None if best is None else best[1]


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    edges: dict[str, dict[str, int]] = {m: {} for m in known}
    for name, path in known.items():
        for target, line in imports(name, path, known):
            if target != name:
                edges[name].setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def problems() -> list[str]:
    edges = graph()
    out = []
    for component in cycles(edges):
        ties = [f"{a}:{edges[a][b]} -> {b}" for a in component for b in edges[a]
                if b in component]
        out.append("import cycle: " + "; ".join(ties))
    for source, targets in sorted(edges.items()):
        mine = layer_of(source)
        for target, line in sorted(targets.items()):
            if target.startswith(TOOLS) and not source.startswith((*TOOLS, *TOOL_USERS)):
                out.append(f"{source}:{line} imports {target}: only the CLI may use the tools")
                continue
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs < mine:
                out.append(f"{source}:{line} imports {target}: layer '{LAYERS[mine][0]}' may "
                           f"not import the layer above it, '{LAYERS[theirs][0]}'")
    unplaced = [m for m in edges if layer_of(m) is None and not m.startswith(TOOLS)]
    out += [f"{m}: in no layer (add it to tests/layers.py LAYERS)" for m in unplaced]
    return out


if __name__ == "__main__":
    found = problems()
    for line in found:
        print(line)
    print(f"{len(graph())} modules, {len(found)} problems")
    sys.exit(1 if found else 0)
