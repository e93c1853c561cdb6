"""Recipe files (YAML) validated into typed, frozen config objects.

Checked when the recipe loads, before anything starts (config/typed.py does the checking): an
unknown or mistyped key, a value of the wrong type or out of its range (`bounded(...)` below), a
model shape that cannot be built, a repeated key or an empty file is a ConfigError naming the file
(or the `--set` override) and the dotted key. `--set a.b=value` overrides go through the same checks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from pipelines.data_configs import DataConfig, TextDataConfig, canonical_fields, scheme_problems
from training.config import AugmentConfig, DeepSpeedConfig, TrainConfig
from families.blip.config import BlipModelConfig
from families.clip.config import ClipModelConfig
from families.mae.config import MAEModelConfig, ViTClassifierConfig
from families.mdlm.config import MDLMModelConfig
from families.registry import AnyModelConfig, init_problems, model_config
from config.typed import ConfigError, bounded, build, load_yaml, read_recipe_text, safe_yaml
from infra.uris import short

__all__ = ["ConfigError", "Recipe", "load_recipe", "model_config", "fingerprint", "flatten", "DataConfig",
           "TrainConfig", "AugmentConfig", "DeepSpeedConfig", "TextDataConfig", "AnyModelConfig", "BlipModelConfig", "ClipModelConfig", "MAEModelConfig",
           "MDLMModelConfig", "ModelConfig", "ViTClassifierConfig"]

ModelConfig = ClipModelConfig   # the default model kind


@dataclass(frozen=True)
class EvalConfig:
    label_field: str = "subgroup"       # metadata field holding the class of a held-out image
    label_format: Literal["as_is", "hyphen_to_space"] = "hyphen_to_space"
    templates: tuple[str, ...] = ("{}", "an emoji of {}", "a picture of {}")
    batch_size: int = bounded(256, ge=1)
    rerank_k: int = bounded(16, ge=1)                  # BLIP: ITM re-ranks the top k of each retrieval query
    caption_samples: int = bounded(25, ge=0)           # BLIP: rows of the sample-caption table in MLflow
    lm_sequences: int = bounded(256, ge=0)             # MDLM: held-out sequences for the likelihood (0: all)
    mc_samples: int = bounded(16, ge=1)                # MDLM: Monte Carlo draws of the masking per sequence
    gen_samples: int = bounded(12, ge=1)               # MDLM: samples in MLflow (held-out prompts, SFT prompts)
    prompt_tokens: int = bounded(16, ge=1)             # MDLM: continuation prompts: the first tokens of held-out text
    gen_length: int = bounded(48, ge=1)                # MDLM: generated tokens
    block_length: int = bounded(16, ge=1)              # MDLM: semi-autoregressive blocks (gen_length / block_length)
    gen_steps: int = bounded(48, ge=1)                 # MDLM: denoising steps in all (a multiple of the blocks)
    temperature: float = bounded(0.0, ge=0.0)          # MDLM: Gumbel noise on the logits (0: greedy)

    def problems(self):
        if not self.templates:
            yield "templates", "is empty: zero-shot needs at least one prompt template such as 'a photo of {}'"
        for i, t in enumerate(self.templates):
            try:
                ok = t.format("\0").count("\0") == 1
            except (IndexError, KeyError, ValueError):
                ok = False
            if not ok:
                yield f"templates[{i}]", f"{t!r} must hold the class name placeholder '{{}}' once (and no other braces)"


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning and linear probing of a pretrained image encoder on labelled images (MAE)."""
    label_field: str = "label"          # metadata field with each image's class
    epochs: int = bounded(10, ge=1)
    batch_size: int = bounded(128, ge=1)               # per worker
    lr: float = bounded(1e-3, gt=0.0)                  # peak lr of the head; block i gets lr * layer_decay^(L+1-i)
    min_lr: float = bounded(1e-5, ge=0.0)
    warmup_steps: int = bounded(20, ge=0)
    weight_decay: float = bounded(0.05, ge=0.0)
    layer_decay: float = bounded(0.75, gt=0.0, le=1.0)
    label_smoothing: float = bounded(0.1, ge=0.0, lt=1.0)
    scratch_baseline: bool = True       # also train the same ViT from random weights, same budget
    probe_epochs: int = bounded(100, ge=1)             # linear probe: full-batch logistic regression on features
    probe_weight_decay: float = bounded(1e-4, ge=0.0)

    def problems(self):
        if self.min_lr > self.lr:
            yield "min_lr", f"{self.min_lr} is above finetune.lr {self.lr}", "lr"


