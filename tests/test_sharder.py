"""The Ray sharder on good and bad inputs: exact rejected counts, a correct manifest, safe reruns."""

import hashlib
import http.server
import json
import tarfile
import threading
from dataclasses import replace
from functools import partial

import pytest

from data.writing.sharder import shard_dataset, shard_urls
from pipelines.config import DataConfig
from tests.conftest import GOOD, image_bytes


def _cfg(source, **kw):
    base = dict(
        source=str(source),
        image_size=32,
        shard_samples=5,
        holdout_fraction=0.0,
        split_by=None,
        min_image_size=16,
        max_caption_chars=300,
    )
    base.update(kw)
    return DataConfig(**base)


def test_bad_inputs_are_counted_exactly(ray_local, messy_folder, tmp_path):
    m = shard_dataset(_cfg(messy_folder), tmp_path / "out")
    assert m["input_records"] == GOOD + 1 + 7
    assert m["rejected"] == {
        "undecodable": 2,
        "missing_caption": 1,
        "duplicate": 1,
        "too_small": 1,
        "empty_caption": 1,
        "caption_too_long": 1,
    }
    assert m["samples"] == GOOD + 1
    reasons = {s["key"]: s["reason"] for s in m["rejected_samples"]}
    assert reasons["corrupt"] == reasons["truncated"] == "undecodable"
    assert reasons["good03"] == "duplicate" and reasons["nocaption"] == "missing_caption"


def test_an_input_that_crashes_its_task_is_isolated_and_rejected(ray_local, messy_folder, tmp_path):
    # good05 kills the worker process whenever it is processed: the shard task is retried by Ray,
    # still fails, the input is found by bisection and rejected, and the rest of the shard is written
    m = shard_dataset(_cfg(messy_folder), tmp_path / "out", crash_on="good05.jpg")
    assert m["rejected"]["task_failed"] == 1
    assert m["samples"] == GOOD
    bad = [s for s in m["rejected_samples"] if s["reason"] == "task_failed"]
    assert [s["key"] for s in bad] == ["good05"]
    assert bad[0]["detail"].startswith("WorkerCrashedError"), bad[0]["detail"]


