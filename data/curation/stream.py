"""The curate step's selection streamed (data/curation/select.py's rules, choose()'s results): the
driver holds one shard's scores, the k-means fit sample and one cluster at a time, never the data.

1. score pass(es): the scores' histogram and summaries (data/curation/tally.py), then the scores
   in the threshold's bin alone (data/curation/threshold.py): the exact keep_fraction threshold;
2. kept pass: each shard's low scores counted (their examples, the known noise's), and, with
   dedup, a seeded reservoir of at most FIT_SAMPLE kept vectors (all of them, in input order,
   when they fit: then the clusters are choose()'s);
3. k-means on that sample, then each kept row, shard by shard, to its nearest centroid's files
   (vectors, priority, score, key) in the local folder `work`;
4. clusters one at a time: select.cluster_duplicates over the cluster by priority; each duplicate
   (with its cosine) to its shard's removals file in `work`, and to the tallies.

A Selection then gives any shard's removed keys alone (its low scores recomputed from the threshold,
its duplicates from its file): data/curation/write.py's write_shards writes from that.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from data.curation.reading import dedup_columns, dedup_vectors, shard_scores
from data.curation.select import cluster_duplicates, kmeans, normalised, refuse_if_most_are_duplicates
from data.curation.tally import RemovalTally, ScoreTally
from data.curation.threshold import check, threshold

FIT_SAMPLE = 50_000  # kept rows k-means is fitted on, at most


@dataclass
class Selection:
    threshold: float
    scores: ScoreTally
    removals: RemovalTally
    kept_by_score: int
    scores_dir: str
    urls: list[str]
    work: Path

    def removed_in(self, i: int) -> set[str]:
        """Shard i's removed keys: its low scores, and its semantic duplicates."""
        s = shard_scores(self.scores_dir, self.urls[i], i)
        low = np.asarray(s["scores"], dtype=np.float64) < self.threshold
        removed = {k for k, gone in zip(s["keys"], low) if gone}
        path = _removals_file(self.work, i)
        if path.exists():
            removed.update(json.loads(line) for line in path.read_text().splitlines())
        return removed


def _removals_file(work: Path, shard: int) -> Path:
    return work / "removed" / f"{shard:06d}.jsonl"


class Reservoir:
    """At most `size` rows of what is added: all of them in order while they fit, else a seeded
    uniform sample (reservoir sampling)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seen, self.rng = size, 0, np.random.default_rng([seed, 29])
        self.parts: list[np.ndarray] = []
        self.rows: Optional[np.ndarray] = None

    def add(self, x: np.ndarray) -> None:
        take = min(len(x), max(0, self.size - self.seen))
        if take:
            self.parts.append(x[:take])
        rest, before = x[take:], self.seen + take
        self.seen += len(x)
        if len(rest):
            rows = self.sample() if self.rows is None else self.rows
            self.rows, self.parts = rows, []
            j = self.rng.integers(0, before + np.arange(len(rest)) + 1)
            hit = j < self.size
            rows[j[hit]] = rest[hit]

    def sample(self) -> np.ndarray:
        if self.rows is not None:
            return self.rows
        return np.concatenate(self.parts) if self.parts else np.zeros((0, 1), np.float32)


def select_streamed(
    scores_dir: str,
    urls: list[str],
    work: Path,
    min_score: Optional[float],
    keep_fraction: Optional[float],
    n_clusters: int,
    eps: float,
    seed: int = 0,
    dedup_on: str = "image",
    noise: Optional[dict] = None,
) -> Selection:
    """choose()'s selection over the scores of `urls`, shard by shard, `work` (a local folder, empty
    or absent) for the clusters and the per-shard removals. Raises choose()'s refusal."""
    check(min_score, keep_fraction)
    for part in ("clusters", "removed"):  # an earlier run's, cut short
        shutil.rmtree(work / part, ignore_errors=True)
    dedup = eps > 0
    if dedup:
        dedup_columns(dedup_on)
    scores = ScoreTally(noise)
    for i, url in enumerate(urls):
        s = shard_scores(scores_dir, url, i)
        scores.add(s["scores"], s["priority"], s["keys"])
    if keep_fraction is not None:
        cut = threshold(scores.hist, lambda: (shard_scores(scores_dir, u, i)["scores"] for i, u in enumerate(urls)),
                        keep_fraction)  # fmt: skip
    else:
        cut = float(min_score)  # type: ignore[arg-type]  # check(): one of them is set
    removals, sample, kept = RemovalTally(noise), Reservoir(FIT_SAMPLE, seed), 0
    for i, url in enumerate(urls):
        s = shard_scores(scores_dir, url, i, dedup_on if dedup else None)
        low = np.asarray(s["scores"], dtype=np.float64) < cut
        rows = np.flatnonzero(low)
        removals.add([{"key": s["keys"][j], "reason": "low_clip_score", "score": float(s["scores"][j])} for j in rows],
                     s["priority"][rows])  # fmt: skip
        kept += int((~low).sum())
        if dedup:
            sample.add(normalised(dedup_vectors(s, dedup_on)[~low]))
    selection = Selection(cut, scores, removals, kept, scores_dir, list(urls), work)
    if dedup and kept > 1:
        found = _deduplicate(selection, sample, n_clusters, eps, seed, dedup_on)
        refuse_if_most_are_duplicates(found, kept, eps, dedup_on)
    return selection