@dataclass(frozen=True)
class CapfiltConfig:
    """BLIP's caption bootstrapping: a synthetic caption per training image, the ITM filter."""
    top_p: float = bounded(0.9, gt=0.0, le=1.0)        # nucleus sampling of the synthetic captions
    threshold: float = bounded(0.5, ge=0.0, le=1.0)    # keep a text when its ITM match probability reaches this
    batch_size: int = bounded(256, ge=1)
    shard_samples: int = bounded(500, ge=1)
    second_pretrain: bool = True        # continue pretraining on the bootstrapped shards
    epochs: int = bounded(5, ge=1)                     # of that second pretraining


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning of the masked-diffusion LM on prompt/response pairs."""
    epochs: int = bounded(2, ge=1)
    batch_size: int = bounded(64, ge=1)                # per worker
    lr: float = bounded(3e-4, gt=0.0)
    min_lr: float = bounded(1e-5, ge=0.0)
    warmup_steps: int = bounded(20, ge=0)
    weight_decay: float = bounded(0.1, ge=0.0)

    def problems(self):
        if self.min_lr > self.lr:
            yield "min_lr", f"{self.min_lr} is above sft.lr {self.lr}", "lr"


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = ""              # "" : sqlite file under the runs folder
    experiment: str = "pretrain"


# a workflow id (and so a recipe name) is one path segment: it names a folder under runs_dir / storage
WORKFLOW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_workflow_id(value: str, key: str = "--workflow-id") -> str:
    if not WORKFLOW_ID.match(value or "") or ".." in value:
        raise ConfigError(f"{key}: {value!r} is not a workflow id: use 1-128 letters, digits, '.', '_' or '-', "
                          f"starting with a letter or digit (it names one folder)", key)
    return value


@dataclass(frozen=True)
class Recipe:
    name: str = "clip"
    runs_dir: str = "runs"              # local folder: scratch, and everything when `storage` is ""
    storage: str = ""                   # s3://bucket/prefix: shards, checkpoints, records, artifacts
    data: DataConfig = field(default_factory=DataConfig)
    model: AnyModelConfig = field(default_factory=ClipModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    capfilt: CapfiltConfig = field(default_factory=CapfiltConfig)
    text: TextDataConfig = field(default_factory=TextDataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        canonical_fields(self, ("storage",))
        canonical_fields(self, ("runs_dir",), ("local",))

    def problems(self):
        yield from scheme_problems(self, ("storage",))
        yield from scheme_problems(self, ("runs_dir",), ("local",))
        if not WORKFLOW_ID.match(self.name) or ".." in self.name:
            yield "name", (f"{self.name!r} is not a workflow id (the default one): use 1-128 letters, digits, "
                           f"'.', '_' or '-', starting with a letter or digit")
        if hasattr(self.model, "train_problems"):   # a family's rules between its model and train
            yield from self.model.train_problems(self.train)
        if self.train.init_from:   # the checkpoint is one the family can start from, and fits the model
            yield from init_problems(self.model, self.train.init_from)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint(obj: Any) -> str:
    """Stable short hash of plain data (dicts, lists, dataclasses)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
        return build(Recipe, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{_blame(e.keys, overrides, label)}: {e}", e.key, e.keys) from None
