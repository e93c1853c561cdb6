"""The sharder as an internet-scale job sees it: URLs served by a counting loopback server; one
request per record, none on a rerun, repeats of content across shards and input partitions
counted exactly, URL failures counted by reason, and a driver killed mid-run resumed without
rewriting what was complete."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.writing.sharder import shard_dataset
from tests.conftest import image_bytes
from tests.servers import ImageServer, free_port, wait_for
from tests.test_sharder import _cfg

ROOT = Path(__file__).resolve().parents[1]


def _write_manifest(path: Path, rows: list[dict], row_group_size: int = 7) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)  # several input partitions
    elif path.suffix == ".csv":
        path.write_text("url,caption\n" + "".join(f'{r["url"]},"{r["caption"]}"\n' for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tar_samples(out: Path, manifest: dict) -> dict[str, str]:
    """key -> sha256 of the source bytes, of every sample in the manifest's shards (checksums checked)."""
    got = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            data = (out / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
            with tarfile.open(out / shard["name"]) as tar:
                metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
                keys = [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".json")]
            assert len(keys) == shard["samples"]
            for k, meta in zip(keys, metas):
                assert k not in got
                got[k] = meta["sha256"]
    return got


@pytest.fixture()
def server():
    files = {f"/{i}.jpg": image_bytes(5000 + i) for i in range(40)}
    srv = ImageServer(files)
    yield srv
    srv.close()


def test_one_request_per_record_and_none_on_a_rerun(ray_local, server, tmp_path):
    rows = [{"url": f"{server.url}/{i}.jpg", "caption": f"picture {i}"} for i in range(40)]
    manifest = _write_manifest(tmp_path / "pairs.parquet", rows)
    cfg = _cfg(manifest, shard_samples=6, fetch_concurrency=8)
    m = shard_dataset(cfg, tmp_path / "out")
    assert m["samples"] == 40 and not m["rejected"]
    assert dict(server.counts) == {f"/{i}.jpg": 1 for i in range(40)}  # exactly one request per record
    assert len(_tar_samples(tmp_path / "out", m)) == 40
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = shard_dataset(cfg, tmp_path / "out")
    assert server.total() == 40  # the rerun read nothing
    assert again["splits"] == m["splits"] and again["shards_skipped"] == 7 and again["shards_written"] == 0
    assert {
        p.name: p.stat().st_mtime_ns
        for p in (tmp_path / "out").iterdir()
        if p.name in before and p.name not in ("manifest.json",)
    } == {k: v for k, v in before.items() if k != "manifest.json"}


@pytest.mark.parametrize("fmt, shuffle", [("parquet", False), ("csv", False), ("jsonl", False), ("parquet", True)])
def test_repeats_across_shards_and_partitions_are_counted_exactly(
    ray_local, server, tmp_path, fmt, shuffle, monkeypatch
):
    if shuffle:  # the Ray Data shuffle that large jobs use, not the driver's pass of small ones
        monkeypatch.setattr("data.writing.dedup.DRIVER_ROWS", 0)
    # 30 rows, 4 per shard, parquet row groups of 7: repeats inside a shard, across shards, across
    # row groups and across the train/eval split; the first in input order stays
    src = [0, 1, 2, 0, 3, 4, 5, 6, 1, 7, 8, 9, 10, 11, 12, 2, 13, 14, 15, 16, 17, 3, 18, 19, 20, 21, 22, 9, 23, 0]
    rows = [{"url": f"{server.url}/{s}.jpg", "caption": f"row {i}"} for i, s in enumerate(src)]
    manifest = _write_manifest(tmp_path / f"pairs.{fmt}", rows)
    out = tmp_path / "out"
    m = shard_dataset(_cfg(manifest, shard_samples=4, holdout_fraction=0.3), out)
    first = {}
    for i, s in enumerate(src):
        first.setdefault(s, i)
    expected_keys = {f"{i:02d}" for i in first.values()}
    assert m["rejected"] == {"duplicate": len(src) - len(first)}, m["rejected"]
    assert m["samples"] == len(first) and m["splits"]["eval"]["samples"] > 0
    got = _tar_samples(out, m)
    assert set(got) == expected_keys  # first occurrences, nothing else
    assert len(set(got.values())) == len(got)  # no content twice, in either split
    assert m["duplicates_across_shards"] == 5  # row 3 repeats row 0 inside shard 0; the rest across
    assert server.total() == len(src)  # the dedup fetched nothing
    again = shard_dataset(_cfg(manifest, shard_samples=4, holdout_fraction=0.3), out)
    assert again["rejected"] == m["rejected"] and again["splits"] == m["splits"] and server.total() == len(src)