def _deduplicate(sel: Selection, sample: Reservoir, n_clusters: int, eps: float, seed: int, dedup_on: str) -> int:
    """Steps 3 and 4: the duplicates found (each in its shard's removals file and the tallies)."""
    centroids, assign = kmeans(sample.sample(), n_clusters, seed=seed)
    all_fit, offset = sample.seen <= sample.size, 0
    files = ClusterFiles(sel.work / "clusters")
    for i, url in enumerate(sel.urls):
        s = shard_scores(sel.scores_dir, url, i, dedup_on)
        kept = np.flatnonzero(~(np.asarray(s["scores"], dtype=np.float64) < sel.threshold))
        x = normalised(dedup_vectors(s, dedup_on)[kept])
        # all kept rows fitted: k-means' own clusters (choose()'s); else the nearest centroid
        cluster = assign[offset : offset + len(x)] if all_fit else (x @ centroids.T).argmax(axis=1)
        offset += len(x)
        files.append(cluster, x, s["priority"][kept], s["scores"][kept], [s["keys"][j] for j in kept])
    found = 0
    for c in files.clusters():
        x, priority, scores, keys = files.load(c)
        order = np.argsort(priority, kind="stable")  # earliest first
        best, cosine = cluster_duplicates(x[order], eps)
        hits = np.flatnonzero(best >= 0)
        found += len(hits)
        rows, of = order[hits], order[best[hits]]
        records = [
            {"key": keys[r], "reason": "semantic_duplicate", "score": float(scores[r]), "duplicate_of": keys[o],
             "cosine": float(cosine[h])}
            for r, o, h in zip(rows, of, hits)
        ]  # fmt: skip
        views: list[dict[str, Any]] = [{"shard": int(priority[r]) >> 32, "of_shard": int(priority[o]) >> 32, "of_score": float(scores[o])}
                 for r, o in zip(rows, of)]  # fmt: skip
        sel.removals.add(records, priority[rows], views)
        by_shard: dict[int, list[str]] = {}
        for r, v in zip(records, views):
            by_shard.setdefault(v["shard"], []).append(json.dumps(r["key"]) + "\n")
        for shard, lines in by_shard.items():
            path = _removals_file(sel.work, shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write("".join(lines))
    return found


class ClusterFiles:
    """Rows by cluster, appended shard by shard under `root`: c<id>.f32 (vectors), .meta (priority,
    score), .keys (one JSON string a line)."""

    META = np.dtype([("priority", "<i8"), ("score", "<f4")])

    def __init__(self, root: Path):
        self.root, self.dim = root, 0
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, c: int, ext: str) -> Path:
        return self.root / f"c{c:05d}.{ext}"

    def append(self, cluster: np.ndarray, x: np.ndarray, priority: np.ndarray, scores: np.ndarray, keys: list) -> None:
        self.dim = x.shape[1]
        for c in np.unique(cluster):
            rows = np.flatnonzero(cluster == c)
            meta = np.empty(len(rows), self.META)
            meta["priority"], meta["score"] = priority[rows], scores[rows]
            with self._path(int(c), "f32").open("ab") as f:
                f.write(np.ascontiguousarray(x[rows], dtype="<f4").tobytes())
            with self._path(int(c), "meta").open("ab") as f:
                f.write(meta.tobytes())
            with self._path(int(c), "keys").open("a") as f:
                f.write("".join(json.dumps(keys[r]) + "\n" for r in rows))

    def clusters(self) -> list[int]:
        return sorted(int(p.stem[1:]) for p in self.root.glob("c*.meta"))

    def load(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(vectors [m, d], priority, score, keys) of cluster c."""
        meta = np.fromfile(self._path(c, "meta"), self.META)
        x = np.fromfile(self._path(c, "f32"), "<f4").reshape(len(meta), -1)
        keys = [json.loads(line) for line in self._path(c, "keys").read_text().splitlines()]
        return x, meta["priority"], meta["score"], keys
