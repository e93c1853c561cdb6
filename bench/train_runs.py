"""Short training runs for the benchmarks: a recipe's data sharded once, then N optimizer steps
under Ray Train per configuration, with their steady-state samples/s, MFU and per-step losses."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.writing.sharder import shard_dataset  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402
from training.pretrain import run_pretrain  # noqa: E402


def step_time(model, loss_fn, reps: int = 5) -> float:
    """Seconds per AdamW training step of `model` on `loss_fn()`, the first (warm-up) step excluded."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(reps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / reps


def short_recipe(recipe_path, overrides: list[str], steps: int):
    """The recipe with one epoch of exactly `steps` optimizer steps and one checkpoint at the end."""
    recipe = load_recipe(recipe_path, overrides)
    g = recipe.train.batch_size * recipe.train.num_workers * recipe.train.grad_accum
    return load_recipe(
        recipe_path,
        overrides
        + [
            "train.epochs=1",
            f"train.epoch_samples={g * steps}",
            f"train.checkpoint_every={steps}",
            "train.picture_every=0",
        ],
    )


def shard(recipe_path, out: Path) -> Path:
    """The recipe's data as shards under `out`; the manifest's path."""
    shard_dataset(load_recipe(recipe_path, []).data, out)
    return out / "manifest.json"


def train_once(recipe_path, overrides: list[str], steps: int, manifest: Path) -> dict:
    """Train `steps` steps on `manifest`: run_pretrain's result plus `losses` (rank 0's, per step)
    and `wall_s` (fit() with its set-up)."""
    recipe = short_recipe(recipe_path, overrides, steps)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        out = run_pretrain(recipe, manifest, Path(tmp))
        out["wall_s"] = time.time() - t
        out["losses"] = json.loads(Path(out["loss_history"]).read_text())
    return out


def ray_train_throughput(recipe_path, overrides: list[str], steps: int) -> str:
    """Shard the recipe's data into a temporary folder, train `steps` optimizer steps under Ray
    Train, and say how fast (steady state: the first steps excluded; data loading included)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = train_once(recipe_path, overrides, steps, shard(recipe_path, Path(tmp) / "shards"))
    t = short_recipe(recipe_path, overrides, steps).train
    mfu = f", MFU {out['mfu']:.1%}" if out.get("mfu") else ""
    return (
        f"Ray Train, {t.num_workers} workers x batch {t.batch_size}: {out['samples_per_s']:.0f} samples/s{mfu} "
        f"over {steps} steps (steady state, data loading included); fit() wall {out['wall_s']:.0f}s incl. set-up"
    )
