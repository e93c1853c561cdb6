"""Every model family, one entry each: its model config class (which builds the model, `build()`,
and names the training task, `task_class()`), the workflow module that runs its recipe (`steps`,
`summary`, and `final_model_step` when the model evaluated is not `pretrain`'s), the formats it
exports to, the checkpoints `train.init_from` may start it from, and its MLflow pyfunc module.

Adding a family: a folder here (config, model, loss, task, evaluate), a recipe in configs/, a
workflow in pipelines/ (or an existing one: SigLIP runs CLIP's) and one entry below. Modules are
named by string: one is imported only when used."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from config.typed import coerce
from families.blip.config import BlipModelConfig
from families.clip.config import ClipModelConfig
from families.mae.config import MAEModelConfig, ViTClassifierConfig
from families.mdlm.config import MDLMModelConfig
from families.siglip.config import SigLipModelConfig


@dataclass(frozen=True)
class Family:
    config: type
    pipeline: str = ""      # the workflow module ("" : built by other families' steps only)
    exports: dict = field(default_factory=dict)   # format -> "module:function(model, mcfg, dest)"
    # what `train.init_from` may name: "" a model.pt of this project, or a prefix ("hf" for
    # hf:<dir>) -> "module:function(path, mcfg)" listing why that checkpoint cannot start the model
    starts: dict = field(default_factory=lambda: {"": ""})
    # the module of its MLflow pyfunc (PYFUNC, signature, example_input; model_step(recipe): the step
    # whose model it serves, by default the final one; extra_artifacts(recipe, inputs, scratch))
    serve: str = ""


CLIP_EXPORTS = {"hf": "families.clip.hf:export_hf", "open_clip": "families.clip.openclip:export_open_clip"}
CLIP_STARTS = {"": "", "hf": "families.clip.hf:checkpoint_problems",
               "open_clip": "families.clip.openclip:checkpoint_problems"}

FAMILIES = {
    "clip": Family(ClipModelConfig, "pipelines.clip", CLIP_EXPORTS, CLIP_STARTS, "families.clip.serve"),
    "mae": Family(MAEModelConfig, "pipelines.mae", {"timm": "families.mae.timmio:export_timm"},
                  {"": "", "timm": "families.mae.timmio:checkpoint_problems"},
                  serve="families.mae.serve"),
    "blip": Family(BlipModelConfig, "pipelines.blip", serve="families.clip.serve"),   # ITC embeddings, as CLIP
    "mdlm": Family(MDLMModelConfig, "pipelines.mdlm", starts={}, serve="families.mdlm.serve"),
    "siglip": Family(SigLipModelConfig, "pipelines.clip", CLIP_EXPORTS, CLIP_STARTS, "families.clip.serve"),
    # MAE's fine-tuning steps build it; its timm export refuses, naming the layer
    "vit_classifier": Family(ViTClassifierConfig, exports={"timm": "families.mae.timmio:export_timm"},
                             serve="families.mae.serve"),
}

# a recipe's model section: one of the families' configs, picked by its `kind`
AnyModelConfig = Union[tuple(f.config for f in FAMILIES.values())]


def model_config(d: dict) -> AnyModelConfig:
    """A model config from its dict form (as stored with a checkpoint), chosen by `kind`."""
    return coerce(AnyModelConfig, dict(d), "model")


def pipeline_module(kind: str):
    """The workflow module of model kind `kind` (None when no recipe trains it)."""
    f = FAMILIES.get(kind)
    return importlib.import_module(f.pipeline) if f and f.pipeline else None


def _function(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def exporter(kind: str, fmt: str):
    return _function(FAMILIES[kind].exports[fmt])


def init_problems(mcfg, init_from: str):
    """Why `train.init_from` cannot start model section `mcfg`, as (key, message) pairs."""
    prefix, _, path = init_from.partition(":") if init_from.partition(":")[0] in ("hf", "open_clip", "timm") \
        else ("", "", init_from)
    starts = FAMILIES[mcfg.kind].starts
    if prefix not in starts:
        have = [f"{p}:<path>" if p else "a model.pt" for p in starts]
        yield "train.init_from", (f"{init_from}: a {mcfg.kind} model starts from " +
                                  (" or ".join(have) if have else "no checkpoint (train it from scratch)"))
    elif starts[prefix]:
        yield from _function(starts[prefix])(path, mcfg)


def recipe_kinds() -> list[str]:
    return sorted(k for k, f in FAMILIES.items() if f.pipeline)


def load_model(model_path: str | Path):
    """An exported model file (local or s3://), in eval mode, with its config; needs neither Ray
    nor the optimizer."""
    from training.checkpoint.model_file import read_model_file
    blob = read_model_file(model_path)
    mcfg = model_config(blob["model_config"])
    model = mcfg.build()
    model.load_state_dict(blob["model"])
    return model.eval(), mcfg
