"""No import cycles among the project's modules (tasks/, tools/, flows/), and each layer imports only
downward: the stages (``tasks``) import neither the developer tools nor the flows, and the tools
(``tools``) do not import the flows.

Imports under ``if TYPE_CHECKING:`` are for type hints only and do not count; imports inside
functions do (they run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("tasks", "tools", "flows")
#: The packages each package may import besides itself: lower layers first.
MAY_IMPORT = {"tasks": set(), "tools": {"tasks"}, "flows": {"tasks", "tools"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST, known: set[str]) -> set[str]:
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    graph = {module_name(p): runtime_imports(ast.parse(p.read_text()), known) for p in files}
    for name, deps in graph.items():
        deps.discard(name)
        deps.difference_update(PACKAGES)  # a package's __init__ is not a cycle partner
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_each_layer_imports_only_downward() -> None:
    wrong = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        for dep in sorted(deps)
        if dep.split(".")[0] != name.split(".")[0] and dep.split(".")[0] not in MAY_IMPORT[name.split(".")[0]]
    ]
    assert not wrong, wrong


def test_the_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
