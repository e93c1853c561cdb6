"""The curate step's pictures for MLflow (PNG files): the score histogram with the threshold (and,
when the source declares its noise, the swapped captions' scores apart), the lowest-scored pairs,
and the removed near-duplicates beside what they duplicate.

Drawn from a curation's tallies (data/curation/tally.py: the histogram's counts, the lowest scores,
the least similar duplicates with their recorded cosine), never the whole data; images and captions
are read only for the samples shown, and only from their shards (a priority, shard index << 32 |
order in the shard, names its shard). The driver holds one shard's bytes at a time and the few
images drawn.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from data.curation.select import normalised
from data.curation.tally import DUPLICATES, LOWEST, RemovalTally, ScoreTally
from data.curation.threshold import BINS
from data.curation.write import _samples
from infra.storage import Store

__all__ = ["DUPLICATES", "LOWEST", "draw_pictures", "draw_tallied", "read_samples"]
CAPTION_CHARS = 28  # per line under an image
HIST_BARS = 50


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_samples(urls: list[str], wanted: dict[int, set[str]]) -> dict[str, tuple[Image.Image, str]]:
    """key -> (image, caption) of the `wanted` keys of each shard index; only those shards are read."""
    out: dict[str, tuple[Image.Image, str]] = {}
    for shard in sorted(wanted):
        parent, _, file = urls[shard].rpartition("/")
        for key, members in _samples(Store(parent).read_bytes(file)):
            if key in wanted[shard] and "jpg" in members:
                with Image.open(io.BytesIO(members["jpg"])) as img:
                    out[key] = (img.convert("RGB"), members.get("txt", b"").decode("utf-8", "replace"))
    return out


def _wanted(shown: list[tuple[int, str]]) -> dict[int, set[str]]:
    """{shard: keys} of (shard, key) pairs."""
    wanted: dict[int, set[str]] = {}
    for shard, key in shown:
        wanted.setdefault(shard, set()).add(key)
    return wanted


def _show(ax, img: Optional[Image.Image], text: str, colour: str = "black") -> None:
    if img is not None:
        ax.imshow(np.asarray(img))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(text, fontsize=7, color=colour)


def _caption(text: str, lines: int = 2) -> str:
    return "\n".join(textwrap.wrap(text, CAPTION_CHARS, max_lines=lines, placeholder="...") or ["(no caption)"])


def _coarse(hist: np.ndarray, edges: Optional[tuple[int, int, int]] = None):
    """(counts, score edges) of about HIST_BARS bars over the occupied bins of a [BINS] histogram."""
    if edges is None:
        occupied = np.flatnonzero(hist)
        lo, hi = (int(occupied[0]), int(occupied[-1]) + 1) if len(occupied) else (BINS // 2 - 1, BINS // 2 + 1)
        edges = (lo, hi, max(1, math.ceil((hi - lo) / HIST_BARS)))
    lo, hi, width = edges
    starts = np.arange(lo, hi, width)
    return np.add.reduceat(hist[lo:hi], starts - lo), np.append(starts, hi) * (2.0 / BINS) - 1.0, edges


def score_histogram(scores: ScoreTally, threshold: float, path: Path) -> Path:
    """Every score's histogram and the threshold; the known swapped captions' scores (when there
    are) apart, in their own colour."""
    plt = _pyplot()
    counts, edges, bars = _coarse(scores.hist)
    fig, ax = plt.subplots(figsize=(7, 4))
    if scores.swapped_hist.any():
        other, _, _ = _coarse(scores.hist - scores.swapped_hist, bars)
        swapped, _, _ = _coarse(scores.swapped_hist, bars)
        ax.stairs(other, edges, fill=True, color="tab:blue", alpha=0.7, label="other samples")
        ax.stairs(swapped, edges, fill=True, color="tab:red", alpha=0.7, label="swapped captions (known noise)")
    else:
        ax.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8, label="samples")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel("image-text score (cosine)")
    ax.set_ylabel("samples")
    ax.set_title(f"curation scores ({scores.n} samples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def lowest_grid(scores: ScoreTally, urls: list[str], path: Path, swapped: frozenset = frozenset()) -> Path:
    """The LOWEST lowest-scored pairs, each image with its caption and score underneath (a known
    swapped caption in red)."""
    plt = _pyplot()
    rows = scores.lowest
    k = len(rows)
    found = read_samples(urls, _wanted([(priority >> 32, key) for _, priority, key in rows]))
    cols = 4
    fig, axes = plt.subplots(max(1, -(-k // cols)), cols, figsize=(2.4 * cols, 2.9 * max(1, -(-k // cols))))
    axes = np.atleast_1d(axes).ravel()
    for ax, (score, _, key) in zip(axes, rows):
        img, caption = found.get(key, (None, ""))
        mark = " (swapped)" if key in swapped else ""
        _show(ax, img, f"{_caption(caption)}\n{key}: score {score:.3f}{mark}", "red" if mark else "black")
    for ax in axes[len(rows) :]:
        ax.axis("off")
    fig.suptitle(f"the {k} lowest-scored pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def duplicate_grid(removals: RemovalTally, urls: list[str], path: Path) -> Optional[Path]:
    """Up to DUPLICATES removed near-duplicates, each beside the sample it duplicates, with their
    cosine and scores: the least similar removed pairs (those nearest the dedup cut, where a wrong
    removal would show first). None when nothing went as a duplicate."""
    shown = [view for _, _, view in removals.duplicates]
    if not shown:
        return None
    plt = _pyplot()
    found = read_samples(
        urls, _wanted([(v["shard"], v["key"]) for v in shown] + [(v["of_shard"], v["duplicate_of"]) for v in shown])
    )
    rows = -(-len(shown) // 2)
    fig, axes = plt.subplots(rows, 4, figsize=(9.6, 2.9 * rows), squeeze=False)
    for j, v in enumerate(shown):
        left, right = axes[j // 2][2 * (j % 2)], axes[j // 2][2 * (j % 2) + 1]
        k, o = v["key"], v["duplicate_of"]
        _show(left, found.get(k, (None, ""))[0], f"removed {k}\ncos {v['cosine']:.4f}, score {v['score']:.3f}")
        _show(right, found.get(o, (None, ""))[0], f"kept {o}\nscore {v['of_score']:.3f}")
    if len(shown) % 2:
        axes[-1][2].axis("off")
        axes[-1][3].axis("off")
    total = removals.counts["semantic_duplicate"]
    fig.suptitle(f"{len(shown)} of {total} removed near-duplicates (left) and what they duplicate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_tallied(
    scores: ScoreTally, removals: RemovalTally, threshold: float, urls: list[str], out: Path, noise=None
) -> list[Path]:
    """The curate step's pictures under folder `out`: scores.png, lowest_scored.png and, when
    something went as a duplicate, duplicates.png. `noise`: known_noise()'s, or None."""
    out.mkdir(parents=True, exist_ok=True)
    swapped = frozenset(noise["swapped"]) if noise else frozenset()
    paths = [
        score_histogram(scores, threshold, out / "scores.png"),
        lowest_grid(scores, urls, out / "lowest_scored.png", swapped=swapped),
        duplicate_grid(removals, urls, out / "duplicates.png"),
    ]
    return [p for p in paths if p is not None]


