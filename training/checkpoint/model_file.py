"""The exported model file (`model.pt`: fp32 weights + model config, no optimizer), read the same
way from a local path or s3://, and what starts from one: `init_from` for a fine-tune or continued
pretraining (families/registry.py's `load_model` builds a model from one, for evaluation)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint.resume import TRAIN_STATE

MODEL_FILE = "model.pt"


def export_model(checkpoint_dir: Path, model_path: Path) -> dict:
    """Write `model_path` from a Ray Train checkpoint folder of either strategy (consolidated fp32:
    ZeRO shards merged); returns the checkpoint's train state."""
    from training.strategy import export_state_dict
    state = json.loads((Path(checkpoint_dir) / TRAIN_STATE).read_text())
    weights = export_state_dict(Path(checkpoint_dir))
    tmp = Path(model_path).with_suffix(".tmp")
    torch.save({"model": weights, "model_config": state["model_config"], "step": state["step"],
                "strategy": state["strategy"]}, tmp)
    tmp.replace(model_path)
    return state


def read_model_file(model_path: str | Path) -> dict:
    """An exported model.pt (local path or s3:// URI): {"model": state dict, "model_config", ...}."""
    import io

    from infra.storage import Store
    parent, _, name = str(model_path).rpartition("/")
    return torch.load(io.BytesIO(Store(parent or ".").read_bytes(name)), map_location="cpu",
                      weights_only=True)


def init_from(model: torch.nn.Module, model_path: str | Path, encoder_only: bool = False) -> torch.nn.Module:
    """`model` with the weights of an exported model file (its encoder only: `load_encoder`)."""
    weights = read_model_file(model_path)["model"]
    model.load_encoder(weights) if encoder_only else model.load_state_dict(weights)
    return model
