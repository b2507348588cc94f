"""The package's layout: layers import only downwards, no cycles, short functions, and one
home for what the project writes once (the W&B run, the project root)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "src" / "microrec"
# bottom to top: a module imports from its own layer or the ones below (docs/development.md)
LAYERS = (
    ("microrec", "microrec.errors", "microrec.files", "microrec.config"),
    ("microrec.data",),
    ("microrec.metrics",),
    ("microrec.models",),
    ("microrec.runs",),
    ("microrec.reports",),
)
MAX_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if module in names or any(module.startswith(n + ".") for n in names if n != "microrec"):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def imports(path: Path) -> set[str]:
    """The microrec modules a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("microrec")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("microrec"):
            for a in node.names:  # `from microrec.data import schema` imports a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py")
                          .is_file() else node.module)
    return found


def modules() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_imports_only_from_its_layer_or_below():
    upward = [f"{m} -> {i}" for m, found in modules().items() for i in found
              if layer(i) > layer(m)]
    assert not upward


def test_no_import_cycles():
    graph = modules()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph.get(module, ())):
            if other == module or other not in graph:
                continue
            assert state.get(other) != 1, " -> ".join([*path, module, other])
            if other not in state:
                visit(other, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_no_function_is_longer_than_max_lines():
    long = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)"
            for p in sorted((ROOT / "src").rglob("*.py"))
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := node.end_lineno - node.lineno + 1) > MAX_LINES]
    assert not long


def test_one_module_opens_wandb_runs_and_none_finds_the_project_by_its_own_path():
    sources = {p: p.read_text() for p in sorted((ROOT / "src").rglob("*.py"))}
    assert [p.relative_to(PACKAGE) for p, text in sources.items()
            if "wandb.init(" in text] == [Path("runs/tracking.py")]
    assert not [p for p, text in sources.items() if "__file__).resolve().parents" in text
                or "__file__).parents" in text]
