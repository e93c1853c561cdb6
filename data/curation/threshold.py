"""The score filter's threshold from streamed scores (data/curation/select.py's rule, exactly):
keep = max(1, round(keep_fraction * n)) samples, the threshold is the keep-th highest score, ties at
it kept. Two passes over the scores, never all of them at once: a fixed histogram of BINS bins over
[-1, 1] (scores outside go to the end bins) finds the bin that holds the keep-th highest score, then
the scores in that bin alone give its exact value."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np

BINS = 65_536


def check(min_score: Optional[float], keep_fraction: Optional[float]) -> None:
    if (min_score is None) == (keep_fraction is None):
        raise ValueError("curate: set exactly one of min_score and keep_fraction")
    if keep_fraction is not None and not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"curate.keep_fraction: must be > 0 and <= 1, got {keep_fraction}")


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin (monotone in the score)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=1.0)
    return np.clip(np.floor((s + 1.0) * (BINS / 2)), 0, BINS - 1).astype(np.int64)


def histogram(scores: np.ndarray) -> np.ndarray:
    """Counts per bin [BINS] of `scores`; histograms of parts add up to the whole's."""
    return np.bincount(score_bins(scores), minlength=BINS).astype(np.int64)


def keep_count(n: int, keep_fraction: float) -> int:
    return max(1, int(round(keep_fraction * n)))


def threshold(hist: np.ndarray, batches: Callable[[], Iterable[np.ndarray]], keep_fraction: float) -> float:
    """The keep-th highest score of all the scores `batches()` yields (a second pass over them),
    given their histogram; 0.0 when there are none."""
    n = int(hist.sum())
    if not n:
        return 0.0
    keep = keep_count(n, keep_fraction)
    at_or_above = np.cumsum(hist[::-1])[::-1]  # [b]: scores in bin b or higher
    b = int(np.flatnonzero(at_or_above >= keep)[-1])  # the highest bin reaching keep
    above = int(at_or_above[b] - hist[b])
    values = [s[score_bins(s) == b] for s in (np.asarray(x, dtype=np.float64) for x in batches())]
    in_bin = np.sort(np.concatenate(values))[::-1]
    return float(in_bin[keep - above - 1])
