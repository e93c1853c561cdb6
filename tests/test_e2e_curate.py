"""The curated CLIP workflow end to end on the noisy demo (tiny model, small budget): shard ->
teacher -> curate -> pretrain on the curated shards -> evaluate; the curated manifest counts what
went by reason, pretraining trained on exactly what curation kept, the held-out split is the
shard step's, the removals are measured against the demo's known noise (precision and recall in
the outputs, the manifest and MLflow, with the pictures), and a rerun after losing curate's outputs
scores only the shards it lost."""

import json
from pathlib import Path

import pytest

from pipelines.cli import build_workflow
from pipelines.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_teacher_curates_the_shards_the_model_then_trains_on(ray_local, tmp_path):
    sets = [f"runs_dir={tmp_path / 'runs'}", "data.source=demo:emoji-noisy", "data.limit=600"]
    sets += ["data.shard_samples=200", "train.batch_size=32", "train.epochs=1", "train.checkpoint_every=100"]
    sets += ["model.vision_layers=1", "model.text_layers=1", "curate.enabled=true", "curate.teacher_epochs=1"]
    sets += ["curate.keep_fraction=0.75", "curate.clusters=4", "curate.actors=2", "curate.batch_size=64"]
    sets += ["curate.dedup_eps=0.0"]  # a one-epoch tiny teacher embeds every emoji alike: no dedup here
    sets += ["curate.compare=true"]  # and the same pretrain on the uncurated shards, at equal steps
    recipe = load_recipe(ROOT / "configs/clip_small.yaml", sets)
    wf, uri = build_workflow(recipe, "curated")
    assert [s.name for s in wf.steps] == [
        *("shard", "teacher", "curate", "pretrain", "evaluate"),
        *("pretrain_uncurated", "evaluate_uncurated", "compare", "register"),
    ]
    out = wf.run()

    shard = json.loads(Path(out["shard"]["manifest"]).read_text())
    curated = json.loads(Path(out["curate"]["manifest"]).read_text())
    train = shard["splits"]["train"]["samples"]
    kept = curated["splits"]["train"]["samples"]
    over = train - round(0.75 * train)  # keep_fraction 0.75 (ties at the threshold are kept)
    assert over - 3 <= curated["rejected"]["low_clip_score"] <= over and curated["rejected_total"] <= over
    assert kept == train - curated["rejected_total"] == out["curate"]["kept"]
    assert curated["splits"]["eval"]["samples"] == shard["splits"]["eval"]["samples"]
    assert all(s["name"].startswith("/") for s in curated["splits"]["eval"]["shards"])  # the shard step's own
    assert 0.0 <= out["evaluate"]["metrics"]["i2t_R5"] <= 1.0
    _measured_and_drawn(out["curate"], curated, uri, tmp_path)
    _compared_at_equal_steps(out, kept, train, uri, tmp_path)

    scores = Path(out["curate"]["manifest"]).parent.parent / "scores"
    lost = sorted(scores.glob("*.scores.parquet"))[0]
    lost.unlink()
    kept_files = {p.name: p.stat().st_mtime_ns for p in scores.glob("*.scores.parquet")}
    (tmp_path / "runs/curated/steps/curate.json").unlink()  # as if killed: the step has no record of being done
    wf, _ = build_workflow(recipe, "curated")
    again = wf.run()
    assert again["curate"]["kept"] == kept  # the same choice
    assert {p.name: p.stat().st_mtime_ns for p in scores.glob("*.scores.parquet") if p.name in kept_files} == kept_files
    assert lost.exists()


def _measured_and_drawn(cur: dict, curated: dict, uri: str, tmp_path: Path) -> None:
    """The demo's known noise (train split only) measured: precision and recall of the score filter
    in the step's outputs, its manifest and its MLflow run, which holds the pictures too (no
    duplicates picture: dedup is off here, and so no duplicate precision, only its recall of 0)."""
    from mlflow.tracking import MlflowClient

    assert cur["known_swapped_captions"] > 0 and cur["known_copy_pairs"] > 0
    for k in ("low_clip_score_precision", "low_clip_score_recall"):
        assert 0.0 <= cur[k] <= 1.0
    assert cur.get("semantic_duplicate_recall", 0.0) == 0.0 and "semantic_duplicate_precision" not in cur
    noise = curated["curation"]["known_noise"]
    assert noise == {k: cur[k] for k in noise} and "low_clip_score_recall" in noise
    pictures = {"scores.png", "lowest_scored.png"}
    assert {p.name for p in (Path(cur["manifest"]).parents[1] / "pictures").glob("*.png")} == pictures
    client = MlflowClient(uri)
    parent_id = json.loads((tmp_path / "runs/curated/workflow.json").read_text())["mlflow_run_id"]
    exp = client.get_run(parent_id).info.experiment_id
    run = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.run_name = 'curate'")[0]
    assert run.data.metrics["low_clip_score_precision"] == pytest.approx(cur["low_clip_score_precision"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "pictures")} == {f"pictures/{p}" for p in pictures}


def _compared_at_equal_steps(out: dict, kept: int, train: int, uri: str, tmp_path: Path) -> None:
    """The uncurated pretrain read the shard step's shards (all `train` samples) for an epoch of the
    curated one's `kept` samples: as many steps; compare's gains are the two evaluations' differences,
    in the step's outputs and the workflow's MLflow run."""
    from mlflow.tracking import MlflowClient

    assert out["pretrain_uncurated"]["steps"] == out["pretrain"]["steps"] == out["compare"]["metrics"]["steps"]
    cur, unc = out["evaluate"]["metrics"], out["evaluate_uncurated"]["metrics"]
    for k in ("zeroshot_top1", "i2t_R5", "t2i_R5"):
        assert out["compare"]["metrics"][f"{k}_gain"] == pytest.approx(cur[k] - unc[k])
    client = MlflowClient(uri)
    parent_id = json.loads((tmp_path / "runs/curated/workflow.json").read_text())["mlflow_run_id"]
    exp = client.get_run(parent_id).info.experiment_id
    name = "attributes.run_name = 'pretrain_uncurated'"
    run = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}' and {name}")[0]
    assert run.data.params["train.epoch_samples"] == str(kept) and kept < train
    assert run.data.params["data.manifest"] == out["shard"]["manifest"]
    curated_run = client.search_runs(
        [exp], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.run_name = 'pretrain'"
    )
    assert curated_run[0].data.params["data.manifest"] == out["curate"]["manifest"]
    parent = client.get_run(parent_id).data.metrics
    assert parent["compare/i2t_R5_gain"] == pytest.approx(out["compare"]["metrics"]["i2t_R5_gain"])
