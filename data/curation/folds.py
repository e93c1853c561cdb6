"""Out-of-fold scoring (`curate.teacher_folds` K >= 2): every training sample falls in one of K folds
by a hash of its key; teacher k trains on the other folds and scores fold k, so no pair is scored
by a model that was trained on it.

Why: a teacher pretrained on the very pairs it scores learns their noise too. On the noisy emoji
demo a teacher trained on all of it finds the swapped captions at precision 0.62 and recall 0.69
(the bottom 20% by score), where a model of the same size that never saw them finds them at 0.87
and 0.96 (README, Curation). Cross-fitting is the usual cure (cross-validated noise detection).

- `fold_of(key, k)`: the fold, stable across processes and runs (crc32 of the key).
- `write_fold_shards` (data/curation/fold_shards.py): the training set teacher k trains on (the shards without fold k's
  samples, bytes unchanged), in the shard step's manifest format.
- `FoldedScorer`: K scorers behind the scorer protocol. A sample's score is the cosine under the
  teacher of its fold; the embeddings that deduplication compares are all teacher 0's, one
  embedding space for every sample.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


def fold_of(key: str, folds: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % folds


def scored(scorer: Any, pixels: np.ndarray, captions: list[str], keys: list[str]):
    """(scores [B], image embeddings [B, D], caption embeddings [B, D]) of one batch: a FoldedScorer
    scores out of fold; any other scorer's score is the cosine of its own embeddings."""
    if isinstance(scorer, FoldedScorer):
        return scorer.score(pixels, captions, keys)
    img, txt = scorer.embed(pixels, captions)
    return (img * txt).sum(axis=1), img, txt


class FoldedScorer:
    def __init__(self, scorers: Sequence[Any]):
        sizes = {s.image_size for s in scorers}
        if len(sizes) != 1:
            raise ValueError(f"fold teachers of different image sizes {sorted(sizes)}")
        self.scorers, self.image_size = list(scorers), sizes.pop()

    def score(self, pixels: np.ndarray, captions: list[str], keys: list[str]):
        img, txt = self.scorers[0].embed(pixels, captions)
        scores = (img * txt).sum(axis=1)
        folds = np.array([fold_of(k, len(self.scorers)) for k in keys])
        for f in range(1, len(self.scorers)):
            rows = np.flatnonzero(folds == f)
            if len(rows):
                a, b = self.scorers[f].embed(pixels[rows], [captions[i] for i in rows])
                scores[rows] = (a * b).sum(axis=1)
        return scores, img, txt


@dataclass(frozen=True)
class FoldedScorerFactory:
    """Picklable: the factories of the K fold teachers' scorers, fold k's teacher at index k."""

    factories: tuple[Callable[[], Any], ...]

    def __call__(self) -> FoldedScorer:
        return FoldedScorer([f() for f in self.factories])
