"""The whole MAE workflow on two classes of the animal-mnist demo: shard (image-only, labels from
folders) -> pretrain -> finetune + scratch -> evaluate, MLflow contents, and a rerun with a changed
mask ratio that redoes pretraining and what depends on it, but not the shards or the scratch baseline."""

import json
from pathlib import Path

import pytest

from pipelines.cli import build_workflow
from pipelines.config import load_recipe
from tests.mlflow_checks import assert_mfu_logged

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_mae_workflow_end_to_end(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    args = [
        f"runs_dir={tmp_path / 'runs'}",
        "data.limit=2000",
        "train.epochs=1",
        "train.log_every=2",
        "train.picture_every=4",
        "finetune.epochs=1",
        "finetune.probe_epochs=20",
        "model.vision_layers=2",
        "model.decoder_layers=1",
    ]
    recipe = load_recipe(ROOT / "configs/mae_small.yaml", args)
    wf, uri = build_workflow(recipe, "mae-e2e")
    out = wf.run()
    manifest = json.loads(Path(out["shard"]["manifest"]).read_text())
    assert manifest["splits"]["train"]["labels"].keys() == {"bear", "bird"}  # the first 2,000 files
    assert manifest["stats"]["caption_chars"] == {}  # image-only
    m = out["evaluate"]["metrics"]
    assert m["classes"] == 2 and m["chance_accuracy"] == 0.5
    for k in ("probe_accuracy", "pixels_accuracy", "finetune_accuracy", "scratch_accuracy"):
        assert 0.5 < m[k] <= 1.0, (k, m[k])  # two well-separated silhouette classes
    assert 0 < m["eval_reconstruction_loss"] < 2.0

    client = MlflowClient(uri)
    parent_id = json.loads((tmp_path / "runs/mae-e2e/workflow.json").read_text())["mlflow_run_id"]
    exp_id = client.get_run(parent_id).info.experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'")}
    assert set(runs) == {"shard", "pretrain", "finetune", "scratch", "evaluate", "register"}
    # the registry serves the fine-tuned classifier (class probabilities), named for the workflow
    assert out["register"]["model_uri"] == "models:/mae-small/1"
    assert client.get_model_version("mae-small", "1").tags["workflow_id"] == "mae-e2e"
    pre = runs["pretrain"].info.run_id
    assert len(client.get_metric_history(pre, "reconstruction_loss")) >= 2
    pictures = [a.path for a in client.list_artifacts(pre, "pictures")]
    assert pictures and all(p.endswith(".png") for p in pictures)
    ft, sc = runs["finetune"].data.params, runs["scratch"].data.params
    assert ft["task.init_from"] == out["pretrain"]["model"] and sc["task.init_from"] == ""
    assert ft["model.kind"] == "vit_classifier" and ft["model.num_classes"] == "2"
    assert ft["train.epochs"] == sc["train.epochs"] == "1" and ft["task.layer_decay"] == "0.75"
    assert "train_accuracy" in runs["finetune"].data.metrics
    for name in ("pretrain", "finetune", "scratch"):
        assert_mfu_logged(client, runs[name].info.run_id)
    assert runs["evaluate"].data.metrics["finetune_accuracy"] == pytest.approx(m["finetune_accuracy"])
    assert "pictures/reconstruction-heldout.png" in {
        a.path for a in client.list_artifacts(runs["evaluate"].info.run_id, "pictures")
    }

    # make pull: the fine-tuned classifier comes along and reproduces its held-out accuracy
    from data.writing.sharder import shard_urls
    from families.mae.evaluate import classifier_accuracy
    from families.registry import load_model
    from pipelines.pull import pull

    got = pull("mae-e2e", str(tmp_path / "runs"), tmp_path / "pulled")
    assert set(got["bytes"]) == {"model.pt", "finetune-model.pt", "recipe.json", "metrics.json", "manifest.json"}
    classifier, ccfg = load_model(tmp_path / "pulled/mae-e2e/finetune-model.pt")
    assert ccfg.kind == "vit_classifier" and ccfg.classes == ("bear", "bird")
    acc = classifier_accuracy(classifier, shard_urls(out["shard"]["manifest"], "eval"), "folder", list(ccfg.classes))
    assert acc == pytest.approx(m["finetune_accuracy"])

    # a different mask ratio: pretraining and what depends on it rerun; shards and scratch do not
    records = tmp_path / "runs/mae-e2e/steps"
    before = {p.stem: json.loads(p.read_text())["fingerprint"] for p in records.glob("*.json")}
    wf, _ = build_workflow(load_recipe(ROOT / "configs/mae_small.yaml", args + ["model.mask_ratio=0.5"]), "mae-e2e")
    out2 = wf.run()
    after = {p.stem: json.loads(p.read_text())["fingerprint"] for p in records.glob("*.json")}
    assert {k for k in before if before[k] != after[k]} == {"pretrain", "finetune", "evaluate", "register"}
    assert out2["scratch"] == out["scratch"] and out2["shard"] == out["shard"]
