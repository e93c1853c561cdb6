"""Credentials never reach a log: a whole workflow with everything in S3 runs with sentinel AWS
credentials (so its Ray workers need them, and get them from the environment Ray was started in,
not from a runtime env), then the Ray session folder, the runs folder, the MLflow database, every
object in the bucket and the run's stdout/stderr are searched for the sentinels: zero hits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
KEY_ID = "AKIASENTINEL7Q3ZK2XW"
SECRET = "sentinel/Secret+Value9fJx3Lq2Rt8Wz5Hk1Mn4Bv7Cd0"


def _hits(folder: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:  # a socket, a file Ray removed meanwhile
                continue
            found += [f"{path}: {n.decode()}" for n in needles if n in data]
    return found


def test_sentinel_credentials_appear_in_no_log_record_or_database(s3_server, tmp_path):
    import shutil
    import tempfile

    from infra.storage import s3_client

    ray_tmp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's unix sockets live under it

    s3_client().create_bucket(Bucket="creds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_SESSION")}
    env.update(
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        RAY_TMPDIR=str(ray_tmp),
        AWS_EC2_METADATA_DISABLED="true",
    )
    sets = [
        f"runs_dir={tmp_path / 'runs'}",
        "storage=s3://creds/team",
        "data.limit=200",
        "data.shard_samples=100",
        "train.batch_size=16",
        "train.epochs=1",
        "train.checkpoint_every=2",
        "train.log_every=2",
        "model.vision_layers=1",
        "model.text_layers=1",
        "model.vision_width=64",
        "model.text_width=64",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "configs/clip_small.yaml",
            "--workflow-id",
            "creds",
            *[a for s in sets for a in ("--set", s)],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"== workflow creds done ==" in done.stdout

    needles = [KEY_ID.encode(), SECRET.encode()]
    session = list(ray_tmp.glob("ray/session_*"))
    assert session and any(p.name == "runtime_env_agent.log" for p in session[0].rglob("*"))  # the log Ray writes
    found = _hits(ray_tmp, needles) + _hits(tmp_path / "runs", needles)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert (tmp_path / "runs" / "mlflow.db").exists()
    client = s3_client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="creds")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("/model.pt") for k in keys) and any("/ray/checkpoint_" in k for k in keys)
    for key in keys:
        body = client.get_object(Bucket="creds", Key=key)["Body"].read()
        found += [f"s3://creds/{key}: {n.decode()}" for n in needles if n in body]
    found += [
        f"{name}: {n.decode()}"
        for name, out in (("stdout", done.stdout), ("stderr", done.stderr))
        for n in needles
        if n in out
    ]
    assert found == [], found
