"""What code a workflow step runs, as a hash: part of the step's fingerprint, so a step reruns
when its code changed (a fixed loss reruns training and what follows it, not the sharding).

A step's code is the module its function is defined in plus the folders it names (`Step.code`;
`with_code` gives a recipe's steps theirs: `DATA_CODE` for a sharding step, `TRAIN_CODE` for a
step that trains, filters or evaluates). The hash is
over the Python files' paths and bytes, so it is the same on every machine with the same code,
whether or not the tree is a git checkout.
"""
from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_CODE = ("data", "infra")
TRAIN_CODE = ("training", "families", "models", "data", "infra")


def step_code(fn, code: tuple = ()) -> list[str]:
    """The paths (relative to the project root where they are inside it) of the code a step runs."""
    paths = set(code)
    try:
        src = Path(inspect.getsourcefile(fn)).resolve()
        paths.add(str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src))
    except (TypeError, OSError):   # a builtin or a lambda typed in a shell: its folders only
        pass
    return sorted(paths)


def code_hash(paths: list[str]) -> str:
    """sha256 over the Python files under `paths` (files or folders, relative to the project root
    or absolute): their relative paths and bytes."""
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


def with_code(steps: list) -> list:
    """A recipe's steps, each naming the folders of its code: `shard*` steps read and write data
    only; every other step trains or evaluates (and reads shards)."""
    for s in steps:
        s.code = s.code or (DATA_CODE if s.name.startswith("shard") else TRAIN_CODE)
    return steps
