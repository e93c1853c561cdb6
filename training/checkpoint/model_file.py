"""The exported model file (`model.pt`: fp32 weights + model config, no optimizer), read the same
way from a local path or s3://, and what starts from one: `init_from` for a fine-tune or continued
pretraining, `load_model` for evaluation and serving. `split_init_from` reads `train.init_from`
(a model.pt, or `<format>:<path>` of another library) for every family alike."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from config.typed import build
from infra.storage import Store
from training.checkpoint.resume import TRAIN_STATE
from training.strategy import export_state_dict

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MODEL_FILE = "model.pt"


def export_model(checkpoint_dir: Path, model_path: Path) -> dict:
    """Write `model_path` from a Ray Train checkpoint folder of either strategy (consolidated fp32:
    ZeRO shards merged); returns the checkpoint's train state."""

    state = json.loads((Path(checkpoint_dir) / TRAIN_STATE).read_text())
    weights = export_state_dict(Path(checkpoint_dir))
    tmp = Path(model_path).with_suffix(".tmp")
    torch.save(
        {"model": weights, "model_config": state["model_config"], "step": state["step"], "strategy": state["strategy"]},
        tmp,
    )
    tmp.replace(model_path)
    return state


def read_model_file(model_path: str | Path) -> dict:
    """An exported model.pt (local path or s3:// URI): {"model": state dict, "model_config", ...}."""

    parent, _, name = str(model_path).rpartition("/")
    return torch.load(io.BytesIO(Store(parent or ".").read_bytes(name)), map_location="cpu", weights_only=True)


def init_from(model: torch.nn.Module, model_path: str | Path, encoder_only: bool = False) -> torch.nn.Module:
    """`model` with the weights of an exported model file (its encoder only: `load_encoder`)."""
    weights = read_model_file(model_path)["model"]
    model.load_encoder(weights) if encoder_only else model.load_state_dict(weights)  # type: ignore[operator]  # the model's own method
    return model


_FORMAT = re.compile(r"^([a-z][a-z0-9_]*):(?!//)(.*)$", re.S)


def split_init_from(value: str) -> tuple[str, str]:
    """(format, path) of a `train.init_from` value: ("", value) for a model.pt of this project
    (a local path or an s3:// URI), ("hf", "<dir>") for `hf:<dir>`, and so on."""
    m = _FORMAT.match(value)
    return (m.group(1), m.group(2)) if m else ("", value)


def kind_of(config_class: type) -> str:
    """The model kind a model config class stands for (its `kind` field's default)."""
    return cast(str, config_class.__dataclass_fields__["kind"].default)  # type: ignore[attr-defined]  # a config class


def load_model(model_path: str | Path, *configs: type[DataclassInstance]):
    """(model in eval mode, its config) of an exported model file, its config one of the model
    config classes `configs` (chosen by its `kind`); needs neither Ray nor the optimizer."""

    blob = read_model_file(model_path)
    stored = dict(blob["model_config"])
    by_kind = {kind_of(c): c for c in configs}
    if stored.get("kind") not in by_kind:
        raise ValueError(f"{model_path}: holds a {stored.get('kind')!r} model; expected {sorted(by_kind)}")
    mcfg = build(by_kind[stored["kind"]], stored, "model")
    model = mcfg.build()
    model.load_state_dict(blob["model"])
    return model.eval(), mcfg
