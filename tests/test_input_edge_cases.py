"""Inputs as careless or hostile users supply them: names that sanitise to one key, symbolic links
out of the source folder, file:// URLs, 16-bit PNGs, captions that are not UTF-8, and images just
above the documented decompression-bomb limit."""

import io
import json
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data.writing import imageops
from data.writing.sharder import shard_dataset, shard_urls
from tests.conftest import image_bytes
from tests.test_sharder import _cfg


def _members(manifest: Path) -> dict[str, dict]:
    """Every sample WebDataset reads back from the train shards, by key."""
    samples = {}
    for s in wds.DataPipeline(wds.SimpleShardList(shard_urls(manifest, "train")), wds.tarfile_to_samples()):
        assert s["__key__"] not in samples
        samples[s["__key__"]] = s
    return samples


def test_names_that_sanitise_alike_stay_distinct_samples(ray_local, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    names = ["a b", "a_b", "sub/a", "sub_a", "x日本", "x中国", "plain"]
    for i, name in enumerate(names):
        (src / f"{name}.png").write_bytes(image_bytes(i, fmt="PNG"))
        (src / f"{name}.txt").write_text(f"caption of {name}")
    m = shard_dataset(_cfg(src, shard_samples=3), tmp_path / "out")
    samples = _members(tmp_path / "out" / "manifest.json")
    assert m["samples"] == len(names) == len(samples) and not m["rejected"]  # the counts are what WebDataset reads
    assert sorted(s["txt"].decode() for s in samples.values()) == sorted(f"caption of {n}" for n in names)
    assert "plain" in samples and "a_b" in samples  # unchanged names keep their key
    assert all("." not in k and "/" not in k for k in samples)


def test_symbolic_links_out_of_the_folder_are_never_read(ray_local, tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(image_bytes(900))
    (outside / "secret.txt").write_text("SECRET CAPTION")
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    for i in range(3):
        (src / f"ok{i}.jpg").write_bytes(image_bytes(i))
        (src / f"ok{i}.txt").write_text(f"fine {i}")
    os.symlink(outside / "secret.jpg", src / "linked.jpg")  # an image that is a link out
    (src / "linked.txt").write_text("a caption of a linked image")
    (src / "own.jpg").write_bytes(image_bytes(901))  # a caption that is a link out
    os.symlink(outside / "secret.txt", src / "own.txt")
    os.symlink(outside, src / "dirlink")  # a folder that is a link out
    os.symlink(src / "ok0.jpg", src / "inner" / "alias.jpg")  # a link that stays inside: fine
    (src / "inner" / "alias.txt").write_text("the same picture again")
    m = shard_dataset(_cfg(src), tmp_path / "out")
    assert m["rejected"] == {"outside_source": 2, "duplicate": 1}, m["rejected"]
    outside_rejects = {r["key"]: r["detail"] for r in m["rejected_samples"] if r["reason"] == "outside_source"}
    assert (
        set(outside_rejects) == {"linked", "own"} and "symbolic link out of the source folder" in outside_rejects["own"]
    )
    blob = b"".join((tmp_path / "out" / s["name"]).read_bytes() for s in m["splits"]["train"]["shards"])
    assert b"SECRET CAPTION" not in blob and m["samples"] == 3


def test_file_urls_in_a_manifest_are_local_paths(ray_local, tmp_path):
    pics = tmp_path / "pics dir"
    pics.mkdir()
    rows = []
    for i in range(3):
        path = pics / f"img {i}.jpg"
        path.write_bytes(image_bytes(50 + i))
        rows.append({"url": "file://" + urllib.parse.quote(str(path)), "caption": f"file url {i}"})
    rows.append({"url": f"file://localhost{urllib.parse.quote(str(pics / 'img 0.jpg'))}", "caption": "again"})
    rows.append({"url": f"file://{pics / 'missing.jpg'}", "caption": "not there"})
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = shard_dataset(_cfg(manifest), tmp_path / "out")
    assert m["samples"] == 3 and m["rejected"] == {"duplicate": 1, "unreadable": 1}, m["rejected"]
    assert {json.loads(s["json"])["source"] for s in _members(tmp_path / "out" / "manifest.json").values()} == {
        str(pics / f"img {i}.jpg") for i in range(3)
    }


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # black to white, left to right
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    out = imageops.process_image(path.read_bytes(), 64, "center_crop", 16, 3.0, 95)
    got = np.asarray(Image.open(io.BytesIO(out.jpeg)).convert("L"), dtype=np.float64)
    expected = ramp / 257.0
    assert np.abs(got - expected).mean() < 2.0  # JPEG noise only; clipping left 98% of it at 255
    assert (got > 250).mean() < 0.05 and got[:, :8].mean() < 20 and got[:, -8:].mean() > 235


def test_captions_that_are_not_utf8_are_rejected_and_counted(ray_local, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, (name, payload) in enumerate(
        [
            ("latin1", "caf\u00e9 cr\u00e8me".encode("latin-1")),
            ("bom", "\ufeffwith a byte order mark".encode("utf-8")),
            ("plain", "just text".encode()),
        ]
    ):
        (src / f"{name}.jpg").write_bytes(image_bytes(70 + i))
        (src / f"{name}.txt").write_bytes(payload)
    (src / "badjson.jpg").write_bytes(image_bytes(80))
    (src / "badjson.json").write_bytes(b'{"caption": "caf\xe9"}')
    m = shard_dataset(_cfg(src), tmp_path / "out")
    assert m["rejected"] == {"unreadable_caption": 2}, m["rejected"]
    details = {r["key"]: r["detail"] for r in m["rejected_samples"]}
    assert "latin1.txt: not UTF-8" in details["latin1"] and "badjson.json: not UTF-8" in details["badjson"]
    captions = {k: s["txt"].decode() for k, s in _members(tmp_path / "out" / "manifest.json").items()}
    assert captions == {"bom": "with a byte order mark", "plain": "just text"}
    assert not any("\ufffd" in c for c in captions.values())


def test_the_enforced_pixel_limit_is_the_documented_one():
    def png(w, h):
        buf = io.BytesIO()
        Image.new("L", (w, h)).save(buf, format="PNG")
        return buf.getvalue()

    assert imageops.MAX_PIXELS == 64_000_000
    with pytest.raises(imageops.Rejected) as err:
        imageops.decode(png(8000, 8001))  # one row over the limit (PIL lets up to 2x through)
    assert err.value.reason == "too_large" and "8000x8001 = 64008000 pixels > 64000000" in str(err.value)
    assert imageops.decode(png(8000, 8000)).size == (8000, 8000)  # exactly the limit is fine
