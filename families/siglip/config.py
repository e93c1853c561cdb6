"""SigLIP's model section: CLIP's (the same towers), plus the sigmoid loss's learnable bias. The
initial scale is 10 (init_temperature 0.1) and the bias -10, as in the paper and open_clip."""

from __future__ import annotations

from typing import Literal

from config.typed import Float, bounded, config_class
from families.clip.config import ClipModelConfig
from families.siglip.model import build
from families.siglip.task import SigLipTask


@config_class
class SigLipModelConfig(ClipModelConfig):
    kind: Literal["siglip"] = "siglip"  # type: ignore[assignment]  # its own tag of the tagged union (config/typed.py)
    init_temperature: Float = bounded(0.1, gt=0.0)  # scale 1 / T = 10 (ln 10 as the parameter)
    init_bias: Float = -10.0

    def build(self):
        """The model (what a training task and `load_model` build)."""

        return build(self)

    def task_class(self):
        """The training task (what training/tasks.make_task calls)."""

        return SigLipTask