def draw_pictures(scored: dict, removed: dict, threshold: float, urls: list[str], out: Path, noise=None) -> list[Path]:
    """draw_tallied() from read_scores()' `scored` and choose()'s `removed`, in memory (a duplicate
    without a recorded cosine gets its image embeddings')."""
    scores = ScoreTally(noise)
    scores.add(np.asarray(scored["scores"]), np.asarray(scored["priority"]), scored["keys"])
    index = {k: i for i, k in enumerate(scored["keys"])}
    dups = [{"key": k, **r} for k, r in removed.items() if r["reason"] == "semantic_duplicate"]
    emb = scored.get("embs")

    def cosine(r: dict) -> float:
        if "cosine" in r:
            return r["cosine"]
        assert emb is not None, "a duplicate without its cosine needs scored['embs']"
        a, b = normalised(emb[[index[r["key"]], index[r["duplicate_of"]]]])
        return float(a @ b)

    removals = RemovalTally()
    dups = [{**r, "cosine": cosine(r)} for r in dups]
    shard = [int(p) >> 32 for p in scored["priority"]]
    views = [{"shard": shard[index[r["key"]]], "of_shard": shard[index[r["duplicate_of"]]],
              "of_score": float(scored["scores"][index[r["duplicate_of"]]])} for r in dups]  # fmt: skip
    removals.add(dups, [index[r["key"]] for r in dups], views)
    return draw_tallied(scores, removals, threshold, urls, out, noise)
