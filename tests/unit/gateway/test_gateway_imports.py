"""The gateway's modules import one another without a circle (app -> live/openapi -> call/edge)."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[3] / "gateway"


def _imports(path: Path) -> set[str]:
    """gateway.* modules a file imports at any level, type-checking-only imports excluded."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            if node.module == "gateway":
                out |= {f"gateway.{a.name}" for a in node.names}
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gateway")}
    return out


def test_no_import_cycle_in_the_gateway() -> None:
    graph: dict[str, set[str]] = {}
    for path in GATEWAY.rglob("*.py"):
        mod = ".".join(path.relative_to(GATEWAY.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[mod] = _imports(path)
    assert "gateway.call" in graph["gateway.live"] and "gateway.app" not in graph["gateway.live"]
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [])
