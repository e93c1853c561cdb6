"""The whole BLIP workflow on a small slice of the emoji demo: shard -> pretrain -> capfilt ->
pretrain_boot -> evaluate, with the bootstrapped manifest, MLflow counts, metrics and caption table."""

import json
from pathlib import Path

import pytest

from pipelines.cli import build_workflow
from pipelines.config import load_recipe
from tests.mlflow_checks import assert_mfu_logged

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_blip_workflow_end_to_end(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from data.writing.sharder import read_manifest, shard_urls

    recipe = load_recipe(
        ROOT / "configs/blip_small.yaml",
        [
            f"runs_dir={tmp_path / 'runs'}",
            "data.limit=700",
            "data.shard_samples=200",
            "train.epochs=1",
            "train.log_every=2",
            "capfilt.epochs=1",
            "capfilt.threshold=0.0",
            "capfilt.shard_samples=300",
            "model.vision_layers=1",
            "model.text_layers=1",
            "eval.caption_samples=5",
        ],
    )
    wf, uri = build_workflow(recipe, "blip-e2e")
    out = wf.run()

    c = out["capfilt"]
    assert c["images"] == out["shard"]["train_samples"]
    assert c["original_kept"] == c["images_kept"] == c["images"]  # threshold 0 keeps everything
    boot = read_manifest(out["capfilt"]["manifest"])
    assert boot["splits"]["train"]["samples"] == c["images_kept"]
    assert len(boot["splits"]["train"]["shards"]) == -(-c["images_kept"] // 300)
    # the held-out split is the original one, referenced, not copied
    assert shard_urls(out["capfilt"]["manifest"], "eval") == shard_urls(out["shard"]["manifest"], "eval")
    assert out["pretrain_boot"]["steps"] > 0 and out["evaluate"]["model"] == out["pretrain_boot"]["model"]

    m = out["evaluate"]["metrics"]
    for k in ("itc_i2t_R1", "itc_t2i_R5", "itm_i2t_R1", "itm_t2i_R10", "bleu4", "cider"):
        assert 0.0 <= m[k] <= 10.0, k
    rows = json.loads(Path(out["evaluate"]["captions"]).read_text())
    assert len(rows) == 5 and all(r["reference"] for r in rows)

    client = MlflowClient(uri)
    parent_id = json.loads((tmp_path / "runs/blip-e2e/workflow.json").read_text())["mlflow_run_id"]
    exp_id = client.get_run(parent_id).info.experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'")}
    assert set(runs) == {"shard", "pretrain", "capfilt", "pretrain_boot", "evaluate", "register"}
    assert runs["capfilt"].data.metrics["original_kept"] == c["original_kept"]
    assert {"itc", "itm", "lm"} <= set(runs["pretrain"].data.metrics)
    assert_mfu_logged(client, runs["pretrain"].info.run_id)
    arts = {a.path for a in client.list_artifacts(runs["evaluate"].info.run_id)}
    assert {"captions_table.json", "captions.md", "metrics.json"} <= arts
