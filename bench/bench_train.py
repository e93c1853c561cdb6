"""Training throughput of the default CLIP and MAE recipes under Ray Train, in one run:

- today's trainer: eager fp32, no read-ahead (the levers of issue 19 off;
  `--rev REV` also runs the trainer of an older commit, from a git worktree);
- eager fp32, eager bf16, compiled fp32, compiled bf16 (the recipe's other defaults: read-ahead
  on, AdamW's for-each kernel on a CPU), and (CLIP) eager bf16 without read-ahead;

each with steady-state samples/s (compile time apart), MFU, the ratio to today's trainer and to
eager fp32, and the largest loss difference to eager fp32 over the first 20 steps (same seed, same
data order). Usage: python bench/bench_train.py [--steps N] [--rev REV] [--only clip|mae] [k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from train_runs import shard, train_once  # noqa: E402

from pipelines.config import load_recipe  # noqa: E402

RECIPES = {"clip": ROOT / "configs/clip_small.yaml", "mae": ROOT / "configs/mae_small.yaml"}
TODAY = ["train.precision=fp32", "train.optimizer_kernel=foreach", "train.prefetch=0", "train.compile=false"]
CONFIGS = {
    "eager fp32": ["train.precision=fp32", "train.compile=false"],
    "eager bf16": ["train.precision=bf16", "train.compile=false"],
    "compiled fp32": ["train.precision=fp32", "train.compile=true"],
    "compiled bf16": ["train.precision=bf16", "train.compile=true"],
}
ABLATIONS = {  # one lever off at a time, from eager bf16 (CLIP only)
    "eager bf16, no read-ahead": ["train.precision=bf16", "train.compile=false", "train.prefetch=0"],
}
LOSS_STEPS = 20
# run in an older commit's worktree: its run_pretrain on the same manifest (its own samples/s: the
# first step excluded)
OLD = """
import json, sys, tempfile
from pathlib import Path
from pipelines.config import load_recipe
from training.pretrain import run_pretrain
from infra.ray_cluster import init_ray
recipe_path, manifest, steps, *overrides = sys.argv[1:]
steps = int(steps)
r = load_recipe(recipe_path, overrides)
g = r.train.batch_size * r.train.num_workers * r.train.grad_accum
r = load_recipe(recipe_path, overrides + ["train.epochs=1", f"train.epoch_samples={g * steps}",
                                          f"train.checkpoint_every={steps}", "train.picture_every=0"])
init_ray()
with tempfile.TemporaryDirectory() as tmp:
    out = run_pretrain(r, Path(manifest), Path(tmp))
    out["losses"] = json.loads(Path(out["loss_history"]).read_text())
print("RESULT " + json.dumps({"samples_per_s": out["samples_per_s"], "losses": out["losses"]}))
"""


def old_trainer(rev: str, recipe: Path, manifest: Path, steps: int, overrides: list[str]):
    """The trainer of commit `rev` on the same data (None when the clone lacks it)."""
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True).returncode:
        print(f"train: commit {rev} is not in this clone: no old-trainer row")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    OLD,
                    str(tree / recipe.relative_to(ROOT)),
                    str(manifest),
                    str(steps),
                    *overrides,
                ],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"train: the trainer of {rev} failed:\n{proc.stderr[-3000:]}")
        return None
    return json.loads(line.removeprefix("RESULT "))


def max_diff(a: list, b: list) -> float:
    n = min(LOSS_STEPS, len(a), len(b))
    return max(abs(x - y) for x, y in zip(a[:n], b[:n]))


def bench_recipe(name: str, steps: int, rev: str, overrides: list[str]) -> None:
    import ray

    from infra.ray_cluster import init_ray

    recipe = RECIPES[name]
    with tempfile.TemporaryDirectory() as tmp:
        init_ray()
        manifest = shard(recipe, Path(tmp) / "shards")
        rows = {}
        if rev:  # on a Ray instance of its own, whose workers import the old code
            ray.shutdown()
            t = load_recipe(recipe, overrides).train  # the old tree's recipe, with today's schedule
            same = [
                f"train.warmup_steps={t.warmup_steps}",
                f"train.augment.alt_caption_prob={t.augment.alt_caption_prob}",
                "train.precision=fp32",
            ]
            old = old_trainer(rev, recipe, manifest, steps, same + overrides)
            if old:
                rows[f"trainer of {rev} (fp32)"] = old
            init_ray()
        rows["today's trainer (fp32)"] = train_once(recipe, overrides + TODAY, steps, manifest)
        for label, sets in {**CONFIGS, **(ABLATIONS if name == "clip" else {})}.items():
            rows[label] = train_once(recipe, overrides + sets, steps, manifest)
    today, ref = rows["today's trainer (fp32)"], rows["eager fp32"]
    print(f"\n{name} ({recipe.relative_to(ROOT)}), {steps} steps, steady-state samples/s (data loading included):")
    print(
        f"  {'configuration':30s} {'samples/s':>9s} {'vs today':>8s} {'vs eager fp32':>13s} {'MFU':>6s} "
        f"{'compile s':>9s} {'max |loss diff| steps 1-20':>27s}"
    )
    for label, r in rows.items():
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        comp = f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else "-"
        print(
            f"  {label:30s} {r['samples_per_s']:9.0f} {r['samples_per_s'] / today['samples_per_s']:7.2f}x "
            f"{r['samples_per_s'] / ref['samples_per_s']:12.2f}x {mfu:>6s} {comp:>9s} "
            f"{max_diff(r['losses'], ref['losses']):27.2e}"
        )
    flops = ref.get("flops_per_sample")
    if flops:
        print(f"  model FLOPs per sample (forward + backward): {flops / 1e9:.3f} GFLOP")
    out = ROOT / "bench/out" / f"train-{name}.json"  # every row's numbers and per-step losses
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = ("samples_per_s", "mfu", "model_tflops_per_s", "flops_per_sample", "compile_s", "wall_s", "losses")
    out.write_text(json.dumps({label: {k: r.get(k) for k in keep} for label, r in rows.items()}, indent=1))
    print(f"  (written to {out.relative_to(ROOT)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rev", default="8bff786", help="also run this commit's trainer ('' for none)")
    ap.add_argument("--only", choices=sorted(RECIPES))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    for name in [args.only] if args.only else RECIPES:
        bench_recipe(name, args.steps, args.rev if name == "clip" else "", args.overrides)


if __name__ == "__main__":
    main()
