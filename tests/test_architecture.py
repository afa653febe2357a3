"""The package's shape, checked: dependencies point one way (no import cycle between sslguard modules or
subpackages, function-level imports counted), no benchmark code inside the package, short files and
functions, docstrings that describe rather than log measurements (numbers live in benchmarks/*.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sslguard"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 120
MAX_DOC_DECIMALS = 10
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _unit(module: str) -> str:
    """The unit a module belongs to: ``sslguard.<top-level module or subpackage>``."""
    return ".".join(module.split(".")[:2])


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """sslguard modules imported anywhere in ``path`` (module level and inside functions)."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in known}
    return out


def _unit_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        deps = {_unit(d) for d in _imported(m, p, set(mods)) if d != "sslguard"}
        graph.setdefault(_unit(m), set()).update(deps - {_unit(m)})
    graph.pop("sslguard", None)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One dependency cycle of ``graph`` (as a path), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_no_import_cycle_between_modules_or_subpackages():
    graph = _unit_graph()
    assert "sslguard.detectors" in graph and "sslguard.pipeline" in graph  # the scan sees the package
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_between_single_modules():
    """Finer still: no cycle between modules either, package ``__init__`` files included (a registry's
    lookups live in the package that registers, never in a module that would import its package back)."""
    mods = _modules()
    graph = {m: {d for d in _imported(m, p, set(mods)) if d != m} for m, p in mods.items()}
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# The README's layout picture, bottom up: a unit imports only from its own row or rows before it.
LAYERS = [
    ["utils"],
    ["data", "embed"],
    ["models"],
    ["train", "cluster", "knn", "cam", "erasers", "poison_classifier", "backdoor", "metrics", "plausibility", "sanitize"],
    ["detectors"],
    ["config"],
    ["report"],
    ["repair", "testing"],
    ["pipeline"],
    ["cli"],
]


def test_dependencies_follow_the_readme_layers():
    rank = {f"sslguard.{u}": i for i, row in enumerate(LAYERS) for u in row}
    graph = _unit_graph()
    assert set(graph) <= set(rank), f"a unit missing from LAYERS (and the README): {set(graph) - set(rank)}"
    upward = [f"{u} -> {v}" for u, deps in graph.items() for v in deps if rank[v] > rank[u]]
    assert not upward, upward


def test_no_benchmark_code_in_the_package():
    assert not (PKG / "bench").exists()
    for p in PKG.rglob("*.py"):
        assert "import benchmarks" not in p.read_text() and "from benchmarks" not in p.read_text(), p


def test_files_and_functions_are_short():
    long_files, long_functions = [], []
    for p in PKG.rglob("*.py"):
        text = p.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{p.relative_to(PKG)}: {text.count(chr(10))}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(PKG)}:{node.name}: {n}")
    assert not long_files, long_files
    assert not long_functions, long_functions


def test_docstrings_hold_no_lab_notebook():
    heavy = []
    for p in PKG.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False) or ""
                n = len(DECIMAL.findall(doc))
                if n > MAX_DOC_DECIMALS:
                    heavy.append(f"{p.relative_to(PKG)}:{getattr(node, 'name', '<module>')}: {n}")
    assert not heavy, heavy
