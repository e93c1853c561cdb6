"""Bounded summaries of a curation, added to shard by shard (or cluster by cluster), never the whole
data: the scores' histogram (and the known swapped captions' own), the LOWEST lowest-scored samples,
the removals' counts by reason, the manifest's EXAMPLES, the DUPLICATES least similar removed
duplicates (for the pictures), and which samples of the source's known noise were scored or removed
(sets the size of the known noise, small by nature)."""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from data.curation.threshold import BINS, histogram

LOWEST = 16  # pairs in the lowest-scored picture
DUPLICATES = 8  # removed near-duplicate pairs in the duplicates picture
EXAMPLES = 20  # removed samples named in the manifest


def noise_keys(noise: Optional[dict]) -> set[str]:
    if not noise:
        return set()
    return set(noise["swapped"]) | set(noise["copies"]) | set(noise["copies"].values())


class ScoreTally:
    """Every scored sample's score, summarised: `n`, `hist` [BINS], `swapped_hist` (the known
    swapped captions'), `lowest` [(score, priority, key)] lowest first, `seen` (the known noise's
    keys that were scored)."""

    def __init__(self, noise: Optional[dict] = None):
        self.n = 0
        self.hist = np.zeros(BINS, np.int64)
        self.swapped_hist = np.zeros(BINS, np.int64)
        self.lowest: list[tuple[float, int, str]] = []
        self.swapped = set(noise["swapped"]) if noise else set()
        self.noise_keys = noise_keys(noise)
        self.seen: set[str] = set()

    def add(self, scores: np.ndarray, priority: np.ndarray, keys: Sequence[str]) -> None:
        self.n += len(scores)
        self.hist += histogram(scores)
        if self.noise_keys:
            hits = [i for i, k in enumerate(keys) if k in self.noise_keys]
            self.seen.update(keys[i] for i in hits)
            self.swapped_hist += histogram(scores[[i for i in hits if keys[i] in self.swapped]])
        rows = np.argsort(scores, kind="stable")[:LOWEST]
        new = [(float(scores[i]), int(priority[i]), keys[i]) for i in rows]
        self.lowest = heapq.nsmallest(LOWEST, self.lowest + new)


class RemovalTally:
    """The removals, summarised: counts by reason, the EXAMPLES first by removal_counts' rule
    (lowest-scored low_clip_score first, then duplicates by score, ties by `seq`), the DUPLICATES
    least similar duplicates (cosine, key, view), the known noise's removed keys by reason."""

    def __init__(self, noise: Optional[dict] = None):
        self.counts: Counter = Counter()
        self._examples: list[tuple[bool, float, int, dict]] = []
        self.duplicates: list[tuple[float, str, dict]] = []
        self.noise_keys = noise_keys(noise)
        self.noise_removed: dict[str, set[str]] = {"low_clip_score": set(), "semantic_duplicate": set()}

    @classmethod
    def of(cls, removed: dict[str, dict], noise: Optional[dict] = None) -> "RemovalTally":
        """The tally of choose()'s `removed` (key -> record), in its order."""
        tally = cls(noise)
        tally.add([{"key": k, **r} for k, r in removed.items()], range(len(removed)))
        return tally

    def add(self, records: list[dict], seqs: Iterable[Any], views: Optional[list[dict]] = None) -> None:
        """`records`: {"key", "reason", "score", ...} each; `seqs`: their order for ties; `views`
        (duplicates, for the picture): {"shard", "of_shard", "of_score"} of each."""
        self.counts.update(r["reason"] for r in records)
        for r in records:
            if r["key"] in self.noise_keys:
                self.noise_removed.setdefault(r["reason"], set()).add(r["key"])
        new = [(r["reason"] != "low_clip_score", r["score"], s, r) for r, s in zip(records, seqs)]
        self._examples = heapq.nsmallest(EXAMPLES, self._examples + new, key=lambda e: e[:3])
        if views is not None:
            shown = [(r["cosine"], r["key"], {**v, **r}) for r, v in zip(records, views)]
            self.duplicates = heapq.nsmallest(DUPLICATES, self.duplicates + shown, key=lambda e: e[:2])

    def examples(self) -> list[dict]:
        return [e[3] for e in self._examples]
