"""`make recipe-schema`: a JSON Schema of every registered family's recipe, written to
configs/schema/<kind>.json. The shipped recipes name theirs on their first line
(`# yaml-language-server: $schema=schema/clip.json`), so an editor with the YAML language server
(VS Code's YAML extension) completes the keys, shows each key's comment and flags an unknown key,
a wrong type or a value out of range as you type. The schema is made from the same dataclasses
the loader checks (pydantic's schema of them, with each key's comment as its description); the loader stays the judge (cross-field rules live only there)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import re
import tokenize
import typing
from pathlib import Path

from pydantic import TypeAdapter

from families.registry import FAMILIES

OUT = Path(__file__).resolve().parents[1] / "configs" / "schema"
_PRAGMA = re.compile(r"^(type:\s*ignore(\[[^\]]*\])?|noqa(:\s*[A-Z0-9, ]+)?)\s*(#\s*)?")  # for tools, not users


def _dataclasses(cls: type) -> list[type]:
    """`cls` and every dataclass its fields hold (through tuples, unions and optionals)."""
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        if dataclasses.is_dataclass(c) and isinstance(c, type) and c not in out:
            out.append(c)
            todo.extend(typing.get_type_hints(c).values())
        else:
            todo.extend(typing.get_args(c))
    return out


def _comments(cls: type) -> dict[str, str]:
    """Each field's trailing `# comment` in the class body (and its bases'): the key's description."""
    out: dict[str, str] = {}
    for c in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(c) or c is object:
            continue
        try:
            source = inspect.getsource(c)
        except (OSError, TypeError):
            continue
        name = None
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
                name = tok.string
            elif tok.type == tokenize.COMMENT and name:
                text = _PRAGMA.sub("", tok.string.lstrip("# ")).strip()
                if text:
                    out[name] = text
            elif tok.type in (tokenize.NEWLINE, tokenize.NL):
                name = None
    return out


def _constrain(schema: dict, cls: type) -> None:
    """Closed mappings and the comments as descriptions, on `cls`'s definition (pydantic gives the ranges)."""
    schema["additionalProperties"] = False
    comments = _comments(cls)
    for f in dataclasses.fields(cls):
        prop = schema["properties"].get(f.name)
        if prop is None:
            continue
        prop.pop("title", None)
        if f.name in comments:
            prop["description"] = comments[f.name]


def recipe_schema(family) -> dict:
    schema = TypeAdapter(family.recipe).json_schema()
    defs = schema.get("$defs", {})
    for cls in _dataclasses(family.recipe):
        target = schema if cls is family.recipe else defs.get(cls.__name__)
        if target is not None and "properties" in target:
            _constrain(target, cls)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{family.kind} recipe (made by `make recipe-schema` from the recipe's dataclasses)",
        **schema,
    }


def write_schemas(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, family in sorted(FAMILIES.items()):
        path = out / f"{kind}.json"
        path.write_text(json.dumps(recipe_schema(family), indent=1, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=str(OUT), help="folder of the <kind>.json schemas (default: configs/schema)")
    for path in write_schemas(Path(p.parse_args(argv).out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
