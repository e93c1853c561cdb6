"""The code's shape, read from its `ast`: no import cycle between modules, imports only go down the
layers (config and infra below all, then data and models, training, families, pipelines; function-local
imports count too), no source file over 300 lines and no function over 80 (tests/ and bench/ aside)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"config": 0, "infra": 0, "data": 1, "models": 1, "training": 2, "families": 3, "pipelines": 4}
PACKAGES = tuple(LAYER)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(f: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `f` imports (at any depth: function-local imports count too)."""
    out = set()
    package = name if f.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(f.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(f, name, set(mods)) for name, f in mods.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(n, path):
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycles.append(path[path.index(m):] + [m])
            elif m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def test_imports_go_down_the_layers():
    upward = set()
    for name, deps in _graph().items():
        for d in deps:
            a, b = name.split(".")[0], d.split(".")[0]
            if LAYER[a] < LAYER[b]:
                upward.add((a, b, f"{name} -> {d}"))
    assert not upward, sorted(x[2] for x in upward)


def test_files_and_functions_stay_small():
    big_files, long_functions = [], []
    for f in _modules().values():
        text = f.read_text()
        if len(text.splitlines()) > 300:
            big_files.append(f"{f.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{f.relative_to(ROOT)}:{node.name} {node.end_lineno - node.lineno + 1} lines")
    assert not big_files, big_files
    assert not long_functions, long_functions
