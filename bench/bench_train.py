"""Training throughput (samples/s) of the default recipe under Ray Train, plus a single-process
number for the same model (the cost of distribution on this machine)."""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.sharder import shard_dataset  # noqa: E402
from infra.ray_cluster import init_ray  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402
from families.clip.loss import clip_loss  # noqa: E402
from training.pretrain import run_pretrain  # noqa: E402

STEPS = 30


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


def single_process(recipe, threads: int) -> float:
    torch.set_num_threads(threads)
    m, b = recipe.model, recipe.train.batch_size
    model = m.build()
    x = torch.randn(b, 3, m.image_size, m.image_size)
    t = torch.randint(1, 49406, (b, m.context_length))
    t[:, 8] = 49407
    return b / step_time(model, lambda: clip_loss(*model(x, t)))


def main():
    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "configs/clip_small.yaml", sys.argv[1:])
    for threads in (1, 2):
        print(f"train: single process, {threads} thread(s), no data loading: "
              f"{single_process(recipe, threads):.0f} samples/s")
    init_ray()
    print("train: " + ray_train_throughput(root / "configs/clip_small.yaml", sys.argv[1:], STEPS))


def ray_train_throughput(recipe_path, overrides: list[str], steps: int) -> str:
    """Shard the recipe's data into a temporary folder, train `steps` optimizer steps under Ray
    Train, and say how fast (the first step excluded; data loading included)."""
    recipe = load_recipe(recipe_path, overrides)
    g = recipe.train.batch_size * recipe.train.num_workers
    recipe = load_recipe(recipe_path, overrides + ["train.epochs=1", f"train.epoch_samples={g * steps}",
                                                   f"train.checkpoint_every={steps}", "train.picture_every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        shard_dataset(recipe.data, Path(tmp) / "shards")
        t = time.time()
        out = run_pretrain(recipe, Path(tmp) / "shards" / "manifest.json", Path(tmp) / "train")
        wall = time.time() - t
    return (f"Ray Train, {recipe.train.num_workers} workers x batch {recipe.train.batch_size}: "
            f"{out['samples_per_s']:.0f} samples/s over {steps} steps (first step excluded, data loading "
            f"included); fit() wall {wall:.0f}s incl. set-up")


if __name__ == "__main__":
    main()
