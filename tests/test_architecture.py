"""The import graph points one way: no cycle between modules, and the core never imports `climate`.

Every import statement counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("manifold_aps", "climate")
CORE_ALLOWED_TO_IMPORT_CLIMATE = {"manifold_aps.cli"}  # the command line sits above both


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (resolved to the longest existing module name)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the packages
    assert cycles(graph) == []


def test_the_core_never_imports_climate():
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        if name.startswith("manifold_aps") and name not in CORE_ALLOWED_TO_IMPORT_CLIMATE
        for target in targets
        if target.split(".")[0] == "climate"
    )
    assert offenders == []


def test_era5_datasets_are_reached_through_entry_points():
    from manifold_aps.datasets import DATASETS, dataset_names

    assert "era5-uk" not in DATASETS and {"era5-uk", "era5-global"} <= set(dataset_names())


def test_one_engine_registry_feeds_the_command_line_and_the_climate_models():
    import climate.model
    from manifold_aps.cli import build_parser
    from manifold_aps.posterior.engines import (
        ENGINES,
        distilled_engines,
        engine_for_checkpoint,
        engines_for_checkpoint,
    )

    parser = build_parser()
    sub = next(
        a
        for a in parser._actions
        if a.dest == "command" or getattr(a, "choices", None) and "impute" in a.choices
    )
    choices = {
        name: next(a.choices for a in p._actions if a.dest == "engine")
        for name, p in sub.choices.items()
        if any(a.dest == "engine" for a in p._actions)
    }
    assert list(choices["impute"]) == list(ENGINES)
    assert list(choices["distill"]) == distilled_engines() == ["aps", "implicit", "avi"]
    assert climate.model.ENGINES == tuple(ENGINES)
    for spec in ENGINES.values():
        if spec.checkpoint_kind:  # the first engine of a kind is the default of its files
            assert spec in engines_for_checkpoint(spec.checkpoint_kind)
            assert engine_for_checkpoint(spec.checkpoint_kind).name in (spec.name, "dps")
    assert [s.name for s in engines_for_checkpoint("score-prior")] == ["dps", "daps"]
    assert engine_for_checkpoint("not-a-kind") is None
