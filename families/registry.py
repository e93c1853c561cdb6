"""Every model family, one line each: the workflow module that runs it (`steps`, `summary`, and
`final_model_step` when the model evaluated is not `pretrain`'s) and, for a family that lives in
families/, its model config class ("module:Class"; the class builds its model and names its task:
`build()`, `task_class()`). Module names are strings: a family is imported only when used."""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    pipeline: str
    config: str = ""


FAMILIES = {
    "clip": Family("pipelines.clip"),
    "mae": Family("pipelines.mae"),
    "blip": Family("pipelines.blip"),
    "mdlm": Family("pipelines.mdlm"),
    "siglip": Family("pipelines.clip", "families.siglip.config:SigLipModelConfig"),
}


def family_configs() -> tuple:
    """The model config classes of the families that live in families/."""
    out = []
    for f in FAMILIES.values():
        if f.config:
            module, _, name = f.config.partition(":")
            out.append(getattr(importlib.import_module(module), name))
    return tuple(out)


def pipeline_module(kind: str):
    """The workflow module of model kind `kind` (None when no family trains it)."""
    return importlib.import_module(FAMILIES[kind].pipeline) if kind in FAMILIES else None
