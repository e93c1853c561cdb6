"""Empty or broken data stops the workflow with a reason: a shard step that leaves no training
(or no held-out) samples ends the workflow after that step with the counts by reject reason; a
missing source, an s3:// source without credentials and an unknown demo set are refused before Ray
starts; a manifest that is not UTF-8 is named in the error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import build_workflow
from pipelines.config import load_recipe
from pipelines.workflow import WorkflowStopped
from tests.conftest import image_bytes

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "configs/clip_small.yaml"


def _run(tmp_path, source, *overrides, wf_id="empty"):
    recipe = load_recipe(
        CLIP, [f"runs_dir={tmp_path / 'runs'}", f"data.source={source}", "data.split_by=null", *overrides]
    )
    wf, _ = build_workflow(recipe, wf_id)
    with pytest.raises(WorkflowStopped) as err:
        wf.run()
    return wf, str(err.value)


def _records(tmp_path, wf_id="empty"):
    steps = tmp_path / "runs" / wf_id / "steps"
    return {p.stem: json.loads(p.read_text())["status"] for p in steps.glob("*.json")}


def test_every_input_unreadable_stops_after_sharding_with_the_counts(ray_local, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not an image %d" % i * 10)
        (src / f"bad{i}.txt").write_text("a caption")
    (src / "nocap.jpg").write_bytes(image_bytes(1))
    wf, message = _run(tmp_path, src)
    assert message.startswith(
        "workflow empty stopped after step shard: no training samples: none of the 4 input "
        "records was kept; rejected by reason: missing_caption 1, undecodable 3"
    ), message
    assert "bad0.jpg: undecodable" in message and "fix data.source and rerun" in message
    assert _records(tmp_path) == {"shard": "done"}  # training never started
    assert json.loads((tmp_path / "runs/empty/workflow.json").read_text())["status"] == "stopped"
    # a rerun with the same inputs stops again at once, without resharding
    capsys.readouterr()
    wf, again = _run(tmp_path, src)
    assert again == message and "step shard: already done, skipped" in capsys.readouterr().out


def test_a_header_only_manifest_and_a_holdout_that_takes_everything(ray_local, tmp_path):
    header = tmp_path / "pairs.csv"
    header.write_text("url,caption\n")
    _, message = _run(tmp_path, header, wf_id="header")
    assert f"the source lists no records (data.source '{header}')" in message
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"{i}.jpg").write_bytes(image_bytes(10 + i))
        (src / f"{i}.txt").write_text(f"picture {i}")
    _, message = _run(tmp_path, src, "data.holdout_fraction=1.0", wf_id="holdout")
    assert "no training samples: all 6 kept samples went to the held-out split (data.holdout_fraction 1.0)" in message
    _, message = _run(tmp_path, src, "data.holdout_fraction=0.0", wf_id="noeval")
    assert "no held-out samples for the evaluation (data.holdout_fraction 0.0, 6 training samples)" in message
    assert _records(tmp_path, "noeval") == {"shard": "done"}


def _cli(tmp_path, *sets, env=None):
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", str(CLIP), "--set", f"runs_dir={tmp_path / 'runs'}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**(env or os.environ), "RAY_TMPDIR": str(tmp_path / "ray")},
    )


def test_sources_that_cannot_be_read_are_refused_before_ray_starts(tmp_path, s3_server):
    missing = _cli(tmp_path, f"data.source={tmp_path / 'no-such-folder'}")
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert f"data.source: '{tmp_path / 'no-such-folder'}' does not exist" in missing.stderr
    demo = _cli(tmp_path, "data.source=demo:nope")
    assert demo.returncode == 2 and "data.source: unknown demo set 'demo:nope'" in demo.stderr, demo.stderr[-2000:]
    # an s3:// source without credentials: the same message as for storage=s3://..., not a traceback
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for source in ("s3://some-bucket/images/", "s3://some-bucket/pairs.parquet"):
        s3 = _cli(tmp_path, f"data.source={source}", env=env)
        assert s3.returncode == 2, s3.stderr[-2000:]
        assert (
            f"data.source: {source}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            f"~/.aws/credentials)"
        ) in s3.stderr and "Traceback" not in s3.stderr, s3.stderr[-2000:]
    assert not (tmp_path / "ray").exists() and not (tmp_path / "runs").exists()  # Ray never started


def test_a_manifest_that_is_not_utf8_is_named(tmp_path):
    from data.reading.sources import SourceError, list_records

    for name in ("pairs.csv", "pairs.jsonl"):
        manifest = tmp_path / name
        manifest.write_bytes(
            "url,caption\na.jpg,caf\u00e9 cr\u00e8me\n".encode("latin-1")
            if name.endswith(".csv")
            else json.dumps({"url": "a.jpg", "caption": "x"}).encode() + b'\n{"url": "\xe9"}\n'
        )
        with pytest.raises(
            SourceError,
            match=rf"{manifest}: not UTF-8 text \(invalid continuation byte at byte "
            rf"\d+, line 2\): save the manifest as UTF-8",
        ):
            list_records(str(manifest))
    broken = tmp_path / "pairs.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SourceError, match=rf"{broken}: not a readable Parquet file"):
        list_records(str(broken))


def test_an_empty_training_run_is_refused_with_the_manifest_named(tmp_path):
    from training.pretrain import run_training

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"splits": {"eval": {"samples": 3, "shards": []}}, "rejected": {"undecodable": 9}}))
    recipe = load_recipe(CLIP)
    with pytest.raises(ValueError, match=r"manifest.json: no training samples \(rejected: \{'undecodable': 9\}\)"):
        run_training(recipe.train, recipe.model, manifest, tmp_path / "out")
