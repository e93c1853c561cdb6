"""What curation removed, measured against a source's known noise (data/reading/known_noise.py).

Only the noise among the scored samples counts (the training split's: a limit or the held-out split
leaves the rest out), and a pair only when both of its samples were scored.

- `low_clip_score` against the swapped captions: precision, the share of the samples removed for
  a low score whose caption is swapped; recall, the share of the swapped captions removed so.
- `semantic_duplicate` against the planted copy pairs (copy, original): a removal is correct when
  the removed sample is either member of a pair: which one goes is input order's choice (the
  first kept), and a copy can come first. Recall is over the pairs both of whose samples passed
  the score filter (those dedup could see): the share with a member removed as a duplicate.

A precision with nothing removed for that reason, or a recall with no such noise, is undefined and
left out (never 1.0 by default).
"""

from __future__ import annotations

from typing import Iterable

from data.curation.tally import RemovalTally, noise_keys


def noise_metrics(keys: Iterable[str], removed: dict[str, dict], noise: dict) -> dict[str, float]:
    """`<reason>_precision` / `_recall` and the known noise's counts (`known_swapped_captions`,
    `known_copy_pairs`) of the scored `keys`, given choose()'s `removed` and known_noise()'s `noise`."""
    return measure(noise, noise_keys(noise) & set(keys), RemovalTally.of(removed, noise))


def measure(noise: dict, seen: set[str], removals: RemovalTally) -> dict[str, float]:
    """noise_metrics() from what a curation tallied: `seen`, the known noise's keys that were
    scored (ScoreTally.seen), and its removals (counts, and the known noise's keys removed)."""
    swapped = noise["swapped"] & seen
    pairs = [(c, o) for c, o in noise["copies"].items() if c in seen and o in seen]
    low, dups = removals.noise_removed["low_clip_score"], removals.noise_removed["semantic_duplicate"]
    n_low, n_dups = removals.counts["low_clip_score"], removals.counts["semantic_duplicate"]
    members = {k for pair in pairs for k in pair}
    seen_pairs = [p for p in pairs if not (set(p) & low)]  # both passed the score filter
    out = {"known_swapped_captions": float(len(swapped)), "known_copy_pairs": float(len(pairs))}
    ratios = {
        "low_clip_score_precision": (len(low & swapped), n_low),
        "low_clip_score_recall": (len(low & swapped), len(swapped)),
        "semantic_duplicate_precision": (len(dups & members), n_dups),
        "semantic_duplicate_recall": (sum(1 for p in seen_pairs if set(p) & dups), len(seen_pairs)),
    }
    out.update({name: hit / n for name, (hit, n) in ratios.items() if n})
    return out
