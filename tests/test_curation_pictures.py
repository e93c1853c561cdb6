"""The curate step's pictures (data/curation/pictures.py): the score histogram, the lowest-scored
pairs and the removed near-duplicates as non-empty PNGs, drawn from scores made up here and real
shards; images and captions read only from the shards that hold the samples shown."""

import numpy as np
from PIL import Image

from data.curation.pictures import draw_pictures, read_samples
from data.writing.shard_io import write_tar_shard
from tests.conftest import image_bytes

PER = 10


def _shards(root, n=3):
    """n shards of PER samples (key s<shard>-<i>, caption 'thing <n>'); their urls."""
    for s in range(n):
        samples = [
            (f"s{s}-{i}", {"jpg": image_bytes(s * PER + i), "txt": f"thing {s * PER + i}".encode(), "json": b"{}"})
            for i in range(PER)
        ]
        write_tar_shard(str(root), f"train-{s:06d}", samples)
    return [str(root / f"train-{s:06d}.tar") for s in range(n)]


def _scored(n_shards=3, seed=0):
    rng = np.random.default_rng(seed)
    keys = [f"s{s}-{i}" for s in range(n_shards) for i in range(PER)]
    scores = rng.uniform(0.2, 0.4, len(keys)).astype(np.float32)
    priority = np.array([s * (1 << 32) + i for s in range(n_shards) for i in range(PER)], dtype=np.int64)
    return {"keys": keys, "scores": scores, "embs": rng.normal(size=(len(keys), 8)), "priority": priority}


def _png(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with Image.open(path) as img:
        return img.size


def test_the_pictures_are_pngs_read_from_the_shards_shown_only(tmp_path):
    urls = _shards(tmp_path / "shards")
    scored = _scored()
    # the 6 lowest scores and both duplicate pairs live in shards 0 and 2: shard 1 is never read
    scored["scores"][[1, 4, 7, 20, 22, 25]] = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    scored["scores"][PER : 2 * PER] = 0.9
    removed = {
        "s2-3": {"reason": "semantic_duplicate", "score": 0.3, "duplicate_of": "s0-2"},
        "s2-9": {"reason": "semantic_duplicate", "score": 0.3, "duplicate_of": "s0-8"},
        "s0-1": {"reason": "low_clip_score", "score": 0.01},
    }
    urls[1] = str(tmp_path / "nowhere" / "train-000001.tar")  # read it and the test fails
    noise = {"swapped": {"s0-4", "s2-0", "s2-5"}, "copies": {}}
    paths = draw_pictures(scored, removed, 0.25, urls, tmp_path / "pictures", noise)
    assert [p.name for p in paths] == ["scores.png", "lowest_scored.png", "duplicates.png"]
    sizes = [_png(p) for p in paths]
    assert all(w >= 400 and h >= 200 for w, h in sizes)

    # nothing removed as a duplicate, no known noise: two pictures
    paths = draw_pictures(_scored(1), {}, 0.3, urls[:1], tmp_path / "clean")
    assert [p.name for p in paths] == ["scores.png", "lowest_scored.png"] and all(_png(p) for p in paths)


def test_read_samples_gives_the_wanted_images_and_captions(tmp_path):
    urls = _shards(tmp_path / "shards", n=2)
    found = read_samples(urls, {1: {"s1-3", "s1-7", "absent"}})
    assert sorted(found) == ["s1-3", "s1-7"]
    img, caption = found["s1-7"]
    assert caption == "thing 17" and img.size == (96, 80) and img.mode == "RGB"
    assert read_samples(urls, {}) == {}
