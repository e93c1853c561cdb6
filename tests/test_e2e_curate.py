"""The curated CLIP workflow end to end on the noisy demo (tiny model, small budget): shard ->
teacher -> curate -> pretrain on the curated shards -> evaluate; the curated manifest counts what
went by reason, pretraining trained on exactly what curation kept, the held-out split is the
shard step's, and a rerun after losing curate's outputs scores only the shards it lost."""

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
    recipe = load_recipe(ROOT / "configs/clip_small.yaml", sets)
    wf, _ = build_workflow(recipe, "curated")
    assert [s.name for s in wf.steps] == ["shard", "teacher", "curate", "pretrain", "evaluate", "register"]
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
