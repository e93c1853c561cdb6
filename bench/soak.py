"""Soak the trainer: many optimizer steps of the real Ray Train loop per configuration, each
background actor switchable, and count the native crashes.

A configuration is the default CLIP recipe (or a smaller model: `--model tiny`, far more steps per
minute) plus switches: read-ahead thread (`train.prefetch`), MLflow writer thread and MLflow's
system-metrics thread (a real sqlite MLflow run), loader worker processes, 1 or 2 DDP workers,
bf16 or fp32, for-each or fused AdamW. Each runs `--steps` optimizer steps in total, in runs with
no restart (`train.max_failures 0`): a crash ends a run, the next run starts fresh on the rest of
the steps. Printed per configuration: steps, crashes, crashes per 1,000 steps, mean steps between
crashes, and each crash's native message (glibc's, Ray's signal handler's, faulthandler's: the
lines of the dead worker's log that say what happened).

Usage: python bench/soak.py [--model default|tiny] [--steps N] [--only NAME ...] [--list]
       [--core DIR] [k=v ...]   (k=v: recipe overrides for every configuration)
`--core DIR`: workers may write core dumps (`gdb -batch -ex "thread apply all bt" python CORE`).
`--malloc-check`: every process under glibc's checking allocator (libc_malloc_debug.so.0 preloaded,
MALLOC_CHECK_=3: since glibc 2.34 the variable alone does nothing), aborting at the first bad free.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RECIPE = ROOT / "configs/clip_small.yaml"
MALLOC_DEBUG = "libc_malloc_debug.so.0"
TINY = [
    "model.embed_dim=64",
    "model.image_size=32",
    "model.patch_size=8",
    "model.vision_width=64",
    "model.vision_layers=2",
    "model.text_width=64",
    "model.text_layers=2",
    "model.context_length=16",
    "train.batch_size=32",
]
# name: (recipe overrides, switches); the first is the default recipe's own configuration
CONFIGS = {
    "default": ([], {}),
    "no read-ahead": (["train.prefetch=0"], {}),
    "no MLflow": ([], {"mlflow": False}),
    "no system metrics": ([], {"system_metrics": False}),
    "MLflow writes inline": ([], {"mlflow_thread": False}),
    "loader workers 0": (["train.loader_workers=0"], {}),
    "loader workers 2": (["train.loader_workers=2"], {}),
    "1 DDP worker": (["train.num_workers=1"], {}),
    "fp32": (["train.precision=fp32"], {}),
    "fused AdamW": (["train.optimizer_kernel=fused"], {}),
    # MLflow's threads made busy: metrics every step, system metrics every 0.1 s
    "busy MLflow": (["train.log_every=1"], {"sample_s": 0.1}),
    "busy MLflow, fused": (["train.log_every=1", "train.optimizer_kernel=fused"], {"sample_s": 0.1}),
}
CRASH_LINE = re.compile(
    r"malloc|free\(\)|corrupt|tcache|munmap|SIGSEGV|SIGABRT|SIGBUS|Fatal Python error|"
    r"double free|Segmentation|Aborted|core dumped|PC: |Thread 0x|File \""
)


def soak_callback(out_dir: Path, switches: dict):
    import soak_probe
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(soak_probe)
    return soak_probe.Probe(
        str(out_dir),
        switches.get("system_metrics", True),
        switches.get("mlflow_thread", True),
        switches.get("sample_s", 0.0),
    )


def mlflow_run(tmp: Path):
    """A real MLflow run in a sqlite store of its own (the worker's writer and system-metrics threads)."""
    from infra.tracking import Tracker

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return uri, Tracker(uri).start("soak", "soak", artifact_location=(tmp / "art").as_uri()).run_id


def crash_lines(session_logs: Path, since: float, limit: int = 14) -> list[str]:
    """The lines of worker logs written since `since` that say how a process died."""
    found = []
    for path in sorted(glob.glob(str(session_logs / "worker-*.err")) + glob.glob(str(session_logs / "worker-*.out"))):
        if os.path.getmtime(path) < since:
            continue
        text = Path(path).read_text(errors="replace").splitlines()
        hits = [x.strip() for x in text if CRASH_LINE.search(x) and "[train]" not in x]
        if any(re.search(r"malloc|free\(\)|corrupt|SIG[A-Z]+|Fatal Python|Segmentation|double free", h) for h in hits):
            found.append(f"{Path(path).name}:")
            found.extend("    " + h[:200] for h in hits[:limit])
    return found


def one_run(overrides: list[str], switches: dict, steps: int, manifest: Path, tmp: Path) -> dict:
    """`steps` optimizer steps without restarts: {'steps': reached, 'crash': [lines] or None, 'wall_s'}."""
    import ray

    from pipelines.config import load_recipe
    from training.pretrain import run_pretrain

    t = load_recipe(RECIPE, overrides).train  # one epoch of `steps` steps, the recipe's checkpoints
    recipe = load_recipe(
        RECIPE,
        overrides
        + [
            "train.max_failures=0",
            "train.epochs=1",
            f"train.epoch_samples={t.batch_size * t.num_workers * t.grad_accum * steps}",
        ],
    )
    progress = tmp / "progress"
    progress.mkdir(parents=True, exist_ok=True)
    kwargs = {"callbacks": (soak_callback(progress, switches),)}
    if switches.get("mlflow", True):
        kwargs["tracking_uri"], kwargs["mlflow_run_id"] = mlflow_run(tmp)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    t0 = time.time()
    try:
        run_pretrain(recipe, manifest, tmp / "out", **kwargs)
        crash = None
    except Exception as e:  # a dead worker: its log says why (Ray writes it out within a second or two)
        time.sleep(3)
        crash = crash_lines(logs, t0) or [f"(no native message) {type(e).__name__}: {str(e)[:300]}"]
    reached = max((int(p.read_text() or 0) for p in progress.glob("rank*")), default=0)
    return {"steps": steps if crash is None else reached, "crash": crash, "wall_s": time.time() - t0}


def soak(name: str, overrides: list[str], switches: dict, total: int, manifest: Path) -> dict:
    done, crashes, wall = 0, [], 0.0
    while done < total:
        with tempfile.TemporaryDirectory() as tmp:
            r = one_run(overrides, switches, total - done, manifest, Path(tmp))
        done, wall = done + r["steps"], wall + r["wall_s"]
        if r["crash"]:
            crashes.append({"step": r["steps"], "lines": r["crash"]})
            print(f"  [{name}] crash {len(crashes)} after {r['steps']} steps of this run ({done}/{total} in all):")
            print("\n".join("    " + x for x in r["crash"]), flush=True)
            if r["steps"] == 0 and len(crashes) >= 3:
                print(f"  [{name}] three runs died before their first step: stopping this configuration")
                break
        else:
            print(
                f"  [{name}] {r['steps']} steps without a crash ({done}/{total} in all, {r['wall_s']:.0f}s)", flush=True
            )
    return {"steps": done, "crashes": len(crashes), "wall_s": wall, "crash_log": crashes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["default", "tiny"], default="default")
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps per configuration")
    ap.add_argument("--only", nargs="*", help="configuration names (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--core", help="a folder for core dumps of crashed workers")
    ap.add_argument("--malloc-check", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.malloc_check and "MALLOC_CHECK_" not in os.environ:  # again, under the checking allocator
        env = {**os.environ, "LD_PRELOAD": MALLOC_DEBUG, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.list:
        for name, (sets, sw) in CONFIGS.items():
            print(f"{name:22s} {' '.join(sets)} {sw or ''}")
        return
    names = args.only or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"soak: unknown configuration(s) {unknown}; --list shows them")
    os.environ["LIBC_FATAL_STDERR_"] = "1"  # glibc's "malloc(): ..." to the worker's log, not a tty
    if args.core:
        Path(args.core).mkdir(parents=True, exist_ok=True)
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        os.chdir(args.core)  # core_pattern 'core': the worker's cwd (they inherit the driver's)
    from train_runs import shard

    from infra.ray_cluster import init_ray

    base = (TINY if args.model == "tiny" else []) + args.overrides
    init_ray()
    cache = ROOT / "bench/out/soak-shards"
    manifest = cache / "manifest.json"
    if not manifest.exists():
        shard(RECIPE, cache)
    rows = {}
    for name in names:
        sets, switches = CONFIGS[name]
        print(
            f"== {name}: {args.model} model, {args.steps} steps ({' '.join(base + sets) or 'the recipe as is'})",
            flush=True,
        )
        rows[name] = soak(name, base + sets, switches, args.steps, manifest)
    print(f"\nsoak: {args.model} model ({' '.join(base) or 'configs/clip_small.yaml'}), crashes per 1,000 steps")
    print(
        f"  {'configuration':22s} {'steps':>6s} {'crashes':>7s} {'per 1k':>7s} {'mean steps between':>19s} {'steps/s':>7s}"
    )
    for name, r in rows.items():
        per_k = 1000 * r["crashes"] / max(1, r["steps"])
        between = f"{r['steps'] / r['crashes']:.0f}" if r["crashes"] else f">{r['steps']}"
        print(
            f"  {name:22s} {r['steps']:6d} {r['crashes']:7d} {per_k:7.2f} {between:>19s} {r['steps'] / r['wall_s']:7.2f}"
        )
    out = ROOT / "bench/out" / f"soak-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"  (each crash's lines in {out.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
