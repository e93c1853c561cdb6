"""The `curate` section of an image-text recipe (CLIP, SigLIP): filter the training shards by a
scorer's image-text score and remove semantic near-duplicates before pretraining (issue 29)."""

from __future__ import annotations

from typing import Optional

from config.typed import Float, bounded, config_class


@config_class
class CurateConfig:
    enabled: bool = False  # shard -> teacher -> curate -> pretrain on the curated shards -> evaluate
    scorer: str = (
        "teacher"  # the model that scores: "teacher" (a short pretrain of this recipe on the uncurated shards)
    )
    teacher_epochs: int = bounded(10, ge=1)  # the teacher's budget (train.* otherwise)
    min_score: Optional[Float] = None  # remove pairs under this cosine (set this or keep_fraction)
    keep_fraction: Optional[Float] = bounded(0.8, gt=0.0, le=1.0)  # keep the top share by score (DataComp's top-k%)
    dedup_eps: Float = bounded(0.02, ge=0.0, lt=1.0)  # semantic duplicates: cosine above 1 - eps (0: no dedup)
    clusters: int = bounded(20, ge=1)  # k-means clusters of image embeddings (SemDeDup)
    actors: int = bounded(2, ge=1)  # scorer actors (one model each; GPU actors when the cluster has GPUs)
    batch_size: int = bounded(256, ge=1)  # images per scorer forward pass

    def problems(self):
        if self.enabled and (self.min_score is None) == (self.keep_fraction is None):
            yield "keep_fraction", "set exactly one of curate.min_score and curate.keep_fraction (the other null)"
        if self.scorer != "teacher":
            yield "scorer", f"{self.scorer!r}: only 'teacher' (a short pretrain in the same workflow) for now"
