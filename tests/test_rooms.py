"""The rooms of ``sesahand`` (its top-level modules and packages, see the room map in
``sesahand/__init__.py``) import each other without a cycle, counting imports made inside
functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sesahand"


def _room(parts: tuple[str, ...]) -> str | None:
    """The room of a module path below ``sesahand`` (``("hands", "types")`` -> ``"hands"``)."""
    return parts[0] if parts and parts[0] not in ("__init__", "__main__") else None


def _imported_modules(path: Path) -> set[tuple[str, ...]]:
    """Module paths below ``sesahand`` that the file imports (relative or absolute), each a
    tuple of names; ``from .x import y`` yields ``("x",)`` and ``("x", "y")`` (y may be a module)."""
    package = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(tuple(a.name.split("."))[1:] for a in node.names if a.name.split(".")[0] == "sesahand")
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        names = tuple(node.module.split(".")) if node.module else ()
        if node.level:
            if node.level - 1 > len(package):
                continue  # above sesahand
            base = package[:len(package) - (node.level - 1)] + names
        elif names[:1] == ("sesahand",):
            base = names[1:]
        else:
            continue
        found.add(base)
        found.update(base + (a.name,) for a in node.names)
    return found


def room_graph() -> dict[str, set[str]]:
    """Room -> the other rooms it imports."""
    rooms = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path.relative_to(PACKAGE).with_suffix("").parts)
        if room is None:
            continue
        imported = {_room(m) for m in _imported_modules(path)}
        graph.setdefault(room, set()).update(r for r in imported if r in rooms and r != room)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_room_graph_sees_relative_and_function_imports():
    graph = room_graph()
    assert "camera" in graph["hands"]  # hands.types: from ..camera import Camera
    assert "hands" in graph["render"]
    assert "io" in graph["hands"]


@pytest.mark.parametrize("room", ["hands", "camera"])
def test_base_rooms_do_not_import_render(room):
    assert "render" not in room_graph().get(room, set())


def test_rooms_import_graph_has_no_cycle():
    graph = room_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "rooms import each other in a cycle: " + " -> ".join(cycle)
