"""Recipe values are range-checked when the recipe loads, model shapes that cannot be built are
refused there too, and the error names the file or the `--set` and the key; the CLI exits 2 before
Ray starts. (Each case below was accepted before, and hung, crashed late or ran the defaults.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "configs/clip_small.yaml"


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.batch_size=-4", "train.batch_size: must be >= 1, got -4"),
        ("train.lr=-1", "train.lr: must be > 0.0, got -1.0"),
        ("train.lr=.nan", "train.lr: expected a finite number"),
        ("train.num_workers=0", "train.num_workers: must be >= 1, got 0"),
        ("train.grad_accum=0", "train.grad_accum: must be >= 1, got 0"),
        ("train.betas=[0.9,1.5]", "train.betas: must be >= 0.0 and < 1.0, got 1.5"),
        ("train.min_lr=0.5", "train.min_lr: 0.5 is above train.lr 0.001"),
        ("data.image_size=0", "data.image_size: must be >= 1, got 0"),
        ("model.patch_size=0", "model.patch_size: must be >= 1, got 0"),
        ("data.holdout_fraction=1.5", "data.holdout_fraction: must be >= 0.0 and <= 1.0, got 1.5"),
        ("data.shard_samples=0", "data.shard_samples: must be >= 1, got 0"),
        ("data.limit=-3", "data.limit: must be >= 0, got -3"),
        ("data.jpeg_quality=101", "data.jpeg_quality: must be >= 1 and <= 100, got 101"),
        ("model.image_size=60", "model.image_size: 60 is not a multiple of model.patch_size 8"),
        ("model.vision_width=129", "model.vision_width: 129 is not divisible by model.vision_heads 2"),
        ("model.text_heads=3", "model.text_width: 128 is not divisible by model.text_heads 3"),
        (
            "eval.templates=['no placeholder']",
            "eval.templates[0]: 'no placeholder' must hold the class name placeholder",
        ),
        ("name=../../x", "name: '../../x' is not a workflow id"),
    ],
)
def test_out_of_range_values_name_the_override_and_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(CLIP, [override])
    assert str(err.value).startswith(f"--set {override}: "), str(err.value)
    assert message in str(err.value)


def test_the_same_checks_name_the_file_and_cover_every_family(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.batch_size: must be >= 1, got 0"):
        load_recipe(bad)
    cases = [
        ("mae_small.yaml", "model.mask_ratio=1.0", "model.mask_ratio: must be >= 0.0 and < 1.0"),
        (
            "mae_small.yaml",
            "model.vision_width=66 model.vision_heads=2",
            "model.vision_width: 66 is not a multiple of 4",
        ),
        ("mdlm_small.yaml", "model.heads=3", "model.width: 128 is not divisible by model.heads 3"),
        ("mdlm_small.yaml", "model.heads=128", "rotary position embeddings need an even number"),
        ("mdlm_small.yaml", "text.vocab_size=100", "text.vocab_size: must be >= 260"),
        ("blip_small.yaml", "model.queue_size=1000", "model.queue_size: 1000 is not a multiple of the global batch"),
        ("blip_small.yaml", "capfilt.threshold=2", "capfilt.threshold: must be >= 0.0 and <= 1.0"),
        ("mdlm_small.yaml", "model.context_length=16", r"model.context_length: 16 < 128 \(text.seq_len"),
        ("mdlm_small.yaml", "eval.gen_length=50", "eval.gen_length: 50 must be a multiple of eval.block_length 16"),
    ]
    for recipe, override, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_recipe(ROOT / "configs" / recipe, override.split())
    for recipe in sorted((ROOT / "configs").glob("*.yaml")):  # every shipped recipe passes its own checks
        load_recipe(recipe)


def test_duplicate_keys_and_empty_recipes_are_refused(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(
        ConfigError, match=r"dup.yaml: not valid YAML: duplicate key 'lr' \(first at line 2, again at line 4\)"
    ):
        load_recipe(dup)
    top = tmp_path / "top.yaml"
    top.write_text("name: a\ntrain: {epochs: 2}\nname: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        load_recipe(top)
    for text in ("", "# only a comment\n", "\n\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=r"empty.yaml: the recipe is empty"):
            load_recipe(empty)


def test_the_loader_refuses_a_batch_size_below_one():
    from data.loading.loader import LoaderSpec

    for bad in (0, -4):
        with pytest.raises(ValueError, match=f"loader: batch_size must be at least 1, got {bad}"):
            LoaderSpec(urls=("a.tar",), batch_size=bad, image_size=32, epoch_samples=10)


def test_cli_exits_2_before_ray_starts(tmp_path):
    """The bad value that used to hang a run with growing memory now ends it at once, exit code 2,
    before Ray starts (no Ray session, no runs folder) and before any data is read."""
    env = dict(os.environ, RAY_TMPDIR=str(tmp_path / "ray"))
    for args, message in (
        (["--set", "train.batch_size=-4"], "--set train.batch_size=-4: train.batch_size: must be >= 1, got -4"),
        (["--set", "model.image_size=60"], "model.image_size: 60 is not a multiple of model.patch_size 8"),
        (["--workflow-id", "../../escape"], "--workflow-id: '../../escape' is not a workflow id"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "run", str(CLIP), "--set", f"runs_dir={tmp_path / 'runs'}", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ray").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_scientific_notation_is_a_number_as_users_write_it(tmp_path):
    # PyYAML (YAML 1.1) reads 5e-4 as a string; in a float field it is the number users mean
    assert load_recipe(CLIP, ["train.lr=5e-4"]).train.lr == 5e-4
    f = tmp_path / "r.yaml"
    f.write_text("train:\n  lr: 3e-4\n  min_lr: 1E-6\n")
    r = load_recipe(f)
    assert (r.train.lr, r.train.min_lr) == (3e-4, 1e-6)
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got '1e3'"):
        load_recipe(CLIP, ["train.epochs=1e3"])  # not for integer fields
