"""`demo:emoji-noisy`: the emoji demo with noise whose every instance is known, the data a curation
step is measured on (issue 29: CLIP-score filtering should find the swapped captions, semantic
deduplication the jittered copies).

- `SWAP_FRACTION` of the emoji have another emoji's caption (and alt captions): a derangement
  among them, never to an emoji of the same base (a skin-tone variant's caption is not noise).
  Their sidecar says `"noise": "swapped_caption"` and keeps the `true_caption`.
- `COPY_FRACTION` of the emoji (none of the swapped ones) appear a second time as `<stem>-copy`: a
  jittered copy (a crop of 85-95% of the area at a random place, scaled back, brightness and
  contrast within 10%), with the original's caption and base and `"noise": "jittered_copy"`,
  `"copy_of": "<stem>"`. Its bytes and pixels differ, so an exact-content dedup keeps it.
- Noise goes only on emoji whose `base` hashes to the upper half of the split hash
  (data/writing/shard_task.split_of): with `split_by: base` (the default) and any
  `holdout_fraction` up to 0.5, every noisy sample lands in `train` and the held-out split is the
  clean demo's, so held-out metrics measure models, not noise.
- `noise.json` at the folder's root lists them all (and the fractions and seed) for precision and
  recall.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageEnhance

from data.writing.shard_task import split_of

SWAP_FRACTION = 0.2  # of all the emoji
COPY_FRACTION = 0.2
SEED = 0
CLEAN_HOLDOUT_UP_TO = 0.5  # noise only where split_of(holdout 0.5, "base") says train
NOISE_FILE = "noise.json"


def eligible(stem: str, meta: dict) -> bool:
    """Noise may go here: its base hashes to train for every holdout_fraction up to 0.5."""
    return split_of({"key": stem, "meta": meta}, CLEAN_HOLDOUT_UP_TO, "base") == "train"


def jitter(img: Image.Image, rng: random.Random) -> Image.Image:
    """A near-duplicate: a random crop of 85-95% of the area, scaled back to the original size,
    brightness and contrast each within 10%."""
    w, h = img.size
    side = (rng.uniform(0.85, 0.95)) ** 0.5
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)
    rgb = ImageEnhance.Brightness(out.convert("RGB")).enhance(rng.uniform(0.9, 1.1))
    rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(0.9, 1.1))
    if out.mode == "RGBA":
        rgb.putalpha(out.getchannel("A"))
    return rgb


def derangement(stems: list[str], metas: dict, rng: random.Random) -> dict[str, str]:
    """stem -> the stem whose caption it gets: a cycle through a shuffled order, re-drawn until no
    emoji gets a caption of its own base."""
    for _ in range(1000):
        order = rng.sample(stems, len(stems))
        give = {s: order[(i + 1) % len(order)] for i, s in enumerate(order)}
        if all(metas[s]["base"] != metas[t]["base"] for s, t in give.items()):
            return give
    raise RuntimeError("no derangement across bases found")  # only with a handful of emoji


def render_emoji_noisy(dest: Path, emoji: Path) -> int:
    """The noisy folder at `dest` from the emoji demo folder `emoji`; returns its image count."""
    stems = sorted(p.stem for p in emoji.glob("*.png"))
    metas = {s: json.loads((emoji / f"{s}.json").read_text(encoding="utf-8")) for s in stems}
    rng = random.Random(SEED)
    pool = [s for s in stems if eligible(s, metas[s])]
    swapped = sorted(rng.sample(pool, round(SWAP_FRACTION * len(stems))))
    rest = [s for s in pool if s not in set(swapped)]
    copied = sorted(rng.sample(rest, round(COPY_FRACTION * len(stems))))
    give = derangement(swapped, metas, rng)

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for s in stems:
        shutil.copyfile(emoji / f"{s}.png", tmp / f"{s}.png")
        meta = dict(metas[s])
        if s in give:
            other = metas[give[s]]
            meta.update(caption=other["caption"], alt_captions=other["alt_captions"], noise="swapped_caption")
            meta["true_caption"] = metas[s]["caption"]
        (tmp / f"{s}.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    for s in copied:
        with Image.open(emoji / f"{s}.png") as img:
            jitter(img, rng).save(tmp / f"{s}-copy.png", compress_level=1)
        meta = dict(metas[s], noise="jittered_copy", copy_of=s)
        (tmp / f"{s}-copy.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    truth = {
        "swap_fraction": SWAP_FRACTION,
        "copy_fraction": COPY_FRACTION,
        "seed": SEED,
        "clean_holdout_up_to": CLEAN_HOLDOUT_UP_TO,
        "emoji": len(stems),
        "swapped": {s: {"caption_of": give[s], "true_caption": metas[s]["caption"]} for s in swapped},
        "copies": {f"{s}-copy": s for s in copied},
    }
    (tmp / NOISE_FILE).write_text(json.dumps(truth, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.rename(dest)
    return len(stems) + len(copied)
