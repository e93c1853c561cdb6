"""Plain data (parsed YAML) checked into frozen config classes, on pydantic v2.

- A config class is a frozen pydantic dataclass (`@config_class`) refusing unknown keys; a field's
  type is its annotation (int, `Float`, str, bool, Literal, tuple, Optional, a nested config class)
  and its range is declared on it: `bounded(default, ge=, gt=, le=, lt=)` (pydantic's `Field`), or
  on a tuple's item type (`Annotated[Float, Field(ge=0.0, lt=1.0)]`).
- Recipe data is validated strictly, as JSON is (`parse`): an integer field takes no `2.0` nor
  `"2"`, a number no `true`; lists become tuples; a `Float` also takes `5e-4` written without a
  dot, which YAML 1.1 (PyYAML) reads as a string. Code building a config directly is trusted and
  validated in pydantic's lax mode.
- A class's `problems()` lists the rules between its fields it breaks, as (key, message, *other
  keys involved); they are checked once the whole tree is built, innermost first.

Every error is a ConfigError whose message starts with the dotted key (`train.lr: must be > 0.0,
got -1.0`, `unknown key 'train.epohcs' (did you mean 'epochs'?)`) and whose `key` names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from typing import Annotated, Any

import annotated_types as at
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from config.errors import ConfigError
from config.yaml_text import MAX_YAML_CHARS, load_yaml, read_recipe_text, safe_yaml
from infra.uris import short

__all__ = [
    "ConfigError",
    "Float",
    "bounded",
    "build",
    "closest_key",
    "config_class",
    "load_yaml",
    "read_recipe_text",
    "safe_yaml",
    "MAX_YAML_CHARS",
]

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def scientific(value: Any) -> Any:
    """`5e-4` as a number: YAML 1.1 (PyYAML) reads it as a string; it means a number here."""
    return float(value) if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()) else value


# a number field; a tuple's items in a range put the bounds before the `5e-4` reading, so the JSON
# Schema shows them: Annotated[float, Field(ge=0.0, lt=1.0), BeforeValidator(scientific)]
Float = Annotated[float, BeforeValidator(scientific)]


CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, field_specifiers=(Field, dataclasses.field))
def config_class(cls: type[_T]) -> type[_T]:
    """A frozen pydantic dataclass refusing unknown keys: every recipe section and model config."""
    return typing.cast("type[_T]", _pydantic_dataclass(cls, frozen=True, config=CONFIG))


def bounded(default: Any, *, ge=None, gt=None, le=None, lt=None) -> Any:
    """A field with a default whose value must lie in the given range (pydantic's Field)."""
    return Field(default, ge=ge, gt=gt, le=le, lt=lt)


def closest_key(key: str, known) -> str | None:
    """The known key a typo most likely meant: the same letters without '_' and case, else the
    closest by difflib's ratio (>= 0.75: `learning_rate` is not taken for `lr`)."""
    flat = {n.replace("_", "").lower(): n for n in known}
    if key.replace("_", "").lower() in flat:
        return flat[key.replace("_", "").lower()]
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.75)
    return close[0] if close else None


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def build(cls: type, values: Any, where: str) -> Any:
    """An instance of config class `cls` from plain data: unknown keys, wrong types, values out of
    range and broken cross-field rules (`problems()`) are ConfigErrors naming the dotted key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}", where)
    try:
        text = json.dumps(values, default=str)  # YAML dates and the like: as the text they were written as
        obj = _adapter(cls).validate_json(text, strict=True)
    except ValidationError as e:
        raise _config_error(cls, e.errors()[0], where) from None
    _check_problems(obj, where)
    return obj


def _check_problems(obj: Any, where: str) -> None:
    """Every config class's cross-field rules in the tree under `obj`, innermost first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_problems(value, f"{where}.{f.name}" if where else f.name)
    for key, message, *others in obj.problems() if hasattr(obj, "problems") else ():
        path = f"{where}.{key}" if where else key
        raise ConfigError(f"{path}: {message}", path, (path, *(f"{where}.{o}" if where else o for o in others)))