def test_url_failures_are_counted_by_reason(ray_local, server, tmp_path):
    server.slow["/slow.jpg"] = 3.0
    server.files["/slow.jpg"] = image_bytes(1)
    closed = f"http://127.0.0.1:{free_port()}/x.jpg"  # nothing listens there
    rows = [{"url": f"{server.url}/{i}.jpg", "caption": f"ok {i}"} for i in range(3)] + [
        {"url": f"{server.url}/missing.jpg", "caption": "404"},
        {"url": f"{server.url}/slow.jpg", "caption": "slow"},
        {"url": closed, "caption": "refused"},
        {"url": f"{server.url}/missing2.jpg", "caption": "404 again"},
    ]
    manifest = _write_manifest(tmp_path / "pairs.jsonl", rows)
    m = shard_dataset(_cfg(manifest, http_timeout_s=0.5, http_retries=1), tmp_path / "out")
    assert m["samples"] == 3 and m["rejected"] == {"unreadable": 4}
    assert m["fetch_errors"] == {"http_404": 2, "timeout": 1, "connection_refused": 1}, m["fetch_errors"]
    assert server.counts["/missing.jpg"] == 1  # a 404 is not retried
    assert server.counts["/slow.jpg"] == 2  # a timeout is, once (http_retries=1)
    details = {r["key"]: r["detail"] for r in m["rejected_samples"]}
    assert "404" in details["3"] and "timed out" in details["4"] and "refused" in details["5"].lower()


def test_reads_in_flight_and_the_per_host_limit(ray_local, tmp_path):
    files = {f"/{i}.jpg": image_bytes(9000 + i) for i in range(32)}
    srv = ImageServer(files, latency_s=0.2)
    try:
        rows = [{"url": f"{srv.url}/{i}.jpg", "caption": f"picture {i}"} for i in range(32)]
        manifest = _write_manifest(tmp_path / "pairs.parquet", rows)
        m = shard_dataset(_cfg(manifest, shard_samples=16, fetch_concurrency=8), tmp_path / "a")
        assert m["samples"] == 32 and srv.max_active > 4  # many requests in flight per task
        srv.max_active = 0
        m = shard_dataset(_cfg(manifest, shard_samples=16, fetch_concurrency=8, fetch_per_host=2), tmp_path / "b")
        assert m["samples"] == 32 and 1 <= srv.max_active <= 4  # 2 tasks x 2 to this host
    finally:
        srv.close()


_CHILD = """
import sys
from infra.ray_cluster import init_ray
from pipelines.config import DataConfig
from data.writing.sharder import shard_dataset
init_ray(num_cpus=2)
shard_dataset(DataConfig(source=sys.argv[1], image_size=32, shard_samples=5, holdout_fraction=0.0, split_by=None,
                         min_image_size=16, fetch_concurrency=2), sys.argv[2])
"""


@pytest.mark.slow
def test_a_driver_killed_mid_run_resumes_without_rewriting_complete_shards(ray_local, tmp_path):
    files = {f"/{i}.jpg": image_bytes(7000 + i) for i in range(60)}
    srv = ImageServer(files, latency_s=0.5)  # 12 shards of 5, 2 requests in flight each: about 9 s
    try:
        rows = [{"url": f"{srv.url}/{i}.jpg", "caption": f"picture {i}"} for i in range(60)]
        manifest = _write_manifest(tmp_path / "pairs.parquet", rows)
        out = tmp_path / "out"
        ray_tmp = Path(os.path.realpath("/tmp")) / f"rk{os.getpid()}"
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(manifest), str(out)],
            cwd=ROOT,
            env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("two complete shards", lambda: len(list(out.glob("train-*.json"))) >= 2, timeout=180, every=0.2)
        os.killpg(child.pid, signal.SIGKILL)  # the driver and its local Ray
        child.wait()
        wait_for(
            "the killed Ray to stop",
            lambda: subprocess.run(["pgrep", "-s", str(child.pid)], capture_output=True).returncode != 0,
            timeout=60,
        )
        done = {p.name[:-5] for p in out.glob("train-*.json")}
        assert 2 <= len(done) < 12 and not (out / "manifest.json").exists()
        before = {n: (out / f"{n}.tar").stat() for n in done}
        first_requests = dict(srv.counts)
        m = shard_dataset(_cfg(manifest, fetch_concurrency=2), out)
        assert m["samples"] == 60 and m["shards_skipped"] == len(done) and m["shards_written"] == 12 - len(done)
        for n, st in before.items():  # complete shards: not written again
            now = (out / f"{n}.tar").stat()
            assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
        assert len(_tar_samples(out, m)) == 60 and not list(out.glob("*.tmp"))
        # the inputs of complete shards were requested once in all, the others at most twice
        done_rows = {int(n.split("-")[1]) * 5 + j for n in done for j in range(5)}
        for i in range(60):
            total = srv.counts[f"/{i}.jpg"]
            assert total == 1 if i in done_rows else 1 <= total <= 2, (i, total, first_requests.get(f"/{i}.jpg"))
    finally:
        srv.close()


