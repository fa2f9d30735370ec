"""The package layout's rules, read from the source (no import is executed): models/ depends on
tasks/ only through tasks.core, no private helper is imported across modules, module-level
imports form no cycle, and imports sit at module top except where start-up time is measured to
need them: the CLI's commands, and any other import marked `# lazy: <measured reason>`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tasks", "models", "expectations")
# Where an import inside a function is allowed, and why (see the comment in each file).
LAZY_ALLOWED = {"tasks/cli.py": "one command's imports only: ~9.7 s for all at start-up vs ~0.5 s"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, name: str) -> str:
    """The project module an `from module import name` depends on (the submodule when name is one)."""
    return f"{module}.{name}" if f"{module}.{name}" in MODULES else module


def _imports(path: Path, top_level_only: bool) -> list[tuple[str, str, int]]:
    """(imported module, imported name, line) of the project imports in a file."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [(_resolve(node.module, a.name), a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
    return found


def test_models_depend_on_tasks_only_through_core() -> None:
    edges = [
        f"{name} -> {target} (line {line})"
        for name, path in MODULES.items() if name.startswith("models")
        for target, _, line in _imports(path, top_level_only=False)
        if target.startswith("tasks") and not target.startswith("tasks.core")
    ]
    assert not edges, "models/ imports tasks/ beyond tasks.core:\n" + "\n".join(edges)


def test_no_private_name_imported_across_modules() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line} imports {imported}.{name}"
        for path in list(MODULES.values()) + sorted((REPO / "dags").glob("*.py")) + sorted((REPO / "tests").glob("*.py"))
        for imported, name, line in _imports(path, top_level_only=False)
        if name.startswith("_")
    ]
    assert not found, "\n".join(found)


def test_module_imports_form_no_cycle() -> None:
    graph = {name: {t for t, _, _ in _imports(path, top_level_only=True) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_imports_at_module_top() -> None:
    nested = []
    for path in MODULES.values():
        rel = str(path.relative_to(REPO))
        if rel in LAZY_ALLOWED:
            continue
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested += [f"{rel}:{sub.lineno}" for sub in ast.walk(node)
                           if isinstance(sub, (ast.Import, ast.ImportFrom)) and "# lazy:" not in lines[sub.lineno - 1]]
    assert not nested, "imports inside functions:\n" + "\n".join(nested)
