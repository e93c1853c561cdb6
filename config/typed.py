"""Plain data (parsed YAML) checked into frozen dataclasses: types, ranges and cross-field rules.

- a field's type is its annotation (int, float, str, bool, Literal, tuple, Optional, a nested
  dataclass, a union of dataclasses tagged by their `kind` field);
- a field's range is its `bounded(default, ge=, gt=, le=, lt=)` (checked on every item of a tuple);
- a dataclass with a `problems()` method lists the rules between its fields it breaks, as
  (key, message, *other keys involved);
- YAML with a repeated key, or an empty document, is refused (PyYAML would keep the last one, or
  give None).

Every error is a ConfigError whose message starts with the dotted key, and whose `key` names it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

import yaml

from infra.local_files import NotRegularFile, open_regular
from infra.uris import short


class ConfigError(ValueError):
    """`key`: the dotted key at fault; `keys`: every key a cross-field rule involves."""

    def __init__(self, message: str, key: str = "", keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.key = key
        self.keys = keys or ((key,) if key else ())


def bounded(default: Any, *, ge=None, gt=None, le=None, lt=None) -> Any:
    """A dataclass field whose value (each item, for a tuple) must lie in the given range."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"range": limits})


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_RANGE_TEXT = {"ge": ">= {}", "gt": "> {}", "le": "<= {}", "lt": "< {}"}
_RANGE_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_range(value: Any, limits: dict, where: str) -> None:
    for item in value if isinstance(value, tuple) else (value,):
        bad = [k for k, bound in limits.items() if not _RANGE_OK[k](item, bound)]
        if bad:
            want = " and ".join(_RANGE_TEXT[k].format(limits[k]) for k in limits)
            raise ConfigError(f"{where}: must be {want}, got {short(item)}", where)


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}", where)
        return build(typing.cast(type, tp), value, where)  # an annotation: a dataclass type, not an instance
    if origin in (Union, types.UnionType):
        return _union(typing.get_args(tp), value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {short(value)} is not one of {list(choices)}", where)
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}", where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}", where)
        return tuple(coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    return _scalar(tp, value, where)


def _union(args: tuple, value: Any, where: str) -> Any:
    """A value of one of `args`: None for an Optional, the config class a dict's `kind` names for
    a union of tagged config classes, else the first type the value fits."""
    if value is None and type(None) in args:
        return None
    kinds = {
        a.__dataclass_fields__["kind"].default: a
        for a in args
        if dataclasses.is_dataclass(a) and "kind" in a.__dataclass_fields__
    }
    if kinds and isinstance(value, dict):  # a tagged union: `kind` picks the config class
        kind = value.get("kind", next(iter(kinds)))
        if kind not in kinds:
            raise ConfigError(f"{where}.kind: {short(kind)} is not one of {list(kinds)}", f"{where}.kind")
        return build(typing.cast(type, kinds[kind]), value, where)
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return coerce(a, value, where)
        except ConfigError as e:
            errors.append(e)
    raise errors[0] if errors else ConfigError(f"{where}: invalid value {short(value)}", where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {short(value)}", where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}", where)
        return value
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads `5e-4` as a string; it means a number here
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {short(value)}", where)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: expected a finite number, got {short(value)}", where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short(value)}", where)
        return value
    raise ConfigError(f"{where}: unsupported type {tp}", where)


def closest_key(key: str, known) -> str | None:
    """The known key a typo most likely meant: the same letters without '_' and case, else the
    closest by difflib's ratio (>= 0.75: `learning_rate` is not taken for `lr`)."""
    import difflib

    flat = {n.replace("_", "").lower(): n for n in known}
    if key.replace("_", "").lower() in flat:
        return flat[key.replace("_", "").lower()]
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def build(cls: type, values: dict, where: str) -> Any:
    """An instance of dataclass `cls` from `values`: unknown keys, wrong types, values out of range
    and broken cross-field rules (`problems()`) are ConfigErrors naming the dotted key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            path = path if len(path) <= 80 else short(path)
            hint = (
                f" (did you mean '{close}'?)"
                if (close := closest_key(str(key), fields))
                else f"; known keys: {sorted(fields)}"
            )
            raise ConfigError(f"unknown key '{path}'{hint}", path)
        kwargs[key] = coerce(hints[key], value, path)
        if fields[key].metadata.get("range"):
            _check_range(kwargs[key], fields[key].metadata["range"], path)
    obj = cls(**kwargs)
    for key, message, *others in obj.problems() if hasattr(obj, "problems") else ():
        path = f"{where}.{key}" if where else key
        raise ConfigError(f"{path}: {message}", path, (path, *(f"{where}.{o}" if where else o for o in others)))
    return obj


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key '{key}' (first at line {seen[key] + 1}, again at line {key_node.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


MAX_YAML_CHARS = 1 << 20  # a recipe (or a --set value) longer than this is refused unread
MAX_YAML_DEPTH = 32
MAX_YAML_VALUES = 100_000  # values after aliases are expanded: a "billion laughs" stops here


def _expanded_size(node, depth: int, memo: dict, label: str) -> int:
    """Values in `node` with every alias expanded (memoised: linear in the document)."""
    if depth > MAX_YAML_DEPTH:
        raise ConfigError(f"{label}: nested deeper than {MAX_YAML_DEPTH} levels")
    if id(node) in memo:
        return memo[id(node)]
    n = 1
    if isinstance(node, yaml.MappingNode):
        n += sum(
            _expanded_size(k, depth + 1, memo, label) + _expanded_size(v, depth + 1, memo, label) for k, v in node.value
        )
    elif isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(v, depth + 1, memo, label) for v in node.value)
    memo[id(node)] = n
    if n > MAX_YAML_VALUES:
        raise ConfigError(f"{label}: more than {MAX_YAML_VALUES} values (aliases expanded)")
    return n


def safe_yaml(text: str, label: str):
    """The value of a YAML document (strict: no repeated key), bounded in size, depth and expanded
    values; every failure is a ConfigError naming `label`."""
    if len(text) > MAX_YAML_CHARS:
        raise ConfigError(f"{label}: {len(text)} characters, more than {MAX_YAML_CHARS} (not read)")
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, 0, {}, label)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{label}: nested too deeply") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{label}: not valid YAML: {str(e)[:500]}") from None
    finally:
        loader.dispose()


def read_recipe_text(path) -> str:
    """A recipe file's text: a regular file (a FIFO or device is refused, never waited on) of at
    most MAX_YAML_CHARS bytes read."""
    try:
        with open_regular(path) as f:
            data = f.read(MAX_YAML_CHARS + 1)
    except NotRegularFile as e:
        raise ConfigError(f"{path}: not a regular file ({e.kind})") from None
    if len(data) > MAX_YAML_CHARS:
        raise ConfigError(f"{path}: more than {MAX_YAML_CHARS} bytes (not read)")
    return data.decode("utf-8")


def load_yaml(text: str, label: str) -> dict:
    """The top-level mapping of a YAML document; an empty document, a non-mapping or a repeated key
    is a ConfigError naming `label`."""
    raw = safe_yaml(text, label)
    if raw is None:
        raise ConfigError(f"{label}: the recipe is empty (it needs at least a `name:`; see configs/)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: the top level must be a mapping")
    return raw
