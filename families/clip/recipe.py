"""A CLIP recipe: the shared sections (pipelines/recipe.py), CLIP's model section, the image-text
`data` to shard and the zero-shot / retrieval `eval`."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from config.typed import bounded, config_class
from families.clip.config import ClipModelConfig
from families.clip.scorer_source import folder_problems
from pipelines.curate_config import CurateConfig
from pipelines.data_configs import DataConfig
from pipelines.recipe import Recipe


@config_class
class ClipEvalConfig:
    label_field: str = "subgroup"  # metadata field holding the class of a held-out image
    label_format: Literal["as_is", "hyphen_to_space"] = "hyphen_to_space"
    templates: tuple[str, ...] = ("{}", "an emoji of {}", "a picture of {}")
    batch_size: int = bounded(256, ge=1)

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


@config_class
class ClipRecipe(Recipe):
    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: ClipEvalConfig = field(default_factory=ClipEvalConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)

    def problems(self):
        yield from super().problems()
        if self.curate.enabled:  # an exported folder as scorer: there, and fitting (a models:/ one: when built)
            yield from folder_problems(self.curate.scorer)
