"""What curation buys, over seeds: the curated recipe (configs/clip_curated.yaml: shard -> teacher ->
curate -> pretrain -> evaluate, and the same pretrain on the uncurated shards at equal steps) run
once per seed (`train.seed`: the teacher's, both pretrains' and curation's k-means), each seed its own
workflow under one runs folder. Prints every seed's held-out zero-shot (top-1 and per-class mean) and retrieval R@5 of
both pretrains, the curate step's precision and recall against the demo's known noise, the mean and
spread (max - min over seeds) of each, and whether the mean gain is above both arms' spreads.

    make bench-curate-gain [SEEDS="0 1 2"] [ARGS="--set ... --oracle demo:emoji"]

`--oracle demo:emoji` adds, per seed, the same pretrain on the clean demo the noisy one was made
from, for as many steps: what a perfect curation could reach.

A finished seed's workflow is not run again (its steps are durable): rerun to resume."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean as mean

ROOT = Path(__file__).resolve().parents[1]
# zero-shot balanced: the per-class mean (on the demo's held-out split, top-1 sits near the majority class's rate)
METRICS = ("zeroshot_top1", "zeroshot_balanced", "i2t_R5", "t2i_R5")
NOISE = (
    "low_clip_score_precision",
    "low_clip_score_recall",
    "semantic_duplicate_precision",
    "semantic_duplicate_recall",
)


def outputs(runs: Path, wf: str, step: str) -> dict:
    return json.loads((runs / wf / "steps" / f"{step}.json").read_text())["outputs"]


def run_workflow(recipe: str, runs: Path, wf: str, seed: int, sets: list[str], label: str) -> None:
    """`pipelines.cli run` of the recipe as workflow `wf` under `runs`, with seed `seed`."""
    cmd = [sys.executable, "-m", "pipelines.cli", "run", recipe, "--workflow-id", wf]
    for s in [f"runs_dir={runs}", f"train.seed={seed}", *sets]:
        cmd += ["--set", s]
    print(f"[curate-gain] {label}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def run_seed(recipe: str, runs: Path, seed: int, sets: list[str], oracle: str | None = None, reuse=False) -> dict:
    wf = f"{Path(recipe).stem}-seed{seed}"
    record = runs / wf / "steps" / "compare.json"
    if reuse and record.exists() and json.loads(record.read_text())["status"] == "done":
        print(f"[curate-gain] seed {seed}: the finished workflow {runs / wf}, as recorded", flush=True)
    else:
        run_workflow(recipe, runs, wf, seed, sets, f"seed {seed}")
    cur, unc = outputs(runs, wf, "evaluate")["metrics"], outputs(runs, wf, "evaluate_uncurated")["metrics"]
    curate = outputs(runs, wf, "curate")
    steps = int(outputs(runs, wf, "compare")["metrics"]["steps"])
    row = {
        "seed": seed,
        "steps": steps,
        "curated": {k: cur[k] for k in METRICS},
        "uncurated": {k: unc[k] for k in METRICS},
        "noise": {k: curate[k] for k in NOISE if k in curate},
        "removed": curate["removed"],
        "kept": curate["kept"],
    }
    if oracle:
        row["clean"] = run_clean(recipe, runs, seed, sets, oracle, steps)
    return row


def run_clean(recipe: str, runs: Path, seed: int, sets: list[str], source: str, steps: int) -> dict:
    """The ceiling of any curation: the same pretrain on the clean data the noisy demo was made
    from (`source`, whose held-out split is the noisy one's), for as many steps."""
    from pipelines.config import load_recipe

    r = load_recipe(ROOT / recipe, [f"train.seed={seed}", *sets])
    per_epoch, rest = divmod(steps, r.train.epochs)
    assert not rest, f"{steps} steps are not a whole number of {r.train.epochs} epochs"
    wf = f"{Path(recipe).stem}-clean-seed{seed}"
    clean = [f"data.source={source}", "curate.enabled=false", "curate.compare=false"]
    clean.append(f"train.epoch_samples={per_epoch * r.train.batch_size * r.train.num_workers}")
    run_workflow(recipe, runs, wf, seed, [*sets, *clean], f"seed {seed}, clean")
    m = outputs(runs, wf, "evaluate")["metrics"]
    noisy = outputs(runs, f"{Path(recipe).stem}-seed{seed}", "evaluate")["metrics"]
    same = ("eval_samples", "zeroshot_classes", "zeroshot_majority")
    assert all(m[k] == noisy[k] for k in same), f"{source}'s held-out split is not the noisy one's: {m} vs {noisy}"
    return {k: m[k] for k in METRICS}


def spread(xs: list[float]) -> float:
    return max(xs) - min(xs)


def report(rows: list[dict]) -> bool:
    print(f"\n{'seed':>4} {'steps':>5} | " + " | ".join(f"{m:>24}" for m in METRICS) + " | kept, removed")
    for r in rows:
        cells = [
            f"{r['curated'][m]:.3f} vs {r['uncurated'][m]:.3f} ({r['curated'][m] - r['uncurated'][m]:+.3f})"
            for m in METRICS
        ]
        print(
            f"{r['seed']:>4} {r['steps']:>5} | "
            + " | ".join(f"{c:>24}" for c in cells)
            + f" | {r['kept']}, {r['removed']}"
        )
    wins = True
    print()
    for m in METRICS:
        c, u = [r["curated"][m] for r in rows], [r["uncurated"][m] for r in rows]
        gain = mean(c) - mean(u)
        beats = gain > max(spread(c), spread(u))
        wins &= beats
        print(
            f"{m:>17}: curated {mean(c):.3f} (spread {spread(c):.3f}), uncurated {mean(u):.3f} "
            f"(spread {spread(u):.3f}): gain {gain:+.3f}, {'above' if beats else 'NOT above'} both spreads; "
            f"curated above uncurated in {sum(a > b for a, b in zip(c, u))} of {len(rows)} seeds"
        )
    if all("clean" in r for r in rows):
        print("\nthe ceiling: the same pretrain on the clean data, as many steps (no curation can remove more noise)")
        for m in METRICS:
            o, u, c = ([r[a][m] for r in rows] for a in ("clean", "uncurated", "curated"))
            print(
                f"{m:>17}: clean {mean(o):.3f} (spread {spread(o):.3f}): {mean(o) - mean(u):+.3f} over uncurated, "
                f"{'above' if mean(o) - mean(u) > max(spread(o), spread(u)) else 'NOT above'} both spreads; "
                f"curated {mean(c) - mean(o):+.3f} from it"
            )
    for k in NOISE:
        xs = [r["noise"][k] for r in rows if k in r["noise"]]
        if xs:
            print(f"{k:>30}: {mean(xs):.3f} (min {min(xs):.3f}, max {max(xs):.3f})")
    print(f"\ncuration beats the uncurated pretrain by more than the spread between seeds on every metric: {wins}")
    return wins


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="configs/clip_curated.yaml")
    ap.add_argument("--runs", default="runs/curate-gain", help="the seeds' workflows and their MLflow store")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--oracle", metavar="SOURCE", help="also pretrain on this clean source (demo:emoji), as many steps: the ceiling"
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="a seed whose workflow finished is read as recorded, not run again (where the code changed since)",
    )
    args = ap.parse_args(argv)
    runs = (ROOT / args.runs).resolve()
    rows = [run_seed(args.recipe, runs, s, args.sets, args.oracle, args.reuse) for s in args.seeds]
    (runs / "curate_gain.json").write_text(json.dumps(rows, indent=1))
    report(rows)
    print(f"[curate-gain] every seed's numbers: {runs / 'curate_gain.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
