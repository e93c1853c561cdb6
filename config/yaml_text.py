"""Recipe text as YAML: strict (a repeated key is refused; PyYAML would keep the last one), bounded
(size, nesting, values with aliases expanded: a "billion laughs" stops early), read only from a
regular file; every failure a ConfigError naming the file or the `--set`."""

from __future__ import annotations

import yaml

from config.errors import ConfigError
from infra.local_files import NotRegularFile, open_regular


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
