"""Hostile and careless inputs through the whole sharder: each bad record is one counted reject with
its reason, the other records of its task are kept, nothing waits on a FIFO or a dripping server
past its deadline, and names with odd schemes, bad recipes and a full disk are refused by name."""

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from config.typed import ConfigError
from data.writing.sharder import shard_dataset
from tests.conftest import image_bytes
from tests.hostile_server import HostileServer
from tests.test_sharder import _cfg


@pytest.fixture(scope="module")
def hostile():
    srv = HostileServer()
    yield srv
    srv.close()


def _samples(out: Path, manifest: dict) -> dict[str, dict]:
    """key -> {"txt", "json"} of every sample in the shards."""
    got: dict[str, dict] = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            with tarfile.open(out / shard["name"]) as tar:
                for m in tar.getmembers():
                    key, ext = m.name.split(".", 1)
                    got.setdefault(key, {})[ext] = tar.extractfile(m).read().decode("utf-8", "replace")
    return got


def test_a_hostile_jsonl_manifest_costs_one_reject_per_bad_record(ray_local, hostile, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    ok = [f"{hostile.url}/ok/{i}.jpg" for i in range(4)]
    lines = [
        json.dumps(r)
        for r in [
            {"url": ok[0], "caption": "a good one"},
            {"url": ok[1].replace("http://", "HTTP://"), "caption": "an upper-case scheme"},
            {"url": f"{hostile.url}/429-once/x.jpg", "caption": "after a Retry-After"},
            {"url": ok[2], "caption": "with alternatives", "alt_captions": ["one", "two"]},
            {"url": f"{hostile.url}/drip", "caption": "drip"},
            {"url": f"{hostile.url}/endless", "caption": "endless"},
            {"url": f"{hostile.url}/to-file", "caption": "redirected to a file"},
            {"url": str(fifo), "caption": "a FIFO"},
            {"url": "/dev/zero", "caption": "a device"},
            {"url": "gs://bucket/x.jpg", "caption": "another cloud"},
            {"url": ok[3], "caption": ["a cat", "a dog"]},
            {"url": ok[3], "caption": {"en": "a cat"}},
            {"url": ok[3], "caption": True},
            {"url": ok[3], "caption": 1984},
            {"url": ok[3], "caption": "\u200b \u200d\t"},
            {"url": ok[3], "caption": "x", "alt_captions": "a plain string"},
            {"url": ok[3], "caption": "x", "alt_captions": ["fine", 3]},
        ]
    ] + ["{not json", "[" * 100000 + "]" * 100000, "[1, 2]"]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = _cfg(manifest, shard_samples=100, http_timeout_s=1.0, http_retries=1, max_record_bytes=1 << 20)
    t = time.monotonic()
    m = shard_dataset(cfg, tmp_path / "out")
    assert time.monotonic() - t < 60
    assert m["input_records"] == len(lines) and m["samples"] == 4
    assert m["rejected"] == {
        "unreadable": 6,
        "caption_not_text": 4,
        "empty_caption": 1,
        "bad_alt_captions": 2,
        "bad_record": 3,
    }, m["rejected"]
    assert m["fetch_errors"] == {"timeout": 1, "record_too_large": 1, "unsupported_url": 2, "not_a_file": 2}
    got = _samples(tmp_path / "out", m)
    assert sorted(s["txt"] for s in got.values()) == [
        "a good one",
        "after a Retry-After",
        "an upper-case scheme",
        "with alternatives",
    ]
    alts = [json.loads(s["json"]).get("alt_captions") for s in got.values() if s["txt"] == "with alternatives"]
    assert alts == [["one", "two"]]
    details = " ".join(r["detail"] for r in m["rejected_samples"])
    assert "a list, not text" in details and "['a cat', 'a dog']" in details  # the reason names the type


def test_a_csv_with_a_huge_cell_and_string_alt_captions(ray_local, tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.jpg").write_bytes(image_bytes(700 + i))
    rows = [
        f'img/0.jpg,"{"long " * 200_000}",',
        'img/1.jpg,a fine caption,"[""alt one"", ""alt two""]"',
        "img/2.jpg,a plain alt string,just a string",
        "img/3.jpg,no alternatives,",
    ]
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("url,caption,alt_captions\n" + "\n".join(rows) + "\n")
    m = shard_dataset(_cfg(manifest), tmp_path / "out")
    assert m["samples"] == 2 and m["rejected"] == {"caption_too_long": 1, "bad_alt_captions": 1}
    metas = {s["txt"]: json.loads(s["json"]) for s in _samples(tmp_path / "out", m).values()}
    assert metas["a fine caption"]["alt_captions"] == ["alt one", "alt two"]
    assert "alt_captions" not in metas["no alternatives"]


def test_a_folder_with_fifos_for_an_image_and_a_sidecar(ray_local, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(image_bytes(800 + i))
        (src / f"{i}.txt").write_text(f"picture {i}")
    os.mkfifo(src / "pipe.jpg")
    (src / "pipe.txt").write_text("a pipe")
    (src / "1.txt").unlink()
    os.mkfifo(src / "1.txt")  # the sidecar is a FIFO: never opened for a blocking read
    t = time.monotonic()
    m = shard_dataset(_cfg(src), tmp_path / "out")
    assert time.monotonic() - t < 60
    assert m["samples"] == 2 and m["rejected"] == {"not_a_file": 1, "unreadable": 1}, m["rejected"]
    assert m["fetch_errors"] == {"not_a_file": 1}


def test_schemes_are_parsed_once_and_unknown_ones_refused_by_name(tmp_path):
    from infra.storage import Store
    from pipelines.config import load_recipe

    assert Store("S3://bucket/prefix").root == "s3://bucket/prefix" and Store("S3://bucket/x").s3
    assert Store(f"file://{tmp_path}/out").root == f"{tmp_path}/out"
    for bad in ("gs://bucket/x", "hdfs://nn/x", "ftp://h/x"):
        with pytest.raises(ValueError, match="unsupported scheme"):
            Store(bad)
        with pytest.raises(ConfigError, match=r"^--set storage=.*storage: .*unsupported scheme"):
            load_recipe(None, [f"storage={bad}"])
        with pytest.raises(ConfigError, match=r"data.source: .*unsupported scheme"):
            load_recipe(None, [f"data.source={bad}/pairs.parquet"])
    r = load_recipe(
        None, ["storage=S3://Bucket/runs", "data.source=S3://b/pairs.parquet", f"runs_dir=file://{tmp_path}"]
    )
    assert (r.storage, r.data.source, r.runs_dir) == ("s3://Bucket/runs", "s3://b/pairs.parquet", str(tmp_path))
    assert not (Path.cwd() / "S3:").exists() and not (Path.cwd() / "gs:").exists()


def test_recipes_and_set_values_are_bounded(tmp_path):
    from pipelines.config import load_recipe

    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    (tmp_path / "laughs.yaml").write_text("name: x\n" + laughs)
    t = time.monotonic()
    with pytest.raises(ConfigError, match=r"more than 100000 values \(aliases expanded\)"):
        load_recipe(tmp_path / "laughs.yaml")
    (tmp_path / "deep.yaml").write_text("name: x\nz: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load_recipe(tmp_path / "deep.yaml")
    with pytest.raises(ConfigError) as info:
        load_recipe(None, ["data.caption_column=" + "[" + "1, " * 20_000 + "1]"])
    assert len(str(info.value)) < 400 and "expected a string" in str(info.value)
    with pytest.raises(ConfigError, match="characters, more than"):
        load_recipe(None, ["data.source=" + "x" * (2 << 20)])
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match="fifo.yaml: not a regular file"):
        load_recipe(tmp_path / "fifo.yaml")
    assert time.monotonic() - t < 10


def test_a_full_disk_is_named_with_its_path(ray_local, tmp_path):
    """The shard's temporary tar is /dev/full (every write ENOSPC): the pass stops with the errno
    and the path, not with "keeps failing, see the worker logs"."""
    from data.reading.inputs import plan_inputs
    from data.writing.sharder import TASK_KEYS, _run_shard_tasks
    from infra.storage import StorageError

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(image_bytes(900 + i))
        (src / f"{i}.txt").write_text(f"picture {i}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-000000.tar.tmp").symlink_to("/dev/full")
    cfg = _cfg(src)
    task_cfg = {k: getattr(cfg, k) for k in TASK_KEYS}
    task_cfg.update(out=str(out), crash_on="")
    plan = plan_inputs(str(src), "url", "caption", 5)
    with pytest.raises(StorageError, match=r"No space left on device \(ENOSPC\): .*train-000000\.tar\.tmp"):
        _run_shard_tasks(plan, [0], task_cfg, 1)
