"""Imports point one way: no module imports itself back through others, and no folder does.

Every import statement counts, at module level or inside a function (an import deferred to
break a cycle is still a cycle in the design). ``costflux/__main__.py`` is the entry point
and is left out. Folders are each package of ``costflux`` (its root modules, ``core``, ``cli``,
``gateway``, ``cache``, ..., and ``schemas``, ``streams`` and ``agents``, which install as
``costflux.schemas``, ``costflux.streams`` and ``costflux.agents``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.paths import REPO

# The top-level folders that install inside the costflux package (pyproject.toml).
INSIDE_COSTFLUX = ("streams", "agents", "schemas")


def modules() -> dict[str, Path]:
    found = {}
    for root in ("costflux", *INSIDE_COSTFLUX):
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[0] != "costflux":
                parts = ("costflux", *parts)
            name = ".".join(parts).removesuffix(".__init__")
            if not name.endswith("__main__"):
                found[name] = path
    return found


def imported(path: Path, module: str) -> Iterator[str]:
    """The names ``path`` imports (a ``from x import y`` gives both ``x`` and ``x.y``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    found = modules()

    def owner(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        targets = {owner(name) for name in imported(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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


def folder(module: str, graph_modules: dict[str, Path]) -> str:
    parts = module.split(".")
    if parts[0] != "costflux":
        return parts[0]
    if graph_modules[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def test_cycles_are_found_where_there_are_some() -> None:
    # Guards the check itself: a graph with a cycle must not pass.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back() -> None:
    assert cycles(import_graph()) == []


def test_no_folder_imports_itself_back() -> None:
    found = modules()
    graph = import_graph()
    folders: dict[str, set[str]] = {}
    examples: dict[tuple[str, str], str] = {}
    for module, targets in graph.items():
        source = folder(module, found)
        for target in targets:
            destination = folder(target, found)
            if destination != source:
                folders.setdefault(source, set()).add(destination)
                examples.setdefault((source, destination), f"{module} -> {target}")
    for name in list(folders):
        for destination in folders[name]:
            folders.setdefault(destination, set())
    bad = cycles(folders)
    shown = [[examples[(a, b)] for a in group for b in group if (a, b) in examples]
             for group in bad]
    assert not bad, f"folders that import each other: {shown}"


def test_nothing_imports_the_folders_by_their_top_level_names() -> None:
    # ``import streams`` works in a checkout only, as a second copy of costflux.streams.
    wrong = sorted(
        f"{path.relative_to(REPO)}: {name}"
        for path in [*modules().values(), *REPO.glob("tests/**/*.py"), *REPO.glob("bench/*.py")]
        for name in imported(path, "")
        if name.split(".")[0] in INSIDE_COSTFLUX
    )
    assert wrong == []
