"""The GPU path, run for real (bench/gpu_smoke.sh): the default CLIP recipe on CUDA (nccl, bf16) on
one GPU and on all of them, its losses against the same run on the CPU, then ViT-B/32 at 224 px
(configs/clip_vitb32.yaml's model and per-GPU batch, DDP) for samples/s per GPU and MFU.
Exits 1 when a loss check fails. Usage: python bench/gpu_smoke.py [--steps N] [--vitb32-batch B]"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from train_runs import shard, train_once  # noqa: E402

SMALL = ROOT / "configs/clip_small.yaml"
LOSS_STEPS = 20
TOL = {"fp32": 1e-3, "bf16": 5e-2}  # largest |loss difference| to the CPU fp32 run over the first 20 steps


def gpu(n: int, precision: str) -> list[str]:
    return [
        f"train.num_workers={n}",
        "train.use_gpu=true",
        f"train.precision={precision}",
        f"train.cpus_per_worker={max(1, min(4, (torch.multiprocessing.cpu_count() - 1) // n))}",
    ]


def report(label: str, out: dict, n: int) -> None:
    mfu = f"{out['mfu']:.1%}" if out.get("mfu") else "-"
    print(
        f"  {label:34s} {out['samples_per_s']:9.0f} samples/s ({out['samples_per_s'] / n:.0f} per GPU), MFU {mfu}",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--vitb32-batch", type=int, default=256, help="per GPU")
    args = ap.parse_args()
    from infra.ray_cluster import init_ray

    n = torch.cuda.device_count()
    if not n:
        print("gpu_smoke: no CUDA device")
        return 2
    print(f"gpu_smoke: {n} x {torch.cuda.get_device_name(0)}", flush=True)
    init_ray()
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        small = shard(SMALL, Path(tmp) / "small")
        cpu = train_once(
            SMALL, ["train.num_workers=1", "train.precision=fp32", "train.cpus_per_worker=4"], args.steps, small
        )
        print(f"clip_small, {args.steps} steps, batch 128 per worker:")
        report("CPU fp32 (reference)", cpu, 1)
        for workers, precision in ((1, "fp32"), (1, "bf16"), (n, "bf16")):
            out = train_once(SMALL, gpu(workers, precision), args.steps, small)
            report(f"{workers} GPU(s) {precision}", out, workers)
            if workers == 1:  # the same global batch and data order as the CPU run
                diff = max(abs(a - b) for a, b in zip(out["losses"][:LOSS_STEPS], cpu["losses"][:LOSS_STEPS]))
                ok = diff <= TOL[precision]
                failed |= not ok
                print(
                    f"    max |loss - CPU loss| over steps 1-{LOSS_STEPS}: {diff:.2e} "
                    f"({'ok' if ok else 'FAILED'}, tolerance {TOL[precision]:g})",
                    flush=True,
                )
        vit = [
            "train.strategy=ddp",
            f"train.batch_size={args.vitb32_batch}",
            "train.activation_checkpointing=false",
            "train.loader_workers=4",
            "train.warmup_steps=10",
            *[
                f"model.{k}"
                for k in (
                    "embed_dim=512",
                    "image_size=224",
                    "patch_size=32",
                    "vision_width=768",
                    "vision_layers=12",
                    "vision_heads=12",
                    "text_width=512",
                    "text_layers=12",
                    "text_heads=8",
                    "context_length=77",
                )
            ],
        ]
        data224 = Path(tmp) / "data224"  # the same images stored at 256 px, cropped to 224
        from data.writing.sharder import shard_dataset
        from pipelines.config import load_recipe

        shard_dataset(load_recipe(SMALL, ["data.image_size=256"]).data, data224)
        print(f"ViT-B/32 at 224 px (clip_vitb32.yaml's model), DDP, batch {args.vitb32_batch} per GPU:")
        for workers in sorted({1, n}):
            out = train_once(SMALL, vit + gpu(workers, "bf16"), args.steps, data224 / "manifest.json")
            report(f"{workers} GPU(s) bf16", out, workers)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
