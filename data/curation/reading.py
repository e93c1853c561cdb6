"""One training shard's scores (data/curation/score.py's `<shard>.scores.parquet`) as numpy: only
the columns asked for, each sample's priority (shard index << 32 | order in the shard), and what
semantic deduplication compares (`dedup_on`: the image embeddings, the pair's, or the caption's)."""

from __future__ import annotations

import io
from typing import Optional

import numpy as np

from data.curation.score import scores_name
from data.curation.select import normalised
from infra.storage import Store

_VECTORS = {"image": ["image_emb"], "pair": ["image_emb", "text_emb"], "caption": ["text_emb"]}


def dedup_columns(on: str) -> list[str]:
    if on not in _VECTORS:
        raise ValueError(f"curate.dedup_on: {on!r} is not 'image', 'pair' or 'caption'")
    return _VECTORS[on]


def shard_scores(scores_dir: str, url: str, index: int, vectors: Optional[str] = None) -> dict:
    """{"keys", "scores", "priority"} of shard `index` (at `url`), and with `vectors` its "embs"
    [n, d] ("image", "pair") and "text_embs" ("pair", "caption")."""
    import pyarrow.parquet as pq

    columns = ["key", "order", "score"] + (dedup_columns(vectors) if vectors else [])
    t = pq.read_table(io.BytesIO(Store(scores_dir).read_bytes(scores_name(url))), columns=columns)
    out = {
        "keys": t.column("key").to_pylist(),
        "scores": t.column("score").to_numpy(),
        "priority": index * (1 << 32) + t.column("order").to_numpy().astype(np.int64),
    }
    for column, name in (("image_emb", "embs"), ("text_emb", "text_embs")):
        if column in columns:
            out[name] = _matrix(t, column)
    return out


def _matrix(t, column: str) -> np.ndarray:
    return np.asarray(t.column(column).combine_chunks().flatten(), np.float32).reshape(len(t), -1)


def dedup_vectors(scored: dict, on: str) -> np.ndarray:
    """What semantic deduplication compares: the image embeddings (SemDeDup), the pair's (image
    and caption embeddings side by side: a duplicate pair has a near image and a near caption), or
    the caption's alone (a duplicate has a near caption, whatever its image)."""
    dedup_columns(on)
    if on == "image":
        return scored["embs"]
    if on == "caption":
        return scored["text_embs"]
    return np.concatenate([normalised(scored["embs"]), normalised(scored["text_embs"])], axis=1)
