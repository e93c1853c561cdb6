"""Model registry: a model config's `kind` names the class that builds it."""
from __future__ import annotations

from torch import nn


def build_model(cfg) -> nn.Module:
    if cfg.kind == "clip":
        from data.tokenizer import get_tokenizer
        from training.models.clip import CLIP
        return CLIP(cfg, get_tokenizer(cfg.context_length).vocab_size)
    if cfg.kind == "blip":
        from data.tokenizer import get_tokenizer
        from training.models.blip import BLIP
        return BLIP(cfg, get_tokenizer(cfg.context_length).vocab_size)
    if cfg.kind == "mae":
        from training.models.mae import MAE
        return MAE(cfg)
    if cfg.kind == "mdlm":
        from training.models.mdlm import MDLM
        return MDLM(cfg)
    if cfg.kind == "vit_classifier":
        from training.models.mae import ViTClassifier
        return ViTClassifier(cfg)
    if hasattr(cfg, "build"):   # a family outside training/ (families/): its config builds its model
        return cfg.build()
    raise ValueError(f"model.kind: unknown model '{cfg.kind}'")
