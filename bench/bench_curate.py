"""The curate step at scale: images/s scored and the driver's peak memory, per number of samples.

For each N (`--sizes`, default 10,000 and 100,000), in a fresh process of its own (local Ray), the
curate step's stages (pipelines/curate_step.py) on N training samples:

1. score: data.curation.score.score_shards, the scorer in a Ray Data actor pool (the step's
   defaults: curate.actors, curate.batch_size; GPU actors when the cluster has GPUs), each shard's
   scores and image embeddings to a Parquet file; the driver keeps counts only;
2. select: data.curation.stream.select_streamed, the step's selection streamed shard by shard: the
   score threshold (keep_fraction) from a histogram pass and its boundary bin's scores, then SemDeDup
   (k-means over curate.clusters fitted on at most FIT_SAMPLE kept rows, every kept row to its
   cluster's files in a local work folder, then one cluster at a time at dedup_eps);
3. write_curated: each shard written again without its removals (write_shards, one shard's at a
   time).

Per stage: seconds and the driver's peak RSS during it (VmHWM, reset by /proc/self/clear_refs
before the stage; VmHWM and not getrusage's ru_maxrss, which Linux carries across fork and exec),
and for scoring the images/s and the peak RSS of the scorer actors (polled VmHWM of the Ray worker
processes that run ShardScorer). Then the ratio of the largest N's peaks to the smallest's: every
stage's driver peak should be flat (selection's is bounded by a shard, the k-means sample and a
cluster; the sample grows with N only up to FIT_SAMPLE kept rows).

The scorer is the default recipe's CLIP (configs/clip_small.yaml's model section) with random
weights (seed 0), saved as a model.pt in the project's format (training/checkpoint/model_file.py)
and loaded by families/clip/curate.py's ClipScorerFactory: the scores mean nothing, the work and
the memory are real. Random weights see every image nearly alike (1 - cosine about 1e-3 between
two images, 1e-5 to the nearest of 3,000), so SemDeDup at the recipe's dedup_eps (0.02) would call
every sample a duplicate and selection refuses (more than half). The bench runs dedup at
`--dedup-eps` (default 1e-7: embeddings equal to float32 precision; of 3,000 demo images about
0.4% have such a twin, and at 1e-6 the share would grow past half by 100,000 samples) and prints
how many it removed; should selection still refuse, the table says so, the refused attempt's time is
shown apart, and the curated shards are written from the score filter alone. Dedup's cost
(k-means, the similarity blocks) does not depend on how many duplicates it finds.

Scoring's images/s is score_shards' own (samples / its wall time, the actors' start-up included,
as the step logs it); beside it, the rate after the actors' first shards (from the times the
shards' scores files were written), which leaves the start-up out.

Samples: the emoji demo (`demo:emoji`) sharded once by the project's sharder (data.writing.sharder,
the recipe's data section, no held-out split), then copied up to N: copy c of a sample is its image
flipped / rotated / with its colour channels permuted, dimmed every 48 copies (re-encoded as JPEG
at the recipe's quality; a flip of a symmetric emoji is the same image again, as real data has
repeats), its key `<key>-v<c>`, caption and metadata unchanged, in shards of `--shard-samples`.
Everything built is kept under `--workdir` (bench/out/curate): the sets grow to the largest N asked
for and a rerun reuses them; each run's scores and curated shards are removed before it starts and
after it ends (`--keep-outputs` keeps them).

    make bench-curate [ARGS='--sizes 10000 100000']
    .venv/bin/python bench/bench_curate.py --sizes 1000 3000
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from shard_bench_runs import _log_tail, _maxrss_mib  # noqa: E402  # VmHWM of this process, a log's end

WORKDIR = ROOT / "bench/out/curate"
STAGES = ("score", "select", "write_curated")


def _log(message: str) -> None:
    print(f"[bench-curate] {message}", file=sys.stderr, flush=True)


def _recipe(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# what the runs read: the demo's shards, the N-sample set, the random scorer


def base_shards(work: Path, recipe: dict) -> Path:
    """The emoji demo sharded once by the project's sharder (the recipe's data section, every
    sample in the training split); its manifest."""
    out = work / "base"
    if (out / "manifest.json").exists():
        return out / "manifest.json"
    import ray

    from config.typed import build
    from data.writing.sharder import shard_dataset
    from infra.ray_cluster import init_ray
    from pipelines.config import DataConfig

    values = dict(recipe["data"], holdout_fraction=0.0, split_by=None)
    _log(f"sharding {values['source']} once into {out}")
    init_ray()
    try:
        shard_dataset(build(DataConfig, values, "data"), str(out))
    finally:
        ray.shutdown()
    return out / "manifest.json"


def _read_tar(path: str) -> list[tuple[str, dict[str, bytes]]]:
    """A shard's samples (key, {extension: bytes}) in order."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            key, _, ext = m.name.partition(".")
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = f.read()
    return samples


