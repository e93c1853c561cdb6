"""MAE pretraining throughput of the default recipe (configs/mae_small.yaml) under Ray Train, and
the cost of one training step at mask ratio 0.75 vs 0.0 on the same batch (the encoder sees 25%
of the patches at 0.75, so the step should be well over 2x faster)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_runs import ray_train_throughput, step_time  # noqa: E402

from infra.ray_cluster import init_ray  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402

STEPS = 30
RECIPE = Path(__file__).resolve().parents[1] / "configs/mae_small.yaml"


def main():
    recipe = load_recipe(RECIPE, sys.argv[1:])
    m, b = recipe.model, recipe.train.batch_size * recipe.train.num_workers
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = m.build()
    images = torch.randn(b, 3, m.image_size, m.image_size)
    t75, t0 = (step_time(model, lambda: model(images, mask_ratio=r)[0]) for r in (m.mask_ratio, 0.0))
    print(
        f"mae: one step at batch {b}, single process, 2 threads: mask {m.mask_ratio} {t75 * 1e3:.0f} ms "
        f"({b / t75:.0f} samples/s), mask 0.0 {t0 * 1e3:.0f} ms ({b / t0:.0f} samples/s): {t0 / t75:.1f}x"
    )
    init_ray()
    print("mae: " + ray_train_throughput(RECIPE, sys.argv[1:], STEPS))


if __name__ == "__main__":
    main()
