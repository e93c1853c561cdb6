"""Training samples/s of DDP vs DeepSpeed ZeRO-1/2/3 on the default recipe, same machine, same run,
same shards; also the DDP/ZeRO loss gap over the measured steps."""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.writing.sharder import shard_dataset  # noqa: E402
from infra.ray_cluster import init_ray  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402
from training.pretrain import run_pretrain  # noqa: E402

STEPS = 30
VARIANTS = [
    ("ddp", []),
    ("zero1", ["train.strategy=deepspeed", "train.deepspeed.zero_stage=1"]),
    ("zero2", ["train.strategy=deepspeed", "train.deepspeed.zero_stage=2"]),
    ("zero3", ["train.strategy=deepspeed", "train.deepspeed.zero_stage=3"]),
]


def main():
    root = Path(__file__).resolve().parents[1]
    base = load_recipe(root / "configs/clip_small.yaml", sys.argv[1:])
    g = base.train.batch_size * base.train.num_workers
    init_ray()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        shard_dataset(base.data, Path(tmp) / "shards")
        for name, overrides in VARIANTS:
            recipe = load_recipe(
                root / "configs/clip_small.yaml",
                sys.argv[1:]
                + overrides
                + ["train.epochs=1", f"train.epoch_samples={g * STEPS}", f"train.checkpoint_every={STEPS}"],
            )
            t = time.time()
            out = run_pretrain(recipe, Path(tmp) / "shards" / "manifest.json", Path(tmp) / name)
            losses = json.loads(Path(out["loss_history"]).read_text())
            results[name] = (out["samples_per_s"], time.time() - t, losses)
    ddp_rate, _, ddp_losses = results["ddp"]
    for name, (rate, wall, losses) in results.items():
        gap = max(abs(a - b) for a, b in zip(losses, ddp_losses))
        print(
            f"strategy {name:<6} {rate:6.0f} samples/s ({rate / ddp_rate:.2f}x DDP), fit wall {wall:.0f}s, "
            f"max |loss - DDP loss| over {STEPS} steps {gap:.2e}"
        )


if __name__ == "__main__":
    main()
