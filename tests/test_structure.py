"""The layering the README promises, read from the source (imports under TYPE_CHECKING excepted):

- no import cycle among the modules of each package (module-level and function-level imports);
- `model/` never imports `server/`, `cli/`, `tools/`, fastapi or pydantic_settings;
- `server/` never imports `cli/` or `tools/`; `cli/` is the only package that imports all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "server", "cli", "tools")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str) -> set[str]:
    """Absolute names of the modules `path` imports at run time (any depth, any scope)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(p): p
        for package in PACKAGES
        for p in (ROOT / package).rglob("*.py")
        if (ROOT / package).is_dir()
    }
    return {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]], package: str) -> list[str] | None:
    nodes = {n for n in graph if n == package or n.startswith(package + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node] & nodes):
            if dep.startswith(node + "."):
                continue  # a package importing its own submodule is not a cycle
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    assert _cycle(_graph(), package) is None


def _imports_of(package: str) -> set[str]:
    return {m for p in (ROOT / package).rglob("*.py") for m in _imports(p, _module_name(p))}


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("model", ("server", "cli", "tools", "fastapi", "pydantic_settings", "uvicorn")),
        ("server", ("cli", "tools")),
    ],
)
def test_imports_run_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    bad = sorted(m for m in _imports_of(package) if m.split(".")[0] in forbidden)
    assert bad == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"p": set(), "p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p"}}
    assert _cycle(graph, "p") == ["p.a", "p.b", "p.c", "p.a"]
    assert _cycle({"p": {"p.a"}, "p.a": set()}, "p") is None
