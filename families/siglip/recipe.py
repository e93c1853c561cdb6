"""A SigLIP recipe: CLIP's sections (data, eval) with SigLIP's model section."""

from __future__ import annotations

from dataclasses import field

from config.typed import config_class
from families.clip.recipe import ClipRecipe
from families.siglip.config import SigLipModelConfig


@config_class
class SigLipRecipe(ClipRecipe):
    model: SigLipModelConfig = field(default_factory=SigLipModelConfig)
