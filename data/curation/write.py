"""Curated shards: the scores of every training shard (data/curation/score.py) decide what goes
(data/curation/select.py), and each shard is written again without it, sample bytes unchanged, with
a manifest in the shard step's format: the training split's new shards, the held-out split's
original shards (by their full names: never curated), and the removed samples counted by reason
(`low_clip_score`, `semantic_duplicate`) with examples.

A shard whose sidecar is written is complete: a rerun writes only the others.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from typing import Optional

import numpy as np

from data.curation.score import scores_name
from data.curation.select import low_scores, normalised, semantic_duplicates
from data.writing.shard_io import write_tar_shard
from infra.storage import Store

EXAMPLES = 20  # removed samples named in the manifest
# more than this share of samples as semantic duplicates is a scorer that cannot tell images apart,
# not data (SemDeDup finds about half of LAION removable at its loosest setting)
MAX_DUPLICATE_SHARE = 0.5


def read_scores(scores_dir: str, urls: list[str]) -> dict:
    """Every scored sample of `urls`, in input order: keys, scores, image and caption embeddings
    [n, d] and each sample's (shard index, order in the shard) as its priority."""
    import pyarrow.parquet as pq

    store = Store(scores_dir)
    keys: list[str] = []
    scores, embs, text_embs, priority = [], [], [], []
    for i, url in enumerate(urls):
        t = pq.read_table(io.BytesIO(store.read_bytes(scores_name(url))))
        keys += t.column("key").to_pylist()
        scores.append(t.column("score").to_numpy())
        embs.append(_matrix(t, "image_emb"))
        text_embs.append(_matrix(t, "text_emb"))
        priority.append(i * (1 << 32) + t.column("order").to_numpy())
    return {
        "keys": keys,
        "scores": np.concatenate(scores) if scores else np.zeros(0, np.float32),
        "embs": np.concatenate(embs) if embs else np.zeros((0, 1), np.float32),
        "text_embs": np.concatenate(text_embs) if text_embs else np.zeros((0, 1), np.float32),
        "priority": np.concatenate(priority) if priority else np.zeros(0, np.int64),
    }


def _matrix(t, column: str) -> np.ndarray:
    return np.asarray(t.column(column).combine_chunks().flatten(), np.float32).reshape(len(t), -1)


def dedup_vectors(scored: dict, on: str) -> np.ndarray:
    """What semantic deduplication compares: the image embeddings (SemDeDup), or the pair's (image
    and caption embeddings side by side: a duplicate pair has a near image and a near caption)."""
    if on == "image":
        return scored["embs"]
    if on == "pair":
        return np.concatenate([normalised(scored["embs"]), normalised(scored["text_embs"])], axis=1)
    raise ValueError(f"curate.dedup_on: {on!r} is not 'image' or 'pair'")


def choose(
    scored: dict,
    min_score: Optional[float],
    keep_fraction: Optional[float],
    n_clusters: int,
    eps: float,
    seed: int = 0,
    dedup_on: str = "image",
) -> tuple[dict[str, dict], float]:
    """(key -> {"reason", "score", and "duplicate_of"} of each removed sample, the score threshold).
    The score filter goes first; deduplication then runs on what it kept, so a low-scored sample is
    never the one a duplicate is kept for."""
    keys, scores = scored["keys"], scored["scores"]
    low, threshold = low_scores(scores, min_score, keep_fraction)
    removed = {keys[i]: {"reason": "low_clip_score", "score": float(scores[i])} for i in np.flatnonzero(low)}
    kept = np.flatnonzero(~low)
    if eps > 0 and len(kept) > 1:
        vectors = dedup_vectors(scored, dedup_on)[kept]
        dup_of = semantic_duplicates(vectors, scored["priority"][kept], n_clusters, eps, seed)
        if (dup_of >= 0).mean() > MAX_DUPLICATE_SHARE:
            raise ValueError(
                f"curate.dedup_eps: {int((dup_of >= 0).sum())} of {len(kept)} samples would go as semantic duplicates "
                f"(cosine above {1 - eps:.4f} of their {dedup_on} embeddings): the scorer sees them nearly all alike "
                f"(an undertrained teacher: raise curate.teacher_epochs; or curate.dedup_on: pair), or dedup_eps {eps} "
                "is too large for them"
            )
        for j in np.flatnonzero(dup_of >= 0):
            i = kept[j]
            removed[keys[i]] = {
                "reason": "semantic_duplicate",
                "score": float(scores[i]),
                "duplicate_of": keys[kept[dup_of[j]]],
            }
    return removed, threshold


def _samples(data: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """A tar shard's samples (key, {extension: bytes}) in order, as WebDataset groups them."""
    out: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if not out or out[-1][0] != key:
                out.append((key, {}))
            f = tar.extractfile(m)
            out[-1][1][ext] = f.read() if f else b""
    return out


def write_curated(urls: list[str], removed: dict[str, dict], out: str) -> list[dict]:
    """Each shard of `urls` again under `out` without the `removed` keys; the new shards' manifest
    entries, in order (a shard complete from an earlier run is not written again)."""
    store, entries = Store(out), []
    store.remove_stale_tmp()  # a shard a kill cut short
    for url in urls:
        parent, _, file = url.rpartition("/")
        name = file.removesuffix(".tar")
        if store.exists(f"{name}.json"):  # complete: its sidecar is written last
            entries.append(json.loads(store.read_text(f"{name}.json")))
            continue
        samples = [(k, m) for k, m in _samples(Store(parent).read_bytes(file)) if k not in removed]
        entries.append(write_tar_shard(out, name, samples))
    return entries


def removal_counts(removed: dict[str, dict]) -> tuple[dict[str, int], list[dict]]:
    """Removed samples by reason, and the first EXAMPLES of them (lowest score first, then the
    duplicates) for the manifest."""
    counts = Counter(r["reason"] for r in removed.values())
    examples = sorted(
        ({"key": k, **r} for k, r in removed.items()), key=lambda r: (r["reason"] != "low_clip_score", r["score"])
    )
    return dict(counts), examples[:EXAMPLES]
