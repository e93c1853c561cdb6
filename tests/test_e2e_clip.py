"""The whole CLIP workflow on a small subset of the demo set, with an interruption mid-training:
shard -> pretrain (fails at step 6) -> rerun resumes from the step-4 checkpoint -> evaluate ->
a third run skips everything. MLflow holds the parent run, the nested step runs and their data."""

import json
from argparse import Namespace
from pathlib import Path

import pytest

from pipelines.cli import build_workflow
from pipelines.config import load_recipe
from pipelines.mlflow_ui import report
from tests.faults import faults
from tests.mlflow_checks import assert_mfu_logged

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_clip_workflow_end_to_end_with_resume(ray_local, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    recipe = load_recipe(
        ROOT / "configs/clip_small.yaml",
        [
            f"runs_dir={tmp_path / 'runs'}",
            "data.limit=700",
            "data.shard_samples=200",
            "train.batch_size=32",
            "train.epochs=2",
            "train.checkpoint_every=4",
            "train.log_every=2",
            "train.max_failures=0",
            "train.warmup_steps=2",
            "model.vision_layers=2",
            "model.text_layers=2",
        ],
    )
    wf, uri = build_workflow(recipe, "e2e", callbacks=[faults(fail_at_step=6)])
    with pytest.raises(Exception, match="injected failure at step 6"):
        wf.run()
    shard_rec = json.loads((tmp_path / "runs/e2e/steps/shard.json").read_text())
    pre_rec = json.loads((tmp_path / "runs/e2e/steps/pretrain.json").read_text())
    assert shard_rec["status"] == "done" and pre_rec["status"] == "failed"

    wf, _ = build_workflow(recipe, "e2e", callbacks=[faults(fail_at_step=6)])
    out = wf.run()
    capsys.readouterr()
    report(Namespace(recipe="configs/clip_small.yaml", set=[f"runs_dir={tmp_path / 'runs'}"]), recipe, uri, wf, out)
    printed = capsys.readouterr().out
    assert f"make mlflow-ui ARGS='--set runs_dir={tmp_path / 'runs'}'" in printed  # no venv to activate
    assert "/runs?workflowType=machine_learning&viewStateShareKey=clip-headline" in printed
    manifest = json.loads(Path(out["shard"]["manifest"]).read_text())
    train_samples = manifest["splits"]["train"]["samples"]
    steps_per_epoch = -(-train_samples // 64)
    assert out["pretrain"]["steps"] == 2 * steps_per_epoch
    assert out["pretrain"]["resumed_from"] == 4  # resumed, not restarted
    assert json.loads((tmp_path / "runs/e2e/steps/shard.json").read_text())["attempts"] == 1
    m = out["evaluate"]["metrics"]
    assert m["eval_samples"] == manifest["splits"]["eval"]["samples"] > 0
    for k in ("zeroshot_top1", "i2t_R1", "i2t_R5", "t2i_R10"):
        assert 0.0 <= m[k] <= 1.0
    assert m["zeroshot_classes"] >= 2

    # a third run finds everything done
    wf, _ = build_workflow(recipe, "e2e")
    assert wf.run() == out
    assert [
        r["attempts"] for r in (json.loads(p.read_text()) for p in sorted((tmp_path / "runs/e2e/steps").glob("*.json")))
    ] == [1, 2, 1, 1]  # evaluate pretrain register shard

    client = MlflowClient(uri)
    parent_id = json.loads((tmp_path / "runs/e2e/workflow.json").read_text())["mlflow_run_id"]
    exp = client.get_experiment(client.get_run(parent_id).info.experiment_id)
    assert exp.artifact_location == (tmp_path / "runs" / "mlartifacts").as_uri()  # not ./mlruns
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"shard", "pretrain", "evaluate", "register"}
    pre = by_name["pretrain"]
    assert pre.data.params["train.batch_size"] == "32" and pre.data.params["model.kind"] == "clip"
    assert_mfu_logged(client, pre.info.run_id)
    assert pre.data.params["train.precision"] == "auto" and pre.data.params["resolved.precision"] in ("bf16", "fp32")
    assert "matmul" in pre.data.params["resolved.peak_source"] and pre.data.metrics["gflops_per_sample"] > 0
    losses = client.get_metric_history(pre.info.run_id, "loss")
    assert len(losses) >= 2 * steps_per_epoch // 2 - 1
    arts = {a.path for a in client.list_artifacts(pre.info.run_id)}
    assert {"loss_curve.png", "recipe.json", "model"} <= arts
    assert by_name["evaluate"].data.metrics["i2t_R5"] == pytest.approx(m["i2t_R5"])
    assert by_name["shard"].data.metrics["samples"] == manifest["samples"]
    assert "manifest.json" in {a.path for a in client.list_artifacts(by_name["shard"].info.run_id)}
    # the parent run compares workflows: the recipe, every step's metrics, the training curves
    parent = client.get_run(parent_id)
    assert parent.data.params["train.batch_size"] == "32" and parent.data.params["data.limit"] == "700"
    assert parent.data.metrics["evaluate/i2t_R5"] == pytest.approx(m["i2t_R5"])
    assert parent.data.metrics["evaluate/zeroshot_top1"] == pytest.approx(m["zeroshot_top1"])
    assert parent.data.metrics["pretrain/steps"] == 2 * steps_per_epoch
    assert 0 < parent.data.metrics["pretrain/mfu"] < 1.5
    assert "pretrain/loss_curve.png" in {a.path for a in client.list_artifacts(parent_id, "pretrain")}
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    # the experiment's saved view shows the family's headline metrics, each one logged on the run
    view = json.loads(json.loads(exp.tags["mlflow.sharedViewState.clip-headline"])["state"])
    assert view["selectedColumns"] == [f"metrics.`{k}`" for k in recipe.family.headline]
    assert set(recipe.family.headline) <= set(parent.data.metrics)
    assert "zero-shot top-1" in parent.data.tags["mlflow.note.content"]  # the run's description: the summary
    system = [k for k in pre.data.metrics if k.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system

    # the final model is registered under the recipe's name, its version naming the workflow, and
    # `make pull` takes the registry's URI
    assert out["register"]["model_uri"] == f"models:/{recipe.name}/1"
    version = client.get_model_version(recipe.name, "1")
    assert version.tags["workflow_id"] == "e2e"
    # described by its workflow, data and evaluation (pipelines/register.py describe_version)
    assert "workflow `e2e`" in version.description and f"{train_samples:,} training samples" in version.description
    assert f"| i2t_R5 | {m['i2t_R5']:.4g} |" in version.description
    assert float(version.tags["evaluate/zeroshot_top1"]) == pytest.approx(m["zeroshot_top1"])
    from pipelines.pull import pull

    pulled = pull(out["register"]["model_uri"], str(tmp_path / "runs"), tmp_path / "pulled", uri)
    assert pulled["workflow"] == "e2e" and (tmp_path / "pulled/e2e/model.pt").stat().st_size > 0

    from pipelines.cli import main

    capsys.readouterr()
    assert main(["status", "--runs-dir", str(tmp_path / "runs")]) == 0
    status = capsys.readouterr().out
    assert "e2e  [done]" in status and "pretrain   done" in status and "attempt 2" in status
