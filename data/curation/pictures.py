"""The curate step's pictures for MLflow (PNG files): the score histogram with the threshold (and,
when the source declares its noise, the swapped captions' scores apart), the lowest-scored pairs,
and the removed near-duplicates beside what they duplicate.

Images and captions are read only for the samples shown, and only from their shards: a score's
priority (shard index << 32 | order in the shard, read_scores) names its shard. The driver holds
one shard's bytes at a time and the few images drawn.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from data.curation.select import normalised
from data.curation.write import _samples
from infra.storage import Store

LOWEST = 16  # pairs in the lowest-scored grid
DUPLICATES = 8  # removed near-duplicate pairs shown
CAPTION_CHARS = 28  # per line under an image


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


def _wanted(scored: dict, rows: list[int]) -> dict[int, set[str]]:
    wanted: dict[int, set[str]] = {}
    for i in rows:
        wanted.setdefault(int(scored["priority"][i]) >> 32, set()).add(scored["keys"][i])
    return wanted


def _show(ax, img: Optional[Image.Image], text: str, colour: str = "black") -> None:
    if img is not None:
        ax.imshow(np.asarray(img))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(text, fontsize=7, color=colour)


def _caption(text: str, lines: int = 2) -> str:
    return "\n".join(textwrap.wrap(text, CAPTION_CHARS, max_lines=lines, placeholder="...") or ["(no caption)"])


def score_histogram(scores: np.ndarray, threshold: float, path: Path, swapped: Optional[np.ndarray] = None) -> Path:
    """Every score's histogram and the threshold; with `swapped` (a mask of the samples whose
    caption is known to be swapped) those apart, in their own colour."""
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    bins = np.histogram_bin_edges(scores, bins=50) if len(scores) else 10
    fig, ax = plt.subplots(figsize=(7, 4))
    if swapped is not None and swapped.any():
        ax.hist(scores[~swapped], bins=bins, color="tab:blue", alpha=0.7, label="other samples")
        ax.hist(scores[swapped], bins=bins, color="tab:red", alpha=0.7, label="swapped captions (known noise)")
    else:
        ax.hist(scores, bins=bins, color="tab:blue", alpha=0.8, label="samples")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel("image-text score (cosine)")
    ax.set_ylabel("samples")
    ax.set_title(f"curation scores ({len(scores)} samples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def lowest_grid(scored: dict, urls: list[str], path: Path, n: int = LOWEST, swapped: frozenset = frozenset()) -> Path:
    """The `n` lowest-scored pairs, each image with its caption and score underneath (a known
    swapped caption in red)."""
    plt = _pyplot()
    scores = scored["scores"]
    k = min(n, len(scores))
    rows = [int(i) for i in np.argsort(scores, kind="stable")[:k]] if k else []
    found = read_samples(urls, _wanted(scored, rows))
    cols = 4
    fig, axes = plt.subplots(max(1, -(-k // cols)), cols, figsize=(2.4 * cols, 2.9 * max(1, -(-k // cols))))
    axes = np.atleast_1d(axes).ravel()
    for ax, i in zip(axes, rows):
        key = scored["keys"][i]
        img, caption = found.get(key, (None, ""))
        mark = " (swapped)" if key in swapped else ""
        _show(ax, img, f"{_caption(caption)}\n{key}: score {scores[i]:.3f}{mark}", "red" if mark else "black")
    for ax in axes[len(rows) :]:
        ax.axis("off")
    fig.suptitle(f"the {k} lowest-scored pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def duplicate_grid(
    scored: dict, removed: dict[str, dict], urls: list[str], path: Path, n: int = DUPLICATES
) -> Optional[Path]:
    """Up to `n` removed near-duplicates, each beside the sample it duplicates, with their cosine
    and scores: the least similar removed pairs (those nearest the dedup cut, where a wrong
    removal would show first). None when nothing went as a duplicate."""
    dups = {k: r["duplicate_of"] for k, r in removed.items() if r["reason"] == "semantic_duplicate"}
    if not dups:
        return None
    plt = _pyplot()
    wanted = set(dups) | set(dups.values())
    index = {k: i for i, k in enumerate(scored["keys"]) if k in wanted}
    emb = scored["embs"]
    cos = {k: float(normalised(emb[[index[k]]])[0] @ normalised(emb[[index[o]]])[0]) for k, o in dups.items()}
    shown = sorted(dups, key=lambda k: (cos[k], k))[:n]
    found = read_samples(urls, _wanted(scored, [index[k] for k in shown] + [index[dups[k]] for k in shown]))
    rows = -(-len(shown) // 2)
    fig, axes = plt.subplots(rows, 4, figsize=(9.6, 2.9 * rows), squeeze=False)
    for j, k in enumerate(shown):
        left, right = axes[j // 2][2 * (j % 2)], axes[j // 2][2 * (j % 2) + 1]
        o = dups[k]
        _show(left, found.get(k, (None, ""))[0], f"removed {k}\ncos {cos[k]:.4f}, score {removed[k]['score']:.3f}")
        _show(right, found.get(o, (None, ""))[0], f"kept {o}\nscore {scored['scores'][index[o]]:.3f}")
    if len(shown) % 2:
        axes[-1][2].axis("off")
        axes[-1][3].axis("off")
    fig.suptitle(f"{len(shown)} of {len(dups)} removed near-duplicates (left) and what they duplicate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_pictures(scored: dict, removed: dict, threshold: float, urls: list[str], out: Path, noise=None) -> list[Path]:
    """The curate step's pictures under folder `out`: scores.png, lowest_scored.png and, when
    something went as a duplicate, duplicates.png. `noise`: known_noise()'s, or None."""
    out.mkdir(parents=True, exist_ok=True)
    swapped = frozenset(noise["swapped"]) if noise else frozenset()
    mask = np.fromiter((k in swapped for k in scored["keys"]), bool, len(scored["keys"])) if swapped else None
    paths = [
        score_histogram(scored["scores"], threshold, out / "scores.png", mask),
        lowest_grid(scored, urls, out / "lowest_scored.png", swapped=swapped),
        duplicate_grid(scored, removed, urls, out / "duplicates.png"),
    ]
    return [p for p in paths if p is not None]
