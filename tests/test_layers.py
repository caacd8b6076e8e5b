"""The house rules of the package, checked on its source: imports point one way (down the layers
below, no cycle), and no function is longer than 80 lines or takes more than 8 parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "instantft"

#: each top-level module or package of instantft, by layer: a module may import its own layer or
#: the ones below it, never one above (what a concept is built from is below it)
LAYERS = [
    {"errors", "settings", "progress", "machine", "tables", "digest", "usercode"},
    {"nf4", "fileio", "records", "extras"},
    {"cache", "models", "data"},
    {"backbones", "adapters", "training", "fixedpoint"},
    {"engine"},
    {"methods"},
    {"analysis", "run", "pretrain", "bench", "reproduce"},
    {"api", "device", "stream", "demo", "fleet"},
    {"cli", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES, MAX_PARAMS = 80, 8


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(SRC.parent).with_suffix("").parts): p for p in SRC.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import of the package, lazy ones too."""
    out = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("instantft."):
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("instantft.")]
            for name in names:
                src, dst = _unit(module.removesuffix(".__init__")), _unit(name)
                if src and dst and src != dst:
                    out.append((src, dst, f"{path.relative_to(SRC.parent)}:{node.lineno}"))
    return out


def test_every_unit_has_a_layer():
    units = {_unit(m.removesuffix(".__init__")) for m in _modules()} - {""}
    assert units <= set(LAYER), f"give these a layer in LAYERS: {sorted(units - set(LAYER))}"


def test_imports_point_down():
    upward = [f"{w}: {a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]})"
              for a, b, w in _imports() if a in LAYER and b in LAYER and LAYER[b] > LAYER[a]]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for a, b, _ in _imports():
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            n = todo.pop()
            for m in graph.get(n, ()):
                if m == goal:
                    return True
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, cycles


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_functions_are_short_and_take_few_parameters(path: Path):
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        a = node.args
        params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]
        count = len(params) - (1 if params and params[0].arg in ("self", "cls") else 0)
        lines = (node.end_lineno or node.lineno) - node.lineno + 1
        if lines > MAX_LINES or count > MAX_PARAMS:
            bad.append(f"{node.name} (line {node.lineno}): {lines} lines, {count} parameters")
    assert not bad, bad