def variant(jpg: bytes, c: int, quality: int) -> bytes:
    """Copy c of an image: one of the 8 flips/rotations x 6 orders of the colour channels, dimmed a
    little more every 48 copies; copy 0 is the original bytes."""
    if c == 0:
        return jpg
    from PIL import Image, ImageEnhance

    im = Image.open(io.BytesIO(jpg)).convert("RGB")
    d, p, dim = c % 8, (c // 8) % 6, c // 48
    if d & 4:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = im.rotate(90 * (d & 3), expand=True) if d & 3 else im
    if p:
        bands = im.split()
        order = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][p - 1]
        im = Image.merge("RGB", [bands[i] for i in order])
    if dim:
        im = ImageEnhance.Brightness(im).enhance(0.97**dim)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def sample_set(work: Path, base_manifest: Path, n: int, per: int, quality: int) -> list[str]:
    """The first ceil(n / per) shards of the copied set (shard k is the same whatever n asks for
    it: made once, kept); their paths."""
    from data.writing.shard_io import shard_urls, write_tar_shard

    folder = work / f"samples-{per}"
    count = math.ceil(n / per)
    names = [f"train-{k:06d}" for k in range(count)]
    todo = [k for k, name in enumerate(names) if not (folder / f"{name}.json").exists()]
    if todo:
        base = [s for url in shard_urls(base_manifest, "train") for s in _read_tar(url)]
        _log(f"writing {len(todo)} shards of {per} copied samples ({len(base)} demo samples) into {folder}")
        t = time.time()
        for k in todo:
            samples = []
            for i in range(k * per, (k + 1) * per):
                c, (key, members) = i // len(base), base[i % len(base)]
                samples.append((f"{key}-v{c:03d}", dict(members, jpg=variant(members["jpg"], c, quality))))
            write_tar_shard(str(folder), names[k], samples)
        _log(f"  {len(todo) * per} samples in {time.time() - t:.0f}s")
    return [str(folder / f"{name}.tar") for name in names]


def random_model(work: Path, recipe: dict, seed: int) -> Path:
    """A model.pt of the recipe's model section with its initial (random) weights, written as
    export_model writes one: fp32 weights and the model config."""
    import torch

    from config.typed import build
    from families.clip.config import ClipModelConfig

    mcfg = build(ClipModelConfig, recipe["model"], "model")
    path = work / f"model-{recipe.get('name', 'recipe')}-seed{seed}.pt"
    if not path.exists():
        torch.manual_seed(seed)
        model = mcfg.build()
        tmp = path.with_suffix(".tmp")
        blob = {"model": model.state_dict(), "model_config": dataclasses.asdict(mcfg), "step": 0, "strategy": "ddp"}
        torch.save(blob, tmp)
        tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------
# the child process: one N


def _status_kib(pid: int | str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> float:
    """Reset this process's VmHWM to its RSS now (clear_refs 5); the RSS now, MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("self", "VmRSS") / 1024


class ActorPeaks:
    """Polls the processes under this one (the local Ray cluster's) whose command line names
    `marker`: each one's VmHWM, the last seen."""

    def __init__(self, marker: str, every_s: float = 0.25):
        self.marker, self.every_s, self.peaks = marker, every_s, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            for p in me.children(recursive=True):
                try:
                    if self.marker in " ".join(p.cmdline()):
                        self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), _status_kib(p.pid, "VmHWM"))
                except (psutil.Error, OSError):
                    continue
            self.stop.wait(self.every_s)

    def mib(self) -> list[float]:
        return sorted((kib / 1024 for kib in self.peaks.values()), reverse=True)


def steady_rate(scores_dir: str, actors: int) -> float | None:
    """Images/s after each actor's first shard: the samples of the scores files written after the
    first `actors` of them, over the time from the last of those to the last file (None when there
    are too few shards to tell)."""
    import pyarrow.parquet as pq

    from data.curation.score import SUFFIX

    files = sorted(Path(scores_dir).glob(f"*{SUFFIX}"), key=lambda f: f.stat().st_mtime)
    if len(files) <= actors + 1:
        return None
    span = files[-1].stat().st_mtime - files[actors - 1].stat().st_mtime
    return sum(pq.read_metadata(f).num_rows for f in files[actors:]) / span if span > 0 else None


