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


def noise_metrics(keys: Iterable[str], removed: dict[str, dict], noise: dict) -> dict[str, float]:
    """`<reason>_precision` / `_recall` and the known noise's counts (`known_swapped_captions`,
    `known_copy_pairs`) of the scored `keys`, given choose()'s `removed` and known_noise()'s `noise`."""
    scored = set(keys)
    swapped = noise["swapped"] & scored
    pairs = [(c, o) for c, o in noise["copies"].items() if c in scored and o in scored]
    by_reason: dict[str, set] = {"low_clip_score": set(), "semantic_duplicate": set()}
    for k, r in removed.items():
        by_reason.setdefault(r["reason"], set()).add(k)
    low, dups = by_reason["low_clip_score"], by_reason["semantic_duplicate"]
    members = {k for pair in pairs for k in pair}
    seen = [p for p in pairs if not (set(p) & low)]  # both passed the score filter
    out = {"known_swapped_captions": float(len(swapped)), "known_copy_pairs": float(len(pairs))}
    ratios = {
        "low_clip_score_precision": (len(low & swapped), len(low)),
        "low_clip_score_recall": (len(low & swapped), len(swapped)),
        "semantic_duplicate_precision": (len(dups & members), len(dups)),
        "semantic_duplicate_recall": (sum(1 for p in seen if set(p) & dups), len(seen)),
    }
    out.update({name: hit / n for name, (hit, n) in ratios.items() if n})
    return out