def test_manifest_matches_the_shards(ray_local, messy_folder, tmp_path):
    out = tmp_path / "out"
    m = shard_dataset(_cfg(messy_folder), out)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == m
    total, keys = 0, set()
    for shard in m["splits"]["train"]["shards"]:
        data = (out / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        with tarfile.open(out / shard["name"]) as tar:
            names = tar.getnames()
        stems = {n.split(".")[0] for n in names}
        assert len(stems) == shard["samples"] and len(names) == 3 * shard["samples"]
        keys |= stems
        total += shard["samples"]
    assert total == m["samples"] == len(keys)
    assert not list(out.glob("*.tmp"))
    assert m["stats"]["orig_width"]["min"] == 96
    # metadata travels with the sample
    metas = []
    for shard in m["splits"]["train"]["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            metas += [json.loads(tar.extractfile(n).read()) for n in tar.getnames() if n.endswith(".json")]
    png = [x for x in metas if x.get("label") == "x"]
    assert png and png[0]["orig_width"] == 96 and len(png[0]["sha256"]) == 64


def test_rerun_skips_complete_shards_and_redoes_partial_ones(ray_local, messy_folder, tmp_path):
    out = tmp_path / "out"
    first = shard_dataset(_cfg(messy_folder), out)
    names = [s["name"] for s in first["splits"]["train"]["shards"]]
    assert len(names) == 4  # 19 records after dedup, 5 per shard
    # simulate a crash while writing the second shard: its tar is partial, its sidecar missing
    (out / names[1]).unlink()
    (out / names[1].replace(".tar", ".json")).unlink()
    (out / (names[1] + ".tmp")).write_bytes(b"partial")
    second = shard_dataset(_cfg(messy_folder), out)
    assert second["shards_skipped"] == 3 and second["shards_written"] == 1
    assert second["splits"] == first["splits"] and second["rejected"] == first["rejected"]
    assert not list(out.glob("*.tmp"))


def test_holdout_split_keeps_groups_together(ray_local, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i:03d}.jpg").write_bytes(image_bytes(1000 + i))
        (src / f"{i:03d}.json").write_text(json.dumps({"caption": f"thing {i}", "base": f"group{i // 4}"}))
    m = shard_dataset(_cfg(src, holdout_fraction=0.3, split_by="base"), tmp_path / "out")
    assert m["splits"]["train"]["samples"] + m["splits"]["eval"]["samples"] == 40
    assert 0 < m["splits"]["eval"]["samples"] < 40
    groups = {}
    for split in ("train", "eval"):
        for url in shard_urls(tmp_path / "out" / "manifest.json", split):
            with tarfile.open(url) as tar:
                for n in tar.getnames():
                    if n.endswith(".json"):
                        groups.setdefault(json.loads(tar.extractfile(n).read())["base"], set()).add(split)
    assert all(len(s) == 1 for s in groups.values())


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def test_csv_manifest_with_http_urls(ray_local, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    for i in range(3):
        (www / f"{i}.jpg").write_bytes(image_bytes(2000 + i))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    (www / "local.jpg").write_bytes(image_bytes(3000))
    rows = [
        (f"{base}/0.jpg", "first"),
        (f"{base}/1.jpg", "second"),
        (f"{base}/2.jpg", "third"),
        (f"{base}/missing.jpg", "not there"),
        ("www/local.jpg", "a relative path"),
    ]
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("url,caption,extra\n" + "".join(f"{u},{c},e{i}\n" for i, (u, c) in enumerate(rows)))
    try:
        m = shard_dataset(_cfg(manifest, http_retries=1, http_timeout_s=5), tmp_path / "out")
    finally:
        server.shutdown()
    assert m["samples"] == 4 and m["rejected"] == {"unreadable": 1}
    assert "404" in m["rejected_samples"][0]["detail"]


def test_manifest_missing_column_names_the_field(ray_local, tmp_path):
    from data.reading.sources import SourceError

    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"image": "a.jpg", "caption": "x"}) + "\n")
    with pytest.raises(SourceError, match=r"no column 'url' \(data.url_column\)"):
        shard_dataset(_cfg(manifest), tmp_path / "out")
    m = shard_dataset(replace(_cfg(manifest), url_column="image"), tmp_path / "out2")
    assert m["rejected"] == {"unreadable": 1}


def test_image_only_folder_with_class_subfolders(ray_local, tmp_path):
    """ImageFolder layout without captions: no `.txt` members, the class from the folder name,
    counted per split; an image outside any class folder has no label and is rejected."""
    src = tmp_path / "src"
    for i in range(9):
        cls = ["cat", "dog", "emu"][i % 3]
        (src / cls).mkdir(parents=True, exist_ok=True)
        (src / cls / f"{i}.png").write_bytes(image_bytes(i, fmt="PNG"))
    (src / "loose.png").write_bytes(image_bytes(99, fmt="PNG"))
    cfg = _cfg(src, require_caption=False, label_field="folder", shard_samples=4)
    m = shard_dataset(cfg, tmp_path / "out")
    assert m["samples"] == 9 and m["rejected"] == {"missing_label": 1}
    assert m["splits"]["train"]["labels"] == {"cat": 3, "dog": 3, "emu": 3}
    members = []
    for url in shard_urls(tmp_path / "out" / "manifest.json", "train"):
        with tarfile.open(url) as tar:
            members += tar.getnames()
            meta = [json.loads(tar.extractfile(n).read()) for n in tar.getnames() if n.endswith(".json")]
            assert all(x["folder"] in {"cat", "dog", "emu"} for x in meta)
    assert len(members) == 18 and not any(n.endswith(".txt") for n in members)
    # shards are not one class each although the source lists the classes one after the other
    with tarfile.open(shard_urls(tmp_path / "out" / "manifest.json", "train")[0]) as tar:
        first = {json.loads(tar.extractfile(n).read())["folder"] for n in tar.getnames() if n.endswith(".json")}
    assert len(first) >= 2
    # captions stay required by default
    m = shard_dataset(_cfg(src), tmp_path / "out2")
    assert m["rejected"] == {"missing_caption": 10}
