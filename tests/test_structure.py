"""The code's shape, read from its `ast`: no import cycle between modules, imports only go down the
layers (function-local imports count too), no module loaded by name (importlib, `__import__`, a
"package.module" string), no source file over 300 lines and no function of 60 lines or more (tests/ and bench/
aside).

The layers, lowest first: config and infra; data and models; training; the workflow engine and what
every family shares (pipelines/); the families (families/); and the commands that see every
family (the CLI, recipe loading, export, pull, the recipe schemas, the memory estimate)."""

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "config": 0,
    "infra": 0,
    "data": 1,
    "models": 1,
    "training": 2,
    "pipelines": 3,
    "families": 4,
    "pipelines.cli": 5,
    "pipelines.config": 5,
    "pipelines.export": 5,
    "pipelines.pull": 5,
    "pipelines.memory": 5,
    "pipelines.schema": 5,
    "pipelines.mlflow_ui": 5,
}
PACKAGES = ("config", "infra", "data", "models", "training", "pipelines", "families")


def layer(module: str) -> int:
    """The layer of the longest LAYER entry `module` is in."""
    parts = module.split(".")
    return next(LAYER[".".join(parts[:i])] for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in LAYER)


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
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
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
                cycles.append(path[path.index(m) :] + [m])
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
            if layer(name) < layer(d):
                upward.add(f"{name} ({layer(name)}) -> {d} ({layer(d)})")
    assert not upward, sorted(upward)


# "pipelines.clip", "families.clip.hf:export_hf": a module named in a string, loaded behind the graph's back
MODULE_STRING = re.compile(rf"^({'|'.join(PACKAGES)})(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


# a command line, not a load: the Ray job's entrypoint is `python -m pipelines.cli run ...`
COMMAND_LINES = {("infra.jobs", "pipelines.cli")}


def test_no_module_is_loaded_by_name():
    found = []
    modules = _modules()
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.split(".")[0] == "importlib" for m in mods):
                    found.append(f"{name}:{node.lineno}: imports importlib")
            elif isinstance(node, ast.Name) and node.id == "__import__":
                found.append(f"{name}:{node.lineno}: __import__")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and MODULE_STRING.match(node.value)
                and node.value.partition(":")[0] in modules
                and (name, node.value) not in COMMAND_LINES
            ):
                found.append(f"{name}:{node.lineno}: the string {node.value!r} names a module")
    assert not found, found


def test_the_checks_see_what_they_look_for(tmp_path):
    # the string rule matches a module reference and leaves a dotted recipe key alone
    assert MODULE_STRING.match("pipelines.workflow") and MODULE_STRING.match("families.clip.hf:export_hf")
    assert not MODULE_STRING.match("train.init_from") and "data.source" not in _modules()
    assert layer("pipelines.cli") == 5 and layer("pipelines.workflow") == 3 and layer("families.clip.task") == 4


def test_files_and_functions_stay_small():
    big_files, long_functions = [], []
    for f in _modules().values():
        text = f.read_text()
        if len(text.splitlines()) > 300:
            big_files.append(f"{f.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 60:
                long_functions.append(f"{f.relative_to(ROOT)}:{node.name} {node.end_lineno - node.lineno + 1} lines")
    assert not big_files, big_files
    assert not long_functions, long_functions


# third-party packages imported inside functions, and why: slow to import or only needed on one path
HEAVY = {
    "ray": "seconds to import; the driver starts it only to run a workflow",
    "mlflow": "seconds to import; only where a run is tracked or a model served",
    "deepspeed": "only under train.strategy deepspeed",
    "transformers": "only to export to or start from a transformers folder",
    "safetensors": "only for the open_clip, timm and transformers formats",
    "pycocoevalcap": "only BLIP's captioning metrics",
    "boto3": "only for s3:// storage",
    "botocore": "only for s3:// storage",
    "pyarrow": "only for Parquet manifests and the large-job dedup",
    "pandas": "only in the MLflow pyfunc and Parquet reads",
    "matplotlib": "only to draw MLflow pictures",
    "webdataset": "only where shards are read",
    "tokenizers": "only to train or load the text BPE",
    "simplejpeg": "the libjpeg-turbo path, optional",
    "psutil": "only for lease liveness checks",
    "tqdm": "only for progress bars",
}


@functools.lru_cache(maxsize=None)
def _heavy_at_load(name: str) -> bool:
    """Whether importing project module `name` imports a HEAVY package (its top-level imports, followed)."""
    modules = _modules()
    tree = ast.parse(modules[name].read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            targets = [a.name for a in n.names] if isinstance(n, ast.Import) else []
            if isinstance(n, ast.ImportFrom) and n.level == 0:
                targets = [n.module or ""] + [f"{n.module}.{a.name}" for a in n.names]
            for t in targets:
                if t.split(".")[0] in HEAVY:
                    return True
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and _heavy_at_load(t):  # the graph has no cycle (test above)
                    return True
    return False


def test_imports_sit_at_the_top_unless_they_load_a_heavy_package():
    modules, found = _modules(), []
    for name, f in modules.items():
        tree = ast.parse(f.read_text())
        # module level, including `if TYPE_CHECKING:` and `if __name__ == "__main__":` blocks
        top = {id(n) for n in tree.body} | {id(x) for n in tree.body if isinstance(n, ast.If) for x in n.body}
        for n in ast.walk(tree):
            if not isinstance(n, (ast.Import, ast.ImportFrom)) or id(n) in top or getattr(n, "level", 0):
                continue
            targets = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            for t in targets:
                project = next((m for m in (t, *(f"{t}.{a.name}" for a in n.names)) if m in modules), None)
                while project is None and t and t.split(".")[0] in PACKAGES:
                    t = t.rpartition(".")[0]
                    project = t if t in modules else None
                if t.split(".")[0] in HEAVY or (project and _heavy_at_load(project)):
                    continue
                found.append(f"{name}:{n.lineno}: import {ast.unparse(n)[:60]} inside a function")
    assert not found, found
