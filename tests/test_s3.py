"""Shards in S3 (a real S3-compatible server on loopback): written with verified uploads, listed
in a manifest only when complete, streamed by the loader without a local copy."""

import base64
import hashlib
import json
import os

import pytest

from data.loading.loader import LoaderSpec, train_loader
from data.writing.sharder import read_manifest, shard_dataset, shard_urls
from infra.storage import StorageError, Store, s3_client
from tests.servers import free_port, port_open, wait_for
from tests.test_sharder import _cfg


@pytest.fixture()
def bucket(s3_server, request):
    name = "t-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:12]
    s3_client().create_bucket(Bucket=name)
    return name


def test_sharding_into_s3_matches_local_and_reruns_skip(ray_local, messy_folder, tmp_path, bucket):
    local = shard_dataset(_cfg(messy_folder), tmp_path / "local")
    uri = f"s3://{bucket}/runs/shards"
    remote = shard_dataset(_cfg(messy_folder), uri)
    assert remote["rejected"] == local["rejected"] and remote["splits"] == local["splits"]
    assert read_manifest(f"{uri}/manifest.json") == remote
    client = s3_client()
    for shard in remote["splits"]["train"]["shards"]:
        body = client.get_object(Bucket=bucket, Key=f"runs/shards/{shard['name']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == shard["sha256"]
    # a shard without its sidecar counts as incomplete: only it is written again
    client.delete_object(Bucket=bucket, Key="runs/shards/train-000001.json")
    again = shard_dataset(_cfg(messy_folder), uri)
    assert again["shards_written"] == 1 and again["shards_skipped"] == len(remote["splits"]["train"]["shards"]) - 1
    assert again["splits"] == remote["splits"]


def test_loader_streams_from_s3_like_from_disk(ray_local, messy_folder, tmp_path, bucket):
    shard_dataset(_cfg(messy_folder), tmp_path / "local")
    uri = f"s3://{bucket}/shards"
    shard_dataset(_cfg(messy_folder), uri)
    s3_urls = shard_urls(f"{uri}/manifest.json", "train")
    assert all(u.startswith(f"s3://{bucket}/shards/train-") for u in s3_urls)
    local_urls = shard_urls(tmp_path / "local" / "manifest.json", "train")

    def captions(urls, workers):
        spec = LoaderSpec(
            urls=tuple(urls), batch_size=4, image_size=32, context_length=12, epoch_samples=24, shuffle_buffer=8
        )
        return [c for b in train_loader(spec, workers) for c in b["caption"]]

    from_s3 = captions(s3_urls, 2)
    assert len(from_s3) == 24 and from_s3 == captions(local_urls, 2)


def test_multipart_upload_is_verified(s3_server, tmp_path, bucket):
    blob = os.urandom(20 * 1024 * 1024 + 123)  # > 8 MiB: a multipart upload
    path = tmp_path / "big.bin"
    path.write_bytes(blob)
    store = Store(f"s3://{bucket}/big")
    store.put_file(path, "big.bin")
    assert not path.exists() and store.read_bytes("big.bin") == blob
    assert store.list(".bin") == ["big.bin"]
    # 3 parts of 8 MiB (the last 4 MiB + 123 bytes): S3's multipart ETag is the MD5 of the parts'
    # MD5s with the part count, and the SHA-256 checksum the upload carried is the composite one,
    # base64(sha256(the parts' SHA-256 digests)) (real S3 appends "-3"; moto 5.2.5 does not)
    parts = [blob[i : i + 8 * 1024 * 1024] for i in range(0, len(blob), 8 * 1024 * 1024)]
    assert len(parts) == 3
    head = s3_client().head_object(Bucket=bucket, Key="big/big.bin", ChecksumMode="ENABLED")
    etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert head["ETag"] == f'"{etag}-3"'
    composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest())
    digest, _, count = head.get("ChecksumSHA256", "").partition("-")
    assert digest == composite.decode() and count in ("", "3"), head
    assert head.get("ChecksumType", "COMPOSITE") == "COMPOSITE"


def test_missing_bucket_fails_before_any_work(ray_local, messy_folder, s3_server, tmp_path, monkeypatch):
    import data.writing.sharder as sharder

    listed = []  # the source listing is the sharder's first piece of work
    real_list_records = sharder.list_records

    def recording_list_records(source, *args, **kwargs):
        listed.append(source)
        return real_list_records(source, *args, **kwargs)

    monkeypatch.setattr(sharder, "list_records", recording_list_records)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        shard_dataset(_cfg(messy_folder), "s3://no-such-bucket/shards")
    assert listed == []  # the source was not even listed
    assert "no-such-bucket" not in [b["Name"] for b in s3_client().list_buckets()["Buckets"]]
    # the recorder sees a run that does work (so the check above can fail)
    shard_dataset(_cfg(messy_folder), tmp_path / "local")
    assert listed == [str(messy_folder)]


