"""Pixels: an encoded image to the normalised array a model sees, one set of functions for training
(random resized crop), evaluation, CapFilt and serving (the centred square). The crop is drawn in
the image's full-size pixels and the image decoded at the size the crop needs (crop_resize)."""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def open_image(data: bytes) -> Image.Image:
    """An encoded image, opened: its size read from the header, nothing decoded yet."""
    return Image.open(io.BytesIO(data))


def random_box(w: int, h: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """A random crop of a w x h image: area fraction in `scale`, aspect ratio in `ratio` (ten tries,
    then the centred square)."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    return center_box(w, h)


def center_box(w: int, h: int) -> tuple[int, int, int, int]:
    s = min(w, h)
    return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s


def crop_resize(img: Image.Image, box, size: int) -> Image.Image:
    """`box` of `img` (in its full-size pixels) resized to size x size, RGB. An opened, not yet
    decoded JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose pixels still cover
    `box` at twice `size` in both directions, so the result is a full-size decode's up to JPEG
    rounding (tests/test_loader.py measures it); a box under four times `size` (the demo's 72 px
    shards cropped to 64) decodes at full size."""
    w, h = img.size
    bw, bh = box[2] - box[0], box[3] - box[1]
    drafted = img.draft("RGB", (max(1, math.ceil(2 * w * size / bw)), max(1, math.ceil(2 * h * size / bh))))
    f = drafted[1][2] / w if drafted else 1.0  # the decoded size over the full size
    return img.convert("RGB").resize(
        (size, size), Image.Resampling.BILINEAR, box=tuple(c * f for c in box) if f != 1.0 else box
    )


def random_resized_crop(img: Image.Image, size: int, scale, ratio, rng: random.Random) -> Image.Image:
    return crop_resize(img, random_box(*img.size, scale, ratio, rng), size)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centred square of `img` at size x size (what evaluation and serving see)."""
    return crop_resize(img, center_box(*img.size), size)


def eval_pixels(blob: bytes, size: int) -> np.ndarray:
    """An encoded image as evaluation, CapFilt and serving see it: RGB, the centred square at
    `size`, normalised (one function for all of them, so their pixels are the same)."""
    return to_array(center_crop(open_image(blob), size))


def to_array(img: Image.Image, jitter: float = 0.0, rng: random.Random | None = None) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32) / 255.0
    if jitter and rng is not None:
        x = x * rng.uniform(1 - jitter, 1 + jitter)  # brightness
        mean = x.mean()
        x = (x - mean) * rng.uniform(1 - jitter, 1 + jitter) + mean  # contrast
        np.clip(x, 0.0, 1.0, out=x)
    return ((x - MEAN) / STD).transpose(2, 0, 1)
