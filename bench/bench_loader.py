"""Loader throughput (samples/s): decode + augmentation + tokenization of the default recipe's shards."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.loading.loader import LoaderSpec, train_loader  # noqa: E402
from data.writing.sharder import shard_dataset, shard_urls  # noqa: E402
from infra.ray_cluster import init_ray  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402


def main():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "configs/clip_small.yaml", sys.argv[1:])
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        shard_dataset(recipe.data, Path(tmp) / "shards")
        import ray

        ray.shutdown()  # the loader runs alone, as inside one training worker
        urls = shard_urls(Path(tmp) / "shards" / "manifest.json", "train")
        t, m, a = recipe.train, recipe.model, recipe.train.augment
        for workers in (0, 1, 2):
            spec = LoaderSpec(
                urls=tuple(urls),
                batch_size=t.batch_size,
                image_size=m.image_size,
                context_length=m.context_length,
                epoch_samples=t.batch_size * 40,
                shuffle_buffer=t.shuffle_buffer,
                scale=(a.scale_min, a.scale_max),
                ratio=(a.ratio_min, a.ratio_max),
                color_jitter=a.color_jitter,
            )
            it = iter(train_loader(spec, workers))
            next(it)  # start-up and shuffle-buffer fill excluded
            start, n = time.time(), 0
            for batch in it:
                n += batch["image"].shape[0]
            dt = time.time() - start
            print(
                f"loader: {workers} DataLoader workers: {n / dt:.0f} samples/s "
                f"({n} samples of {m.image_size}px, batch {t.batch_size})"
            )


if __name__ == "__main__":
    main()
