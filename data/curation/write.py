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
from typing import Callable, Container, Optional

import numpy as np

from data.curation.reading import dedup_vectors, shard_scores
from data.curation.select import MAX_DUPLICATE_SHARE, duplicates_and_cosines, low_scores, refuse_if_most_are_duplicates
from data.curation.tally import EXAMPLES, RemovalTally
from data.writing.shard_io import write_tar_shard
from infra.storage import Store

__all__ = ["EXAMPLES", "MAX_DUPLICATE_SHARE", "choose", "dedup_vectors", "read_scores", "removal_counts"]


def read_scores(scores_dir: str, urls: list[str]) -> dict:
    """Every scored sample of `urls`, in input order: keys, scores, image and caption embeddings
    [n, d] and each sample's (shard index, order in the shard) as its priority. All in memory: for
    small data and tests; the curate step streams (data/curation/stream.py)."""
    shards = [shard_scores(scores_dir, url, i, "pair") for i, url in enumerate(urls)]

    def joined(name: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([s[name] for s in shards]) if shards else empty

    return {
        "keys": [k for s in shards for k in s["keys"]],
        "scores": joined("scores", np.zeros(0, np.float32)),
        "embs": joined("embs", np.zeros((0, 1), np.float32)),
        "text_embs": joined("text_embs", np.zeros((0, 1), np.float32)),
        "priority": joined("priority", np.zeros(0, np.int64)),
    }


def choose(
    scored: dict,
    min_score: Optional[float],
    keep_fraction: Optional[float],
    n_clusters: int,
    eps: float,
    seed: int = 0,
    dedup_on: str = "image",
) -> tuple[dict[str, dict], float]:
    """(key -> {"reason", "score", and "duplicate_of", "cosine"} of each removed sample, the score
    threshold), all in memory (the curate step streams the same rules: data/curation/stream.py).
    The score filter goes first; deduplication then runs on what it kept, so a low-scored sample is
    never the one a duplicate is kept for."""
    keys, scores = scored["keys"], scored["scores"]
    low, threshold = low_scores(scores, min_score, keep_fraction)
    removed = {keys[i]: {"reason": "low_clip_score", "score": float(scores[i])} for i in np.flatnonzero(low)}
    kept = np.flatnonzero(~low)
    if eps > 0 and len(kept) > 1:
        vectors = dedup_vectors(scored, dedup_on)[kept]
        dup_of, cosine = duplicates_and_cosines(vectors, scored["priority"][kept], n_clusters, eps, seed)
        refuse_if_most_are_duplicates(int((dup_of >= 0).sum()), len(kept), eps, dedup_on)
        for j in np.flatnonzero(dup_of >= 0):
            i = kept[j]
            removed[keys[i]] = {
                "reason": "semantic_duplicate",
                "score": float(scores[i]),
                "duplicate_of": keys[kept[dup_of[j]]],
                "cosine": float(cosine[j]),
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
    return write_shards(urls, lambda i: removed, out)


def write_shards(urls: list[str], removed_in: Callable[[int], Container[str]], out: str) -> list[dict]:
    """write_curated() given the removed keys of one shard at a time: `removed_in(i)`, shard i's
    (asked only for the shards written now)."""
    store, entries = Store(out), []
    store.remove_stale_tmp()  # a shard a kill cut short
    for i, url in enumerate(urls):
        parent, _, file = url.rpartition("/")
        name = file.removesuffix(".tar")
        if store.exists(f"{name}.json"):  # complete: its sidecar is written last
            entries.append(json.loads(store.read_text(f"{name}.json")))
            continue
        removed = removed_in(i)
        samples = [(k, m) for k, m in _samples(Store(parent).read_bytes(file)) if k not in removed]
        entries.append(write_tar_shard(out, name, samples))
    return entries


def removal_counts(removed: dict[str, dict]) -> tuple[dict[str, int], list[dict]]:
    """Removed samples by reason, and the first EXAMPLES of them (lowest score first, then the
    duplicates) for the manifest."""
    tally = RemovalTally.of(removed)
    return dict(tally.counts), tally.examples()
