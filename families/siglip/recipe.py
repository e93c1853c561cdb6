"""A SigLIP recipe: CLIP's sections (data, eval) with SigLIP's model section."""

from __future__ import annotations

from dataclasses import dataclass, field

from families.clip.recipe import ClipRecipe
from families.siglip.config import SigLipModelConfig


@dataclass(frozen=True)
class SigLipRecipe(ClipRecipe):
    model: SigLipModelConfig = field(default_factory=SigLipModelConfig)