@pytest.mark.slow
def test_clip_workflow_with_everything_in_s3(ray_local, tmp_path, bucket):
    """Shards, Ray Train checkpoints, step records, model and MLflow artifacts under the S3 prefix;
    a second machine (another local runs folder) finds the workflow done there."""
    from mlflow.tracking import MlflowClient

    from families.registry import load_model
    from pipelines.cli import build_workflow, main
    from pipelines.config import load_recipe

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    overrides = [
        f"storage=s3://{bucket}/team",
        "data.limit=300",
        "data.shard_samples=100",
        "train.batch_size=32",
        "train.epochs=1",
        "train.checkpoint_every=2",
        "train.log_every=2",
        "model.vision_layers=1",
        "model.text_layers=1",
    ]
    recipe = load_recipe(f"{root}/configs/clip_small.yaml", overrides + [f"runs_dir={tmp_path / 'a'}"])
    wf, uri = build_workflow(recipe, "s3wf")
    out = wf.run()
    keys = [
        o["Key"]
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    assert "team/s3wf/workflow.json" in keys and "team/s3wf/steps/pretrain.json" in keys
    assert any(k.startswith("team/s3wf/shard-") and k.endswith("/shards/manifest.json") for k in keys)
    assert any("/ray/checkpoint_" in k and k.endswith("train_state.json") for k in keys)
    assert out["pretrain"]["model"].startswith(f"s3://{bucket}/team/s3wf/pretrain-")
    assert any(k.startswith("team/mlartifacts/") and k.endswith("model/model.pt") for k in keys)
    model, _ = load_model(out["pretrain"]["model"])  # straight from S3
    assert model is not None
    client = MlflowClient(uri)
    run = client.get_run(wf.record("evaluate")["mlflow_run_id"])
    assert run.data.metrics["i2t_R5"] == pytest.approx(out["evaluate"]["metrics"]["i2t_R5"])

    # another machine: an empty local runs folder, the same storage
    recipe_b = load_recipe(f"{root}/configs/clip_small.yaml", overrides + [f"runs_dir={tmp_path / 'b'}"])
    wf_b, _ = build_workflow(recipe_b, "s3wf")
    assert wf_b.run() == out
    assert [wf_b.record(s)["attempts"] for s in ("shard", "pretrain", "evaluate")] == [1, 1, 1]
    assert main(["status", "--storage", f"s3://{bucket}/team"]) == 0

    # make pull: by workflow id, then by MLflow run id; resumable; evaluation reproduces the metrics
    from data.writing.sharder import shard_urls
    from families.clip.evaluate import evaluate_clip
    from pipelines.pull import pull

    storage = f"s3://{bucket}/team"
    got = pull("s3wf", storage, tmp_path / "pulled", uri)
    dest = tmp_path / "pulled" / "s3wf"
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "metrics.json", "model.pt", "recipe.json"]
    assert all(n > 0 for n in got["bytes"].values())
    full = (dest / "model.pt").read_bytes()
    (dest / "model.pt").unlink()
    (dest / "model.pt.part").write_bytes(full[: len(full) // 3])  # an interrupted pull
    again = pull(wf.record("pretrain")["mlflow_run_id"], storage, tmp_path / "pulled", uri)
    assert again["bytes"]["model.pt"] == len(full) - len(full) // 3  # only the rest was fetched
    assert again["bytes"]["metrics.json"] == 0  # finished files are not fetched
    assert (dest / "model.pt").read_bytes() == full
    pulled_model, mcfg = load_model(dest / "model.pt")
    urls = shard_urls(out["shard"]["manifest"], "eval")
    metrics = evaluate_clip(pulled_model, mcfg, recipe.eval, urls)
    assert metrics == pytest.approx(json.loads((dest / "metrics.json").read_text()))


@pytest.mark.slow
def test_mlflow_server_stores_artifacts_in_s3(s3_server, tmp_path, bucket):
    """`make mlflow-server STORAGE=s3://...`: a tracking server on 127.0.0.1 whose artifacts land in S3."""
    import signal
    import subprocess
    import time
    import urllib.request

    from infra.tracking import Tracker

    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MLFLOW_S3_ENDPOINT_URL=os.environ["AWS_ENDPOINT_URL"])
    proc = subprocess.Popen(
        ["make", "-s", "mlflow-server", f"MLFLOW_PORT={port}", f"STORAGE=s3://{bucket}"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        t = Tracker(f"http://127.0.0.1:{port}").start("server-test", "run")
        t.log_metrics({"loss": 1.5}, step=3)
        art = tmp_path / "note.txt"
        art.write_text("hello")
        t.log_artifact(art)
        t.end()
        assert t.metric_history("loss") == [(3, 1.5)]
        keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.startswith("mlflow/") and k.endswith("/note.txt") for k in keys), keys
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_s3_outage_mid_upload_leaves_no_truncated_object(ray_local, s3_server, tmp_path, bucket):
    """The S3 server is stopped for 2 s while a multipart upload and a sharding run are in flight,
    then restarted: both complete, and every object matches its checksum."""
    import threading
    import time

    from pipelines.config import load_recipe

    blob = os.urandom(64 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(blob)
    recipe = load_recipe(
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/clip_small.yaml"),
        ["data.limit=1200", "data.shard_samples=60"],
    )
    uri = f"s3://{bucket}/cut"
    errors, results = [], {}

    def upload():
        try:
            Store(uri).put_file(tmp_path / "big.bin", "big.bin")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def shard():
        try:
            results["manifest"] = shard_dataset(recipe.data, f"{uri}/shards")
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=upload), threading.Thread(target=shard)]
    threads[1].start()
    deadline = time.time() + 60
    while not Store(f"{uri}/shards").list(".json") and time.time() < deadline:
        time.sleep(0.05)  # wait until the first shard is written, so sharding is mid-way
    threads[0].start()
    while time.time() < deadline:  # cut once the multipart upload exists but is not complete
        ups = s3_client().list_multipart_uploads(Bucket=bucket, Prefix="cut/big.bin").get("Uploads", [])
        if ups:
            break
        time.sleep(0.02)
    sharding_unfinished = not Store(f"{uri}/shards").exists("manifest.json")
    s3_server.stop()
    in_flight = [t.is_alive() for t in threads]
    time.sleep(2)
    s3_server.start()
    for t in threads:
        t.join(timeout=300)
    assert ups and sharding_unfinished and in_flight == [True, True] and not errors, (in_flight, errors)
    assert Store(uri).read_bytes("big.bin") == blob
    m = results["manifest"]
    assert m["samples"] > 1000
    for split in m["splits"].values():
        for shard in split["shards"]:
            data = Store(f"{uri}/shards").read_bytes(shard["name"])
            assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_s3_sources_folder_prefix_and_manifest(ray_local, messy_folder, tmp_path, bucket):
    """An S3 prefix laid out like a folder shards exactly like the folder; an S3 manifest may list
    keys relative to itself and s3:// URLs."""
    from data.reading.source_fingerprint import source_fingerprint

    client = s3_client()
    for p in messy_folder.iterdir():
        client.upload_file(str(p), bucket, f"src/{p.name}")
    from data.reading.sources import list_records

    as_read = {r["key"]: (r["caption"], r["meta"]) for r in list_records(str(messy_folder))}
    assert {r["key"]: (r["caption"], r["meta"]) for r in list_records(f"s3://{bucket}/src")} == as_read
    local = shard_dataset(_cfg(messy_folder), tmp_path / "local")
    remote = shard_dataset(_cfg(f"s3://{bucket}/src"), tmp_path / "from-s3")
    assert remote["rejected"] == local["rejected"] and remote["samples"] == local["samples"]
    fp = source_fingerprint(f"s3://{bucket}/src")
    client.put_object(Bucket=bucket, Key="src/extra.txt", Body=b"x")
    assert source_fingerprint(f"s3://{bucket}/src") != fp  # a changed prefix reshards
    client.put_object(
        Bucket=bucket,
        Key="pairs.csv",
        Body=(
            "url,caption\nsrc/good00.jpg,relative key\n"
            f"s3://{bucket}/src/good01.jpg,absolute url\ns3://{bucket}/src/missing.jpg,gone\n"
        ).encode(),
    )
    m = shard_dataset(_cfg(f"s3://{bucket}/pairs.csv"), tmp_path / "from-manifest")
    assert m["samples"] == 2 and m["rejected"] == {"unreadable": 1}


def test_refused_credentials_stop_the_run_before_any_work(tmp_path):
    """Against an S3 server that checks credentials (moto with IAM auth on), a run with wrong keys
    exits at once naming the problem; nothing is sharded, Ray is not started."""
    import subprocess
    import sys

    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answering():
        assert server.poll() is None, f"moto_server exited with {server.returncode}"
        return port_open(port)

    try:
        wait_for("the moto server", answering, timeout=60, every=0.1)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(
            os.environ,
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="wrong",
            AWS_SECRET_ACCESS_KEY="wrong",
        )
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.cli",
                "run",
                "configs/clip_small.yaml",
                "--set",
                "storage=s3://team-bucket/runs",
                "--set",
                f"runs_dir={tmp_path}",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert r.returncode == 2
    assert "s3://team-bucket/runs: access refused (InvalidAccessKeyId): check the credentials" in r.stderr
    assert "[workflow" not in r.stdout and not list(tmp_path.iterdir())