def child_main(spec_path: str) -> None:
    from data.curation.score import score_shards
    from data.curation.stream import FIT_SAMPLE, select_streamed
    from data.curation.write import write_shards
    from families.clip.config import ClipModelConfig
    from families.clip.curate import ClipScorerFactory
    from infra.ray_cluster import init_ray
    from pipelines.curate_step import cluster_gpus

    spec = json.loads(Path(spec_path).read_text())
    urls, out = spec["urls"], spec["out"]
    t = time.time()
    init_ray(num_cpus=spec["cpus"])
    result: dict = {"ray_start_s": time.time() - t, "rss_after_ray_mib": _maxrss_mib(), "stages": {}}

    def stage(name: str, fn):
        start = _reset_peak()
        t = time.time()
        value = fn()
        result["stages"][name] = {"seconds": time.time() - t, "rss_start_mib": start, "rss_peak_mib": _maxrss_mib()}
        return value

    gpus = cluster_gpus()
    factory = ClipScorerFactory(spec["model"], ClipModelConfig)
    with ActorPeaks("ShardScorer") as actors:
        stats = stage(
            "score", lambda: score_shards(urls, f"{out}/scores", factory, spec["actors"], spec["batch_size"], gpus)
        )
    result.update(scored=stats["samples"], images_per_s=stats["images_per_s"], gpus=gpus, actor_rss_mib=actors.mib())
    result["steady_images_per_s"] = steady_rate(f"{out}/scores", spec["actors"])
    work = Path(out) / "selection"

    def selected():
        t = time.time()
        args = (f"{out}/scores", urls, work, None, spec["keep_fraction"], spec["clusters"])
        try:
            return select_streamed(*args, spec["dedup_eps"], seed=0), None
        except ValueError as e:  # refused: more than half would go as duplicates; the score filter alone
            result["refused_s"] = time.time() - t
            return select_streamed(*args, 0.0, seed=0), str(e)

    sel, refused = stage("select", selected)
    counts = dict(sel.removals.counts)
    result.update(samples=sel.scores.n, removed=counts, threshold=sel.threshold, refused=refused)
    result["fit_rows"] = min(FIT_SAMPLE, sel.kept_by_score)
    entries = stage("write_curated", lambda: write_shards(urls, sel.removed_in, f"{out}/curated"))
    result["kept"] = sum(e["samples"] for e in entries)
    shutil.rmtree(work, ignore_errors=True)
    result["rss_peak_mib"] = max(s["rss_peak_mib"] for s in result["stages"].values())
    Path(spec["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the parent: one child per N, then the table


def run_size(args, work: Path, n: int, urls: list[str], model: Path) -> dict:
    out = work / f"run-{n}"
    shutil.rmtree(out, ignore_errors=True)  # fresh scores and curated shards: nothing skipped
    out.mkdir(parents=True)
    spec = {
        "urls": urls,
        "out": str(out),
        "model": str(model),
        "cpus": args.cpus,
        "actors": args.actors,
        "batch_size": args.batch_size,
        "keep_fraction": args.keep_fraction,
        "dedup_eps": args.dedup_eps,
        "clusters": args.clusters,
        "result": str(out / "result.json"),
    }
    (out / "spec.json").write_text(json.dumps(spec))
    log = work / f"run-{n}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, __file__, "--child", str(out / "spec.json")],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                timeout=args.run_timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not (out / "result.json").exists():
        _log(f"N={n} failed (exit {rc}); last lines of {log}:\n{_log_tail(log)}")
        return {"failed": f"exit {rc}", "log": str(log)}
    result = json.loads((out / "result.json").read_text())
    if not args.keep_outputs:
        shutil.rmtree(out / "scores", ignore_errors=True)
        shutil.rmtree(out / "curated", ignore_errors=True)
    return result


def _growth(r: dict, stage: str) -> float:
    return r["stages"][stage]["rss_peak_mib"] - r["stages"][stage]["rss_start_mib"]


def print_table(results: dict, args) -> None:
    ok = {n: r for n, r in results.items() if "failed" not in r}
    print(
        f"\n== curate stages by samples (driver peak RSS per stage: VmHWM reset at its start; "
        f"{args.actors} scorer actors, batch {args.batch_size}, keep_fraction {args.keep_fraction}, "
        f"dedup_eps {args.dedup_eps:g}, {args.clusters} clusters) =="
    )
    cols = [("", 34)] + [(f"{n}", 14) for n in results]
    print("".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(cols)))

    def row(label: str, cell) -> None:
        values = [("FAILED" if "failed" in r else cell(r)) for r in results.values()]
        print(f"{label:<34}" + "".join(f"{v:>14}" for v in values))

    row("samples scored", lambda r: str(r["scored"]))
    row("Ray start s", lambda r: f"{r['ray_start_s']:.1f}")
    row("driver RSS after Ray start MiB", lambda r: f"{r['rss_after_ray_mib']:.0f}")
    row("score s", lambda r: f"{r['stages']['score']['seconds']:.1f}")
    row("score images/s", lambda r: f"{r['images_per_s']:.0f}")
    row(
        "  after the actors' first shards",
        lambda r: f"{r['steady_images_per_s']:.0f}" if r["steady_images_per_s"] else "-",
    )
    row("score driver peak MiB", lambda r: f"{r['stages']['score']['rss_peak_mib']:.0f}")
    row("score actor peak MiB (each)", lambda r: "/".join(f"{m:.0f}" for m in r["actor_rss_mib"]) or "-")
    row("select s", lambda r: f"{r['stages']['select']['seconds']:.1f}")
    row("  of which the refused dedup s", lambda r: f"{r['refused_s']:.1f}" if r["refused"] else "-")
    row("  k-means fit rows", lambda r: str(r["fit_rows"]))
    row("select driver peak MiB", lambda r: f"{r['stages']['select']['rss_peak_mib']:.0f}")
    row("  over its start MiB", lambda r: f"{_growth(r, 'select'):.0f}")
    row("removed low_clip_score", lambda r: str(r["removed"].get("low_clip_score", 0)))
    row(
        "removed semantic_duplicate",
        lambda r: "refused" if r["refused"] else str(r["removed"].get("semantic_duplicate", 0)),
    )
    row("write_curated s", lambda r: f"{r['stages']['write_curated']['seconds']:.1f}")
    row("write_curated driver peak MiB", lambda r: f"{r['stages']['write_curated']['rss_peak_mib']:.0f}")
    row("samples kept", lambda r: str(r["kept"]))
    row("driver peak MiB (all stages)", lambda r: f"{r['rss_peak_mib']:.0f}")
    for n, r in results.items():
        if "failed" in r:
            print(f"N={n} FAILED ({r['failed']}): the end of {r['log']} is above")
        elif r["refused"]:
            print(f"N={n}: selection refused dedup at eps {args.dedup_eps:g} ({r['refused']}); written without dedup")
    if len(ok) > 1:
        (n0, a), (n1, b) = min(ok.items()), max(ok.items())
        print(f"\npeak memory at {n1} samples / at {n0} ({n1 / n0:g}x the samples):")
        for label, key in [
            ("score, driver", "score"),
            ("select, driver", "select"),
            ("write_curated, driver", "write_curated"),
        ]:
            print(f"  {label:<24}{b['stages'][key]['rss_peak_mib'] / a['stages'][key]['rss_peak_mib']:>6.2f}x")
        if a["actor_rss_mib"] and b["actor_rss_mib"]:
            print(f"  {'score, largest actor':<24}{max(b['actor_rss_mib']) / max(a['actor_rss_mib']):>6.2f}x")
        print(f"  {'driver, all stages':<24}{b['rss_peak_mib'] / a['rss_peak_mib']:>6.2f}x")
        print(
            f"  over their start: select {_growth(a, 'select'):.0f} -> {_growth(b, 'select'):.0f} MiB, write_curated "
            f"{_growth(a, 'write_curated'):.0f} -> {_growth(b, 'write_curated'):.0f} MiB"
        )


def parse_args(argv: list[str]):
    from pipelines.curate_config import CurateConfig

    defaults = CurateConfig()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="samples per run")
    p.add_argument("--recipe", type=Path, default=ROOT / "configs/clip_small.yaml", help="data and model sections")
    p.add_argument("--shard-samples", type=int, help="samples per shard of the copied set (default: the recipe's)")
    p.add_argument("--actors", type=int, default=defaults.actors, help="scorer actors (curate.actors)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="curate.batch_size")
    p.add_argument("--keep-fraction", type=float, default=defaults.keep_fraction, help="curate.keep_fraction")
    p.add_argument("--dedup-eps", type=float, default=1e-7, help="curate.dedup_eps (random weights: see above)")
    p.add_argument("--clusters", type=int, default=defaults.clusters, help="curate.clusters")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of each run's local Ray")
    p.add_argument("--seed", type=int, default=0, help="the random scorer's weights")
    p.add_argument("--workdir", type=Path, default=WORKDIR, help="shards, the model, each run's outputs and log")
    p.add_argument("--keep-outputs", action="store_true", help="keep each run's scores and curated shards")
    p.add_argument("--run-timeout", type=float, default=7200, help="seconds per run")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a TextIOWrapper
    recipe = _recipe(args.recipe)
    per = args.shard_samples or recipe["data"]["shard_samples"]
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    base = base_shards(work, recipe)
    model = random_model(work, recipe, args.seed)
    quality = recipe["data"].get("jpeg_quality", 90)
    results = {}
    for n in args.sizes:
        urls = sample_set(work, base, n, per, quality)
        if len(urls) * per != n:
            _log(f"N={n}: {len(urls)} whole shards of {per}, {len(urls) * per} samples")
        _log(f"N={n}: {len(urls)} shards; scoring, select, write_curated in a fresh process ...")
        results[n] = run_size(args, work, n, urls, model)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        child_main(sys.argv[2])
    else:
        main(sys.argv[1:])
