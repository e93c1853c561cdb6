"""`demo:emoji-noisy` (issue 29's measuring data): the stated fractions of swapped captions and
jittered copies, every one recorded, none in the held-out split, copies that are near-duplicates
an exact-content dedup keeps, and the same noise on every build."""

import json

import numpy as np
import pytest
from PIL import Image

from data.reading import noisy_demo
from data.reading.demo import demo_folder
from data.reading.sources import list_records
from data.writing.shard_task import split_of


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    dest = tmp_path_factory.mktemp("noisy") / "emoji-noisy"
    images = noisy_demo.render_emoji_noisy(dest, demo_folder("emoji"))
    return dest, images


def test_the_stated_fractions_of_noise_each_recorded(noisy):
    dest, images = noisy
    truth = json.loads((dest / noisy_demo.NOISE_FILE).read_text())
    n = truth["emoji"]
    assert n > 3000 and len(truth["swapped"]) == round(0.2 * n) == len(truth["copies"])
    assert images == n + len(truth["copies"]) == len(list(dest.glob("*.png")))
    metas = {p.stem: json.loads(p.read_text()) for p in dest.glob("*.json") if p.name != noisy_demo.NOISE_FILE}
    assert {s for s, m in metas.items() if m.get("noise") == "swapped_caption"} == set(truth["swapped"])
    assert {s for s, m in metas.items() if m.get("noise") == "jittered_copy"} == set(truth["copies"])
    assert not set(truth["swapped"]) & set(truth["copies"].values())  # a copy is of a clean sample
    for s, swap in truth["swapped"].items():
        giver = metas[swap["caption_of"]]
        assert metas[s]["caption"] == giver.get("true_caption", giver["caption"]) != swap["true_caption"]
        assert metas[s]["base"] != giver["base"]  # never a skin-tone variant's own caption
    for copy, s in truth["copies"].items():
        assert metas[copy]["caption"] == metas[s]["caption"] and metas[copy]["copy_of"] == s


def test_no_noise_reaches_the_held_out_split_up_to_half_held_out(noisy):
    dest, _ = noisy
    records = list_records(str(dest))
    noisy_records = [r for r in records if r["meta"].get("noise")]
    assert len(noisy_records) == 2 * round(0.2 * json.loads((dest / noisy_demo.NOISE_FILE).read_text())["emoji"])
    for holdout in (0.1, 0.3, 0.5):
        assert all(split_of(r, holdout, "base") == "train" for r in noisy_records), holdout
    clean_eval = [r for r in records if split_of(r, 0.1, "base") == "eval"]
    assert clean_eval and not any(r["meta"].get("noise") for r in clean_eval)


def test_a_jittered_copy_is_a_near_duplicate_with_other_bytes(noisy):
    dest, _ = noisy
    truth = json.loads((dest / noisy_demo.NOISE_FILE).read_text())
    diffs = []
    for copy, s in list(truth["copies"].items())[:40]:
        assert (dest / f"{copy}.png").read_bytes() != (dest / f"{s}.png").read_bytes()
        a, b = (np.asarray(Image.open(dest / f"{x}.png").convert("RGB"), dtype=np.float32) for x in (copy, s))
        assert a.shape == b.shape
        diffs.append(np.abs(a - b).mean())
    assert 0.0 < min(diffs) and np.median(diffs) < 40  # changed, yet close (of 255)


def test_every_build_puts_the_same_noise_in_the_same_places(noisy, tmp_path):
    dest, _ = noisy
    again = tmp_path / "again"
    noisy_demo.render_emoji_noisy(again, demo_folder("emoji"))
    assert (again / noisy_demo.NOISE_FILE).read_text() == (dest / noisy_demo.NOISE_FILE).read_text()
    copy = next(iter(json.loads((dest / noisy_demo.NOISE_FILE).read_text())["copies"]))
    assert (again / f"{copy}.png").read_bytes() == (dest / f"{copy}.png").read_bytes()


def test_sharded_the_copies_survive_exact_dedup_and_the_noise_travels_in_the_metadata(ray_local, tmp_path):
    from data.loading.shard_reading import eval_samples
    from data.writing.sharder import shard_dataset, shard_urls
    from pipelines.config import DataConfig

    cfg = DataConfig(source="demo:emoji-noisy", image_size=32, shard_samples=300, limit=900, split_by="base")
    manifest = shard_dataset(cfg, tmp_path / "out")
    meta = {}
    for split in ("train", "eval"):
        for s in eval_samples(shard_urls(tmp_path / "out" / "manifest.json", split)):
            meta[s["key"]] = (split, s["meta"])
    copies = {k for k, (_, m) in meta.items() if m.get("noise") == "jittered_copy"}
    swapped = {k for k, (_, m) in meta.items() if m.get("noise") == "swapped_caption"}
    assert len(copies) > 50 and len(swapped) > 50  # in the first 900 records
    assert all(meta[k][0] == "train" for k in copies | swapped)  # none held out
    repeats = {r["key"] for r in manifest["rejected_samples"] if r["reason"] == "duplicate"}
    gone = {meta[k][1]["copy_of"] for k in copies} - set(meta)
    taken = {r["key"] for r in list_records("demo:emoji-noisy")[:900]}  # "0751-copy.png" sorts before "0751.png"
    assert gone <= repeats | (gone - taken) and len(gone - taken) <= 1  # each original is kept too
    assert manifest["rejected"].get("duplicate", 0) < 10  # exact dedup takes the demo's own repeats only
