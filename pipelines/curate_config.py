"""The `curate` section of an image-text recipe (CLIP, SigLIP): filter the training shards by a
scorer's image-text score and remove semantic near-duplicates before pretraining (issue 29).

`scorer` names the model that scores (`scorer_form` reads it): "teacher" (a short pretrain of this
recipe in the same workflow), `models:/<name>/<version>` (a version in this project's MLflow Model
Registry), `hf:<dir>` (a transformers save_pretrained folder) or `open_clip:<dir>` (an open_clip
local-dir folder). Its form is checked here; whether the folder or version is there and fits is
the family's check (families/clip/scorer_source.py), when the recipe loads and the workflow is built."""

from __future__ import annotations

import re
from typing import Literal, Optional

from config.typed import Float, bounded, config_class

SCORER_FORMS = (
    "'teacher' (a short pretrain of this recipe in the same workflow), 'models:/<name>/<version>' "
    "(a registered model), 'hf:<dir>' (a transformers save_pretrained folder) or 'open_clip:<dir>' "
    "(an open_clip local-dir folder)"
)
_REGISTERED = re.compile(r"^models:/(?P<name>[^/]+(?:/[^/]+)*)/(?P<version>\d+)$")


def scorer_form(value: str) -> tuple[str, str]:
    """("teacher", ""), ("models", "models:/<name>/<version>"), ("hf", "<dir>") or
    ("open_clip", "<dir>"); ValueError (the message without the key) for anything else."""
    if value == "teacher":
        return "teacher", ""
    if value.startswith("models:/"):
        if not _REGISTERED.match(value):
            raise ValueError(f"{value!r}: a registered model is models:/<name>/<version> (the version a number)")
        return "models", value
    for prefix in ("hf", "open_clip"):
        if value.startswith(f"{prefix}:"):
            if not value[len(prefix) + 1 :].strip():
                raise ValueError(f"{value!r}: name the folder, {prefix}:<dir>")
            return prefix, value[len(prefix) + 1 :]
    raise ValueError(f"{value!r}: the scorer is {SCORER_FORMS}")


@config_class
class CurateConfig:
    enabled: bool = False  # shard -> [teacher ->] curate -> pretrain on the curated shards -> evaluate
    scorer: str = "teacher"  # who scores: "teacher", "models:/<name>/<version>", "hf:<dir>" or "open_clip:<dir>"
    teacher_epochs: int = bounded(10, ge=1)  # the teacher's budget (train.* otherwise)
    min_score: Optional[Float] = None  # remove pairs under this cosine (set this or keep_fraction)
    keep_fraction: Optional[Float] = bounded(0.8, gt=0.0, le=1.0)  # keep the top share by score (DataComp's top-k%)
    dedup_eps: Float = bounded(0.02, ge=0.0, lt=1.0)  # semantic duplicates: cosine above 1 - eps (0: no dedup)
    # what deduplication compares: image embeddings (SemDeDup), the pair's (image and caption both
    # near), or the caption's alone (near captions, whatever the images: a scorer whose images do not separate)
    dedup_on: Literal["image", "pair", "caption"] = "image"
    clusters: int = bounded(20, ge=1)  # k-means clusters of image embeddings (SemDeDup)
    actors: int = bounded(2, ge=1)  # scorer actors (one model each; GPU actors when the cluster has GPUs)
    batch_size: int = bounded(256, ge=1)  # images per scorer forward pass
    compare: bool = False  # also pretrain on the uncurated shards for as many steps; evaluate both (step compare)

    def problems(self):
        if self.enabled and (self.min_score is None) == (self.keep_fraction is None):
            yield "keep_fraction", "set exactly one of curate.min_score and curate.keep_fraction (the other null)"
        if self.compare and not self.enabled:
            yield "compare", "compares a curated pretrain with an uncurated one: set curate.enabled true too", "enabled"
        try:
            scorer_form(self.scorer)
        except ValueError as e:
            yield "scorer", str(e)