def test_an_s3_parquet_manifest_is_read_by_ranges_and_s3_urls_the_same_way(ray_local, tmp_path):
    """A Parquet manifest in S3 (several row groups, read by ranged GETs) listing s3:// objects,
    sharded into S3: the same samples as from local files; a missing object is `not_found`."""
    from data.writing.sharder import read_manifest
    from infra.storage import Store, s3_client

    bucket = "t-parquet-ranges"
    s3_client().create_bucket(Bucket=bucket)
    for i in range(12):
        s3_client().put_object(Bucket=bucket, Key=f"img/{i}.jpg", Body=image_bytes(8000 + i))
    rows = [{"url": f"s3://{bucket}/img/{i}.jpg", "caption": f"object {i}"} for i in range(12)]
    rows.append({"url": f"s3://{bucket}/img/missing.jpg", "caption": "gone"})
    local = _write_manifest(tmp_path / "pairs.parquet", rows, row_group_size=4)
    s3_client().upload_file(str(local), bucket, "pairs.parquet")
    m = shard_dataset(_cfg(f"s3://{bucket}/pairs.parquet", shard_samples=5), f"s3://{bucket}/shards")
    assert m["samples"] == 12 and m["rejected"] == {"unreadable": 1} and m["fetch_errors"] == {"not_found": 1}
    assert read_manifest(f"s3://{bucket}/shards/manifest.json") == m
    store = Store(f"s3://{bucket}/shards")
    for shard in m["splits"]["train"]["shards"]:
        assert hashlib.sha256(store.read_bytes(shard["name"])).hexdigest() == shard["sha256"]
    assert set(store.list(".parquet")) == {f"train-{i:06d}.hashes.parquet" for i in range(3)}


def test_manifests_as_they_come(ray_local, server, tmp_path):
    """A JSONL manifest with a byte-order mark and a line separator (U+2028) inside a caption; a
    caption with a lone surrogate; a path with a NUL byte; a very elongated image; a CSV whose lines
    end in a bare CR (named, before any work)."""
    from data.reading.sources import SourceError

    long_img = tmp_path / "long.png"
    from PIL import Image

    Image.new("RGB", (16, 40000), (200, 10, 10)).save(long_img)  # cropped in the source, never grown
    rows = [
        {"url": f"{server.url}/0.jpg", "caption": "first\u2028line"},
        {"url": f"{server.url}/1.jpg", "caption": "x"},
        {"url": f"{server.url}/2.jpg", "caption": "bad \ud83d"},
        {"url": "a\u0000b.jpg", "caption": "nul"},
        {"url": str(long_img), "caption": "a tall stripe"},
    ]
    manifest = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r, ensure_ascii="\ud83d" in r["caption"]) for r in rows]  # the surrogate as "\ud83d"
    manifest.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n" for line in lines).encode())
    m = shard_dataset(_cfg(manifest, shard_samples=2), tmp_path / "out")
    assert m["samples"] == 3 and m["rejected"] == {"invalid_text": 1, "unreadable": 1}, m["rejected"]
    assert m["fetch_errors"] == {"bad_path": 1}
    captions = {}
    for shard in m["splits"]["train"]["shards"]:
        with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
            captions.update(
                {n.split(".")[0]: tar.extractfile(n).read().decode() for n in tar.getnames() if n.endswith(".txt")}
            )
    assert captions["0"] == "first line" and captions["4"] == "a tall stripe"
    cr = tmp_path / "old-mac.csv"
    cr.write_bytes(b"url,caption\r" + f"{server.url}/0.jpg,x\r".encode())
    with pytest.raises(SourceError, match=rf"{cr}: not a readable CSV file"):
        shard_dataset(_cfg(cr), tmp_path / "out2")
    assert server.total() == 3  # the URLs above, each once
