"""Which samples a curation step removes, given each sample's image-text score and image embedding
(what issue 29's `curate` step computes with a scorer model): numpy only, no model, no Ray.

- **Score filter** (DataComp's CLIP-score baseline): remove the pairs whose score is under
  `min_score`, or keep the top `keep_fraction` by score (`low_clip_score`).
- **Semantic deduplication** (SemDeDup): spherical k-means on the L2-normalised embeddings; within
  each cluster, a sample whose cosine similarity to an earlier sample of its cluster exceeds
  `1 - eps` is a `semantic_duplicate` of the most similar one. "Earlier" is by a priority the caller
  gives (input order: the first of a group is kept, as exact dedup keeps it). Similarities are
  computed in blocks of rows against blocks of earlier members, so memory is `block x block`.
  Pairs that k-means puts in different clusters are not compared (SemDeDup's trade: more clusters,
  less work, fewer pairs seen).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from data.curation.threshold import check, histogram, threshold

BLOCK = 2048  # rows of a similarity block
# more than this share of samples as semantic duplicates is a scorer that cannot tell images apart,
# not data (SemDeDup finds about half of LAION removable at its loosest setting)
MAX_DUPLICATE_SHARE = 0.5


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0, inits: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of the rows of `x` (normalised here): (centroids [k, d], cluster of each
    row), the best (highest total similarity to its centroids) of `inits` runs, each seeded by
    k-means++ on cosine distance; a cluster left empty takes the worst-fitting row."""
    x = normalised(x)
    runs = [_kmeans_once(x, max(1, min(k, len(x))), iters, np.random.default_rng([seed, i])) for i in range(inits)]
    return max(runs, key=lambda r: float((x * r[0][r[1]]).sum()))


def _kmeans_once(x: np.ndarray, k: int, iters: int, rng) -> tuple[np.ndarray, np.ndarray]:
    n = len(x)
    cent = np.empty((k, x.shape[1]), dtype=np.float32)
    cent[0] = x[rng.integers(n)]
    dist = 1.0 - x @ cent[0]
    for i in range(1, k):
        p = np.maximum(dist, 0.0)
        cent[i] = x[rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)]
        dist = np.minimum(dist, 1.0 - x @ cent[i])
    assign = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        sim = x @ cent.T
        new = sim.argmax(axis=1)
        fit = sim[np.arange(n), new]
        for c in np.setdiff1d(np.arange(k), new):  # an empty cluster: the worst-fitting row
            worst = int(fit.argmin())
            new[worst], fit[worst] = c, np.inf
        if it and np.array_equal(new, assign):
            break
        assign = new
        for c in range(k):
            cent[c] = normalised(x[assign == c].sum(axis=0, keepdims=True))[0]
    return cent, assign


def semantic_duplicates(
    emb: np.ndarray, priority: np.ndarray, n_clusters: int, eps: float, seed: int = 0, block: int = BLOCK
) -> np.ndarray:
    """For each row: -1, or the row it is a semantic duplicate of (an earlier one by `priority`,
    lower first, in the same cluster, with cosine similarity above 1 - eps)."""
    return duplicates_and_cosines(emb, priority, n_clusters, eps, seed, block)[0]


def duplicates_and_cosines(
    emb: np.ndarray, priority: np.ndarray, n_clusters: int, eps: float, seed: int = 0, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """semantic_duplicates(), and each duplicate's cosine to the row it duplicates (nan if none)."""
    x = normalised(emb)
    _, assign = kmeans(x, n_clusters, seed=seed)
    dup_of = np.full(len(x), -1, dtype=np.int64)
    cosine = np.full(len(x), np.nan, dtype=np.float64)
    for c in np.unique(assign):
        members = np.flatnonzero(assign == c)
        members = members[np.argsort(priority[members], kind="stable")]  # earliest first
        best, cos = cluster_duplicates(x[members], eps, block)
        hit = best >= 0
        dup_of[members[hit]] = members[best[hit]]
        cosine[members[hit]] = cos[hit]
    return dup_of, cosine


def cluster_duplicates(xc: np.ndarray, eps: float, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Within one cluster (normalised rows, earliest first): for each row, -1 or the most similar
    earlier row (the first of equals) when its cosine is above 1 - eps, and that cosine (nan for
    -1). Rows and earlier members are both taken `block` at a time: memory block x block, whatever
    the cluster's size."""
    best_of = np.full(len(xc), -1, dtype=np.int64)
    cosine = np.full(len(xc), np.nan, dtype=np.float64)
    for start in range(1, len(xc), block):
        rows = xc[start : start + block]
        top = np.full(len(rows), -np.inf, dtype=np.float32)
        best = np.zeros(len(rows), dtype=np.int64)
        for c0 in range(0, start + len(rows), block):
            sim = rows @ xc[c0 : min(c0 + block, start + len(rows))].T
            if c0 + sim.shape[1] > start:  # the block's own rows among these: only earlier ones count
                later = np.arange(start, start + len(rows))[:, None] <= np.arange(c0, c0 + sim.shape[1])[None, :]
                sim[later] = -np.inf
            j = sim.argmax(axis=1)
            value = sim[np.arange(len(rows)), j]
            better = value > top  # strictly: an earlier chunk's equal stays (argmax's first of equals)
            top[better], best[better] = value[better], c0 + j[better]
        hit = top > 1.0 - eps
        best_of[start : start + len(rows)][hit] = best[hit]
        cosine[start : start + len(rows)][hit] = top[hit]
    return best_of, cosine


def refuse_if_most_are_duplicates(duplicates: int, kept: int, eps: float, dedup_on: str) -> None:
    """More than MAX_DUPLICATE_SHARE of the kept samples as duplicates is a scorer that cannot tell
    images apart, not data: a ValueError that says so."""
    if kept and duplicates / kept > MAX_DUPLICATE_SHARE:
        raise ValueError(
            f"curate.dedup_eps: {duplicates} of {kept} samples would go as semantic duplicates "
            f"(cosine above {1 - eps:.4f} of their {dedup_on} embeddings): the scorer sees them nearly all alike "
            f"(an undertrained teacher: raise curate.teacher_epochs; or curate.dedup_on: pair), or dedup_eps {eps} "
            "is too large for them"
        )


def low_scores(scores: np.ndarray, min_score: Optional[float] = None, keep_fraction: Optional[float] = None):
    """(the removed mask, the threshold used): scores under `min_score`, or all but the top
    `keep_fraction` (ties at the threshold kept)."""
    scores = np.asarray(scores, dtype=np.float64)
    check(min_score, keep_fraction)
    if keep_fraction is not None:
        min_score = threshold(histogram(scores), lambda: [scores], keep_fraction)
    assert min_score is not None
    return scores < min_score, float(min_score)


def precision_recall(removed: set, truth: set) -> tuple[float, float]:
    """Of the removed samples, the share in `truth`; of `truth`, the share removed."""
    hit = len(removed & truth)
    return (hit / len(removed) if removed else 1.0), (hit / len(truth) if truth else 1.0)
