"""Out-of-fold scoring (`curate.teacher_folds`): the fold of a key is stable and the folds split the
data; teacher k's training set is the shards without fold k (bytes unchanged, the held-out split the
source's); each sample's score is the cosine under its own fold's teacher and the embeddings are
all teacher 0's; the workflow has a training-set step and one teacher per fold, which curation
depends on; folds with a scorer other than the teacher are refused."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data.curation.fold_shards import write_fold_shards
from data.curation.folds import FoldedScorerFactory, fold_of
from data.curation.score import SUFFIX, score_shards
from data.loading.pixels import eval_pixels
from families.clip.config import ClipModelConfig
from families.clip.curate import ClipScorerFactory
from tests.conftest import image_bytes
from tests.test_curation_score import _shards
from tests.test_export_hf import TINY, _model_file

ROOT = Path(__file__).resolve().parents[1]


def test_a_keys_fold_is_fixed_and_the_folds_split_the_keys():
    keys = [f"{i:04d}" for i in range(2000)] + [f"{i:04d}-copy" for i in range(500)]
    code = "import sys; from data.curation.folds import fold_of; print([fold_of(k, 3) for k in sys.argv[1:]])"
    for seed in ("1", "2"):  # another process, another str hash seed: the same folds
        run = subprocess.run(
            [sys.executable, "-c", code, *keys[:50]],
            cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert run.stdout.strip() == str([fold_of(k, 3) for k in keys[:50]])
    for folds in (2, 3, 5):
        sizes = np.bincount([fold_of(k, folds) for k in keys], minlength=folds)
        assert sizes.sum() == len(keys) and sizes.min() > 0.8 * len(keys) / folds


def _manifest(root: Path, urls: list[str]) -> str:
    """A shard step's manifest over training shards `urls` and one held-out shard."""
    entries = [json.loads(Path(u).with_suffix(".json").read_text()) for u in urls]
    held = {"name": "eval-000000.tar", "samples": 3}
    manifest = {
        "source": "test",
        "splits": {
            "train": {"shards": entries, "samples": sum(e["samples"] for e in entries)},
            "eval": {"samples": 3, "shards": [held]},
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return str(root / "manifest.json")


def _members(url: str) -> dict[str, bytes]:
    with tarfile.open(url) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_each_fold_teachers_training_set_is_every_shard_without_that_fold(tmp_path):
    urls, captions = _shards(tmp_path / "shards", n_shards=3, per=9)
    src = _manifest(tmp_path / "shards", urls)
    original = {}
    for u in urls:
        original.update(_members(u))
    for fold in (0, 1):
        path = write_fold_shards(src, urls, fold, 2, str(tmp_path / f"fold{fold}"))
        m = json.loads(Path(path).read_text())
        members = {}
        for e in m["splits"]["train"]["shards"]:
            members.update(_members(str(tmp_path / f"fold{fold}" / e["name"])))
        keys = {name.partition(".")[0] for name in members}
        assert keys == {k for k in captions if fold_of(k, 2) != fold}
        assert all(original[name] == data for name, data in members.items())  # bytes unchanged
        assert m["splits"]["train"]["samples"] == len(keys) and m["fold"] == {"left_out": fold, "folds": 2}
        assert m["splits"]["eval"]["shards"] == [{"name": f"{tmp_path}/shards/eval-000000.tar", "samples": 3}]
    assert 0 < len(keys) < len(captions)


def test_each_sample_is_scored_by_the_teacher_of_its_fold_and_embedded_by_teacher_0(ray_local, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, path0 = _model_file(tmp_path / "a", ClipModelConfig(**TINY), seed=0)
    _, path1 = _model_file(tmp_path / "b", ClipModelConfig(**TINY), seed=1)
    urls, captions = _shards(tmp_path / "shards", n_shards=2, per=6)
    teachers = [ClipScorerFactory(str(p), ClipModelConfig) for p in (path0, path1)]
    out = tmp_path / "scores"
    assert score_shards(urls, str(out), FoldedScorerFactory(tuple(teachers)), actors=1, batch_size=4)["samples"] == 12

    each = [t() for t in teachers]
    for s, url in enumerate(urls):
        table = pq.read_table(out / f"{Path(url).stem}{SUFFIX}").to_pydict()
        keys = table["key"]
        pixels = np.stack([eval_pixels(image_bytes(s * 6 + i), TINY["image_size"]) for i in range(6)])
        by = [t.embed(pixels, [captions[k] for k in keys]) for t in each]
        want = np.array([float(by[fold_of(k, 2)][0][i] @ by[fold_of(k, 2)][1][i]) for i, k in enumerate(keys)])
        assert np.abs(np.array(table["score"]) - want).max() <= 1e-5
        assert np.abs(np.array(table["image_emb"]) - by[0][0]).max() <= 1e-5
        assert np.abs(np.array(table["text_emb"]) - by[0][1]).max() <= 1e-5
    folds = {fold_of(k, 2) for k in captions}
    assert folds == {0, 1}  # both teachers scored something


def _recipe(tmp_path, *more):
    from pipelines.config import load_recipe

    sets = [f"runs_dir={tmp_path / 'runs'}", "curate.enabled=true", *more]
    return load_recipe(ROOT / "configs/clip_small.yaml", sets)


def test_the_workflow_has_one_teacher_per_fold_and_curation_depends_on_them_all(tmp_path):
    from pipelines.cli import build_workflow

    wf, _ = build_workflow(_recipe(tmp_path, "curate.teacher_folds=3"), "folded")
    names = [s.name for s in wf.steps]
    assert names[:6] == ["shard", "teacher_folds", "teacher_fold0", "teacher_fold1", "teacher_fold2", "curate"]
    step = {s.name: s for s in wf.steps}
    assert step["curate"].deps == ["shard", "teacher_fold0", "teacher_fold1", "teacher_fold2"]
    assert step["teacher_fold1"].deps == ["shard", "teacher_folds"] and step["teacher_fold1"].config["fold"] == 1
    prints = wf._fingerprints({})
    assert len({prints[f"teacher_fold{k}"] for k in range(3)}) == 3
    longer, _ = build_workflow(_recipe(tmp_path, "curate.teacher_folds=3", "train.epochs=99"), "folded")
    again = longer._fingerprints({})
    assert all(again[n] == prints[n] for n in names[:6]) and again["pretrain"] != prints["pretrain"]


def test_folds_are_the_teachers_and_a_registered_scorer_with_folds_is_refused(tmp_path):
    from config.typed import ConfigError

    with pytest.raises(ConfigError, match=r"curate.teacher_folds.*folds are the teacher's"):
        _recipe(tmp_path, "curate.teacher_folds=2", "curate.scorer=models:/x/1")


def test_fold_training_shards_are_tar_files_a_loader_reads(tmp_path):
    """A fold's shards are WebDataset tars with the source's members, in the source's order."""
    urls, captions = _shards(tmp_path / "shards", n_shards=1, per=8)
    path = write_fold_shards(_manifest(tmp_path / "shards", urls), urls, 1, 2, str(tmp_path / "fold1"))
    name = json.loads(Path(path).read_text())["splits"]["train"]["shards"][0]["name"]
    with tarfile.open(fileobj=io.BytesIO((tmp_path / "fold1" / name).read_bytes())) as tar:
        keys = [m.name.partition(".")[0] for m in tar if m.name.endswith(".txt")]
    assert keys == [k for k in sorted(captions) if fold_of(k, 2) != 1]
