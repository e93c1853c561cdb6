"""`make pull` on a workflow's records (local and S3): files land only in <dest>/<workflow id>/,
whatever a run's MLflow tags say and whatever links sit in the destination; a pulled file that
differs from the workflow's (even at the same size) is fetched again, an identical one is not."""

import json
import os
from pathlib import Path

import pytest

from infra.storage import Store
from pipelines.pull import pull


def _workflow(root: str, wf_id: str = "wf") -> dict:
    """The records and files of a finished workflow under `root` (a folder or s3:// prefix)."""
    store = Store(f"{root}/{wf_id}")
    files = {
        "pretrain-1/model.pt": os.urandom(4096),
        "pretrain-1/recipe.json": b'{"name": "wf"}',
        "evaluate-1/metrics.json": b'{"i2t_R1": 0.5}',
        "shard-1/shards/manifest.json": b'{"splits": {}}',
        "shard-1/shards/tokenizer.json": b'{"model": "bpe"}',
    }
    for name, data in files.items():
        store.write_bytes(name, data)
    outputs = {
        "shard": {
            "manifest": store.uri("shard-1/shards/manifest.json"),
            "tokenizer": store.uri("shard-1/shards/tokenizer.json"),
        },
        "pretrain": {"model": store.uri("pretrain-1/model.pt"), "recipe": store.uri("pretrain-1/recipe.json")},
        "evaluate": {"metrics_file": store.uri("evaluate-1/metrics.json")},
    }
    store.write_text("workflow.json", json.dumps({"id": wf_id, "steps": list(outputs)}))
    for step, out in outputs.items():
        store.write_text(f"steps/{step}.json", json.dumps({"name": step, "status": "done", "outputs": out}))
    return files


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    request.getfixturevalue("s3_server")
    from infra.storage import s3_client

    bucket = f"pull-{abs(hash(str(tmp_path))) % 10**8}"
    s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team"


def test_a_changed_file_of_the_same_size_is_fetched_again(root, tmp_path):
    files = _workflow(root)
    got = pull("wf", root, tmp_path / "pulled")
    dest = tmp_path / "pulled" / "wf"
    assert sorted(p.name for p in dest.iterdir()) == [
        "manifest.json",
        "metrics.json",
        "model.pt",
        "recipe.json",
        "tokenizer.json",
    ]
    assert got["bytes"]["model.pt"] == 4096 and (dest / "model.pt").read_bytes() == files["pretrain-1/model.pt"]
    stale = bytearray(files["pretrain-1/model.pt"])
    stale[100] ^= 0xFF  # same size, other content
    (dest / "model.pt").write_bytes(bytes(stale))
    again = pull("wf", root, tmp_path / "pulled")
    assert again["bytes"]["model.pt"] == 4096 and (dest / "model.pt").read_bytes() == files["pretrain-1/model.pt"]
    assert again["bytes"]["metrics.json"] == 0 and again["bytes"]["tokenizer.json"] == 0  # identical: not refetched


def test_pull_never_writes_outside_its_destination(tmp_path, s3_server):
    from infra.tracking import Tracker

    root = str(tmp_path / "runs")
    _workflow(root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evil = Tracker(uri).start("exp", "evil", tags={"workflow_id": "../../escaped"})
    dest = tmp_path / "a" / "b" / "pulled"
    with pytest.raises(ValueError, match=r"tag workflow_id: '../../escaped' is not a workflow id"):
        pull(evil.run_id, root, dest, uri)
    with pytest.raises(ValueError, match="RUN: '../wf' is not a workflow id"):
        pull("../wf", root, dest, uri)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()

    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir(parents=True)
    os.symlink(outside, dest / "wf")  # the workflow's folder is a link out
    with pytest.raises(ValueError, match="is a symbolic link: make pull writes only inside"):
        pull("wf", root, dest)
    (dest / "wf").unlink()
    (dest / "wf").mkdir()
    os.symlink(outside / "victim", dest / "wf" / "model.pt.part")  # a file's .part is a link out
    os.symlink(outside / "victim2", dest / "wf" / "metrics.json")
    pull("wf", root, dest)
    assert list(outside.iterdir()) == []  # nothing was written through the links
    assert not (dest / "wf" / "metrics.json").is_symlink() and (dest / "wf" / "model.pt").stat().st_size == 4096


def test_the_model_pulled_is_the_one_evaluated(tmp_path):
    """A BLIP workflow whose CapFilt second pretraining ran: its workflow record names
    `pretrain_boot` as the final model step, and that model (with its recipe) is pulled."""
    from pipelines.cli import build_workflow
    from pipelines.config import load_recipe

    root = str(tmp_path / "runs")
    files = _workflow(root)
    store = Store(f"{root}/wf")
    boot = {"pretrain_boot-2/model.pt": os.urandom(2048), "pretrain_boot-2/recipe.json": b'{"name": "boot"}'}
    for name, data in boot.items():
        store.write_bytes(name, data)
    store.write_text(
        "steps/pretrain_boot.json",
        json.dumps(
            {
                "name": "pretrain_boot",
                "status": "done",
                "outputs": {
                    "model": store.uri("pretrain_boot-2/model.pt"),
                    "recipe": store.uri("pretrain_boot-2/recipe.json"),
                },
            }
        ),
    )
    recipe = load_recipe(
        Path(__file__).parents[1] / "configs/blip_small.yaml", [f"runs_dir={root}", "capfilt.second_pretrain=true"]
    )
    wf, _ = build_workflow(recipe, "wf")
    assert wf.meta["final_model_step"] == "pretrain_boot"
    record = json.loads(store.read_text("workflow.json"))
    store.write_text("workflow.json", json.dumps(dict(record, final_model_step=wf.meta["final_model_step"])))
    pull("wf", root, tmp_path / "pulled")
    dest = tmp_path / "pulled" / "wf"
    assert (dest / "model.pt").read_bytes() == boot["pretrain_boot-2/model.pt"] != files["pretrain-1/model.pt"]
    assert (dest / "recipe.json").read_bytes() == boot["pretrain_boot-2/recipe.json"]
    no_boot = load_recipe(
        Path(__file__).parents[1] / "configs/blip_small.yaml", [f"runs_dir={root}", "capfilt.second_pretrain=false"]
    )
    assert build_workflow(no_boot, "wf2")[0].meta["final_model_step"] == "pretrain"
