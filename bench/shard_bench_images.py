"""Synthetic inputs for bench/bench_shard_scale.py: distinct JPEGs (coloured blocks), distinct tiny
PNGs, and the Parquet manifests (`url`, `caption`) that list them. Made once per work folder: a
folder holding a `.complete` marker is reused as it is."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import re
import time
from pathlib import Path

RSS_FOLDER_FILES = 10_000


def _jpeg_blocks(i: int, width: int, height: int, quality: int) -> bytes:
    """A grid of flat coloured blocks, grid shape and colours seeded by `i`."""
    import io

    from PIL import Image, ImageDraw

    rng = random.Random(i)
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    cols, rows = rng.randint(2, 6), rng.randint(2, 5)
    for r in range(rows):
        for c in range(cols):
            box = (c * width // cols, r * height // rows, (c + 1) * width // cols - 1, (r + 1) * height // rows - 1)
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_jpegs(job: tuple) -> list[str]:
    folder, indices, width, height, quality = job
    digests = []
    for i in indices:
        data = _jpeg_blocks(i, width, height, quality)
        (Path(folder) / jpeg_name(i)).write_bytes(data)
        digests.append(hashlib.sha256(data).hexdigest())
    return digests


def _write_pngs(job: tuple) -> None:
    """Tiny PNGs: pixel (0, 0) is the index in base 256 (distinct up to 2**24), plus a gradient."""
    import numpy as np
    from PIL import Image

    folder, start, stop, size = job
    Path(folder).mkdir(parents=True, exist_ok=True)
    ramp = (np.add.outer(np.arange(size), np.arange(size)) * 4).astype(np.uint8)[..., None]
    for i in range(start, stop):
        base = np.array([i & 255, (i >> 8) & 255, (i >> 16) & 255], dtype=np.uint8)
        pixels = base + ramp  # uint8 wraps; ramp is 0 at (0, 0)
        Image.fromarray(pixels, "RGB").save(Path(folder) / f"{i:07d}.png", optimize=False)


def _parallel(fn, jobs: list) -> list:
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(fn, jobs, chunksize=1)


def jpeg_name(i: int) -> str:
    return f"{i:07d}.jpg"


def make_jpegs(folder: Path, n: int, width: int, height: int, quality: int) -> float:
    """N distinct JPEGs in `folder` (kept when already complete); returns seconds spent."""
    marker = folder / ".complete"
    if marker.exists():
        return 0.0
    t = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    step = 250
    jobs = [(str(folder), range(s, min(n, s + step)), width, height, quality) for s in range(0, n, step)]
    digests = [d for part in _parallel(_write_jpegs, jobs) for d in part]
    if len(set(digests)) != n:
        raise SystemExit(f"synthetic images are not distinct: {n - len(set(digests))} repeats")
    marker.touch()
    return time.time() - t


def jpeg_set(work: Path, n: int, width: int, height: int, quality: int) -> tuple[Path, float]:
    """A folder of at least N distinct JPEGs of this size and quality (images 0..N-1 are the same
    whichever folder holds them): a complete one already in `work`, or a new `images-N-WxH-qQ`;
    returns it and the seconds spent making it."""
    pattern = re.compile(rf"images-(\d+)-{width}x{height}-q{quality}")
    for folder in sorted(work.glob(f"images-*-{width}x{height}-q{quality}")):
        m = pattern.fullmatch(folder.name)
        if m and int(m.group(1)) >= n and (folder / ".complete").exists():
            return folder, 0.0
    folder = work / f"images-{n}-{width}x{height}-q{quality}"
    return folder, make_jpegs(folder, n, width, height, quality)


def make_rss_images(folder: Path, n: int, size: int = 16) -> tuple[list[str], float]:
    """N distinct tiny PNGs in sub-folders of 10k; returns their paths and seconds spent."""
    paths = [str(folder / f"{i // RSS_FOLDER_FILES:04d}" / f"{i:07d}.png") for i in range(n)]
    marker = folder / ".complete"
    if marker.exists():
        return paths, 0.0
    t = time.time()
    jobs = []
    for s in range(0, n, RSS_FOLDER_FILES // 4):  # quarter-folders: the pool stays busy at the end
        jobs.append((str(folder / f"{s // RSS_FOLDER_FILES:04d}"), s, min(n, s + RSS_FOLDER_FILES // 4), size))
    _parallel(_write_pngs, jobs)
    marker.touch()
    return paths, time.time() - t


def write_manifest(path: Path, urls: list[str], caption: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": urls, "caption": [caption.format(i=i) for i in range(len(urls))]}), path)
