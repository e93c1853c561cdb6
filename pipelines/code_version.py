"""What code a workflow step runs, as a hash: part of the step's fingerprint, so a step reruns
when its code changed (a fixed loss reruns training and what follows it, not the sharding), and
only then: an edit to one family never marks another family's steps stale.

A step's code is the project modules it imports, followed through the project (read from their
`ast`, function-local imports included, imports under `if TYPE_CHECKING:` left out): those of the
module its function is defined in, and those of the modules defining the config classes in its
`config` and of the values its function captured (the pretrain step's recipe brings its family's
model, task and loss; the shard step captures the `data` section only). `Step.code` may name more
modules, files or folders. The hash is over the files' paths and bytes, so it is the same on
every machine with the same code, whether or not the tree is a git checkout.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import sys
from pathlib import Path
from typing import TypeGuard

ROOT = Path(__file__).resolve().parents[1]


def _file_of(module: str) -> Path | None:
    """The source file of project module `module` (None when it is not under the project root)."""
    base = ROOT.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    mod = sys.modules.get(module)  # e.g. a test module imported by its bare name
    f = Path(getattr(mod, "__file__", "") or "").resolve()
    if f.suffix != ".py" or not f.is_relative_to(ROOT):
        return None
    rel = f.relative_to(ROOT).parts
    return None if any(part.startswith(".") or part == "site-packages" for part in rel) else f


def _type_checking(node: ast.AST) -> TypeGuard[ast.If]:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST, package: str) -> set[str]:
    """Every module name an import in `tree` may refer to (a name imported from a module may be a
    submodule), outside `if TYPE_CHECKING:` blocks."""
    out: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


@functools.lru_cache(maxsize=None)
def _direct(module: str) -> tuple[str, ...]:
    """The project modules `module` imports directly (and the packages holding them)."""
    f = _file_of(module)
    if f is None:
        return ()
    package = module if f.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for name in _imported(ast.parse(f.read_text()), package):
        while name and _file_of(name) is None:
            name = name.rpartition(".")[0]
        parts = name.split(".") if name else []
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # a package's __init__ runs too
    found.discard(module)
    return tuple(sorted(m for m in found if _file_of(m) is not None))


def closure(modules) -> list[str]:
    """The project modules reachable from `modules` by import, themselves included."""
    seen: set[str] = set()
    parents = {".".join(m.split(".")[:i]) for m in modules for i in range(1, len(m.split(".")))}
    todo = [m for m in {*modules, *parents} if _file_of(m) is not None]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_direct(m))
    return sorted(seen)


def value_modules(*values) -> set[str]:
    """The modules defining what `values` hold: a function's own module and those of the values its
    closure captured (the recipe a step was made for, a `prepare` function), a class, the class and
    fields of a dataclass (a config), the items of a dict, list or tuple. Other objects (the training
    callbacks a caller passes in) are left out: they watch a step, they are not its code."""
    out: set[str] = set()
    stack, seen = list(values), set()
    while stack:
        v = stack.pop()
        if id(v) in seen or v is None or isinstance(v, (str, bytes, int, float, bool, Path)):
            continue
        seen.add(id(v))
        if hasattr(v, "__code__"):  # a function: its module and what it closed over
            out.add(getattr(v, "__module__", "") or "")
            stack.extend(c.cell_contents for c in (v.__closure__ or ()) if _filled(c))
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif isinstance(v, type):
            out.add(v.__module__)
        elif dataclasses.is_dataclass(v):  # a config (or a family's part): its class and its fields
            out.add(type(v).__module__)
            stack.extend(getattr(v, f.name) for f in dataclasses.fields(v))
        # any other object (a training callback a caller passes in, a tracker) observes the step:
        # not its code
    return out


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


def step_code(fn, code: tuple = (), config=None) -> list[str]:
    """The files (relative to the project root where they are inside it) of the code a step runs:
    what its function, the values it captured and its config's classes import."""
    named = {c for c in code if "/" not in c and _file_of(c) is not None}  # module names; the rest are paths
    files = {_file_of(m) for m in closure(value_modules(fn, config) | named)}
    paths = {str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in files if f}
    return sorted(paths | (set(code) - named))


def code_hash(paths: list[str]) -> str:
    """sha256 over the Python files `paths` (files or folders, relative to the project root or
    absolute): their relative paths and bytes."""
    h = hashlib.sha256()
    for rel in paths:
        p = Path(rel) if Path(rel).is_absolute() else ROOT / rel
        files = [p] if p.is_file() else sorted(p.rglob("*.py")) if p.is_dir() else []
        for f in files:
            if "__pycache__" in f.parts:
                continue
            h.update(f"{f.relative_to(p.parent) if p.is_dir() else p.name}\0".encode())
            h.update(f.read_bytes())
            h.update(b"\0")
        if not files:
            h.update(f"{rel}: missing\0".encode())
    return h.hexdigest()[:16]
