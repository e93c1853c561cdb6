"""Recipe files (YAML) validated into typed, frozen config objects: the recipe class of the
family its `model.kind` names (default clip; families/registry.py), holding the shared sections
(pipelines/recipe.py) and that family's own.

Checked when the recipe loads, before anything starts (config/typed.py does the checking): an
unknown or mistyped key (with the closest known one), a section of another family, a value of the
wrong type or out of its range (`bounded(...)`), a model shape that cannot be built, a repeated key
or an empty file is a ConfigError naming the file (or the `--set` override) and the dotted key.
`--set a.b=value` overrides go through the same checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config.typed import ConfigError, build, load_yaml, read_recipe_text, safe_yaml
from families.blip.config import BlipModelConfig
from families.blip.recipe import BlipEvalConfig, CapfiltConfig
from families.clip.config import ClipModelConfig
from families.clip.recipe import ClipEvalConfig
from families.mae.config import MAEModelConfig, ViTClassifierConfig
from families.mae.recipe import FinetuneConfig
from families.mdlm.config import MDLMModelConfig
from families.mdlm.recipe import MDLMEvalConfig, SFTConfig
from families.registry import family, model_config
from infra.uris import short
from pipelines.data_configs import DataConfig, TextDataConfig
from pipelines.family import sections_elsewhere
from pipelines.recipe import SHARED_SECTIONS, Recipe, TrackingConfig, check_workflow_id, fingerprint, flatten
from training.config import AugmentConfig, DeepSpeedConfig, TrainConfig

__all__ = [
    "ConfigError",
    "Recipe",
    "load_recipe",
    "model_config",
    "fingerprint",
    "flatten",
    "check_workflow_id",
    "DataConfig",
    "TrainConfig",
    "AugmentConfig",
    "DeepSpeedConfig",
    "TextDataConfig",
    "TrackingConfig",
    "BlipModelConfig",
    "ClipModelConfig",
    "MAEModelConfig",
    "MDLMModelConfig",
    "ModelConfig",
    "ViTClassifierConfig",
    "EvalConfig",
    "ClipEvalConfig",
    "BlipEvalConfig",
    "MDLMEvalConfig",
    "FinetuneConfig",
    "CapfiltConfig",
    "SFTConfig",
]

ModelConfig = ClipModelConfig  # the default model kind
EvalConfig = ClipEvalConfig  # the zero-shot / retrieval evaluation of CLIP and SigLIP
DEFAULT_KIND = "clip"


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    d[parts[-1]] = value


def _blame(keys: tuple[str, ...], overrides: list[str], label: str) -> str:
    """The `--set` that set one of `keys` (or a section holding it, or a key inside it), else the file."""
    for item in reversed(overrides):
        k = item.split("=", 1)[0].strip()
        for key in keys:
            if key == k or key.startswith((k + ".", k + "[")) or k.startswith(key + "."):
                return f"--set {item if len(item) <= 80 else item[:80] + '...'}"
    return label


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (or the defaults when path is None) and apply `key=value` overrides."""
    raw: dict = {}
    label = "<defaults>"
    overrides = list(overrides or [])
    if path is not None:
        label = str(path)
        try:
            text = read_recipe_text(path)
        except FileNotFoundError:
            raise ConfigError(f"{label}: recipe file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{label}: cannot read the recipe: {e}") from None
        raw = load_yaml(text, label)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        value = safe_yaml(text, f"--set {short(item, 80)}")
        _set_dotted(raw, key.strip(), value)
    try:
        return build(recipe_class_of(raw), raw, "")
    except ConfigError as e:
        raise ConfigError(f"{_blame(e.keys, overrides, label)}: {e}", e.key, e.keys) from None


def recipe_class_of(raw: dict) -> type:
    """The recipe class of the family `model.kind` names; a top-level key that is another family's
    section is a ConfigError naming the families it belongs to."""
    model = raw.get("model")
    kind = model.get("kind", DEFAULT_KIND) if isinstance(model, dict) else DEFAULT_KIND
    fam = family(kind)
    for key in raw:
        if key in SHARED_SECTIONS or key in fam.sections:
            continue
        owners = sections_elsewhere(key)
        if owners:
            raise ConfigError(
                f"'{key}' is a section of the {' and '.join(owners)} recipe, not of a {kind} recipe "
                f"(model.kind {kind}: its sections are {sorted(SHARED_SECTIONS + tuple(fam.sections))})",
                str(key),
            )
    return fam.recipe