def _dotted(where: str, loc: tuple) -> str:
    out = where
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else str(part))
    return out


def _field_type(cls: type, loc: tuple) -> tuple[Any, type | None]:
    """(the annotation at `loc` under config class `cls`, the config class holding its last key)."""
    tp: Any = cls
    owner: type | None = None
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else (args[part] if part < len(args) else Any)
        elif dataclasses.is_dataclass(tp):
            owner = typing.cast(type, tp)
            tp = typing.get_type_hints(owner, include_extras=True).get(part, Any)
        else:
            return Any, owner
    return tp, owner


def _unwrap(tp: Any) -> Any:
    """`tp` without Annotated and Optional wrappers."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _limits(cls: type, loc: tuple) -> dict[str, Any]:
    """The declared bounds of the value at `loc` (a field, or a tuple's item)."""
    tp, owner = _field_type(cls, loc)
    metadata: list = []
    if typing.get_origin(tp) is Annotated:
        metadata += list(typing.get_args(tp)[1:])
    name = next((p for p in reversed(loc) if isinstance(p, str)), None)
    if owner is not None and name and not isinstance(loc[-1], int):
        info = getattr(owner, "__pydantic_fields__", {}).get(name)
        metadata += list(info.metadata) if info else []
    flat = [x for m in metadata for x in (m.metadata if hasattr(m, "metadata") else [m])]  # a Field in Annotated
    bounds = (("ge", at.Ge), ("gt", at.Gt), ("le", at.Le), ("lt", at.Lt))
    return {k: getattr(m, k) for k, c in bounds for m in flat if isinstance(m, c)}


_RANGE_TEXT = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}"}
_TYPE_TEXT = {"int": "an integer", "float": "a number", "bool": "true/false", "string": "a string"}


def _config_error(cls: type, err: Any, where: str) -> ConfigError:
    """pydantic's first error as ours: the dotted key, what was expected, what was given."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    key = _dotted(where, loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        _, owner = _field_type(cls, loc)
        known = [f.name for f in dataclasses.fields(owner)] if owner else []
        key = key if len(key) <= 80 else short(key)
        close = closest_key(str(loc[-1]), known)
        hint = f" (did you mean '{close}'?)" if close else f"; known keys: {sorted(known)}"
        return ConfigError(f"unknown key '{key}'{hint}", key)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        key = _dotted(where, tuple(p for p in loc if not isinstance(p, int)))  # a tuple's items: the field
        limits = _limits(cls, loc)
        shown = float(typing.cast(float, value)) if _unwrap(_field_type(cls, loc)[0]) is float else value
        want = " and ".join(_RANGE_TEXT[k].format(b) for k, b in limits.items())
        return ConfigError(f"{key}: must be {want}, got {short(shown)}", key)
    return ConfigError(f"{key}: {_expected(cls, loc, kind, value, err)}", key)


def _expected(cls: type, loc: tuple, kind: str, value: Any, err: dict) -> str:
    base = kind.split("_")[0]
    if kind == "finite_number":
        return f"expected a finite number, got {short(value)}"
    if kind.endswith(("_type", "_parsing", "_from_float")) and base in _TYPE_TEXT:
        return f"expected {_TYPE_TEXT[base]}, got {short(value)}"
    if kind == "literal_error":
        choices = typing.get_args(_unwrap(_field_type(cls, loc)[0]))
        return f"{short(value)} is not one of {list(choices)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {type(value).__name__}"
    if kind in ("dataclass_type", "dict_type", "model_type"):
        return f"expected a mapping, got {type(value).__name__}"
    if kind in ("missing", "too_short", "too_long") and loc and isinstance(loc[-1], int):
        field_type = _unwrap(_field_type(cls, loc[:-1])[0])
        return (
            f"expected {len(typing.get_args(field_type))} items, got {len(value) if hasattr(value, '__len__') else '?'}"
        )
    return f"{err['msg']}, got {short(value)}"
