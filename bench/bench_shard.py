"""Sharding throughput (images/s) of the default recipe's source, into a fresh folder."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.writing.sharder import shard_dataset  # noqa: E402
from infra.ray_cluster import init_ray  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402


def main():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "configs/clip_small.yaml", sys.argv[1:])
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = shard_dataset(recipe.data, Path(tmp) / "shards")
        dt = time.time() - t
        t = time.time()
        again = shard_dataset(recipe.data, Path(tmp) / "shards")
        dt_rerun = time.time() - t
    print(
        f"sharding: {m['input_records']} records -> {m['samples']} samples in {dt:.1f}s "
        f"= {m['input_records'] / dt:.0f} images/s (rerun, all shards complete: {dt_rerun:.1f}s, "
        f"{again['shards_skipped']} skipped)"
    )


if __name__ == "__main__":
    main()
