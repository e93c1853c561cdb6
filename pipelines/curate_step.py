"""The `curate` step: the shard step's training shards scored by a scorer model (a Ray Data actor
pool), filtered by score and semantic duplication, written again as shards with a manifest in the
shard step's format (data/curation/). The held-out split stays the shard step's own.

What a family gives: `scorer(ctx)`, a picklable factory of its scorer (CLIP's: the teacher step's
model). A rerun after a kill scores only the shards without scores and writes only the shards
without a sidecar.

A source that declares its known noise (data/reading/known_noise.py: `noise.json` at a folder
source's root, as `demo:emoji-noisy` has) gets the removals measured against it: precision and
recall by reason (data/curation/noise_metrics.py) in the metrics, the console line and the curated
manifest. Pictures (data/curation/pictures.py) go to the step's folder and its MLflow run."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from data.curation.noise_metrics import measure
from data.curation.pictures import draw_tallied
from data.curation.score import score_shards
from data.curation.stream import select_streamed
from data.curation.write import write_shards
from data.reading.known_noise import known_noise
from data.writing.shard_io import read_manifest, shard_urls
from infra.storage import Store
from pipelines.curate_config import CurateConfig
from pipelines.workflow import StepContext


def cluster_gpus() -> float:
    """One GPU per scorer actor when the cluster has GPUs, else none (CPU actors)."""
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def curate_step(cfg: CurateConfig, scorer: Callable[[StepContext], Callable[[], Any]], seed: int = 0):
    def run(ctx: StepContext) -> dict:
        src = ctx.inputs["shard"]["manifest"]
        urls = shard_urls(src, "train")
        t0 = time.time()
        stats = score_shards(urls, f"{ctx.uri}/scores", scorer(ctx), cfg.actors, cfg.batch_size, cluster_gpus())
        noise = known_noise(read_manifest(src)["source"])
        ctx.dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="selection-", dir=ctx.dir) as work:  # clusters, removals by shard
            sel = select_streamed(
                f"{ctx.uri}/scores", urls, Path(work), cfg.min_score, cfg.keep_fraction, cfg.clusters,
                cfg.dedup_eps, seed, cfg.dedup_on, noise,
            )  # fmt: skip
            entries = write_shards(urls, sel.removed_in, f"{ctx.uri}/shards")
        threshold, n = sel.threshold, sel.scores.n
        counts, examples = dict(sel.removals.counts), sel.removals.examples()
        kept = sum(e["samples"] for e in entries)
        measured = measure(noise, sel.scores.seen, sel.removals) if noise else {}
        manifest = curated_manifest(src, entries, kept, counts, examples, threshold, cfg, measured)
        Store(f"{ctx.uri}/shards").write_text("manifest.json", json.dumps(manifest, indent=1))
        metrics = {
            "scored": float(n),
            "kept": float(kept),
            "kept_fraction": kept / max(1, n),
            "score_threshold": threshold,
            "images_per_s": stats["images_per_s"],
            **{f"removed_{k}": float(v) for k, v in counts.items()},
            **measured,
        }
        pictures = draw_tallied(sel.scores, sel.removals, threshold, urls, ctx.dir / "pictures", noise)
        if ctx.tracker:
            ctx.tracker.log_metrics(metrics)
            for path in pictures:
                ctx.tracker.log_artifact(path, "pictures")
        print(
            f"[curate] {n} training samples scored ({stats['scored']} shards now, "
            f"{stats['skipped']} already, {stats['images_per_s']:.0f} images/s): kept {kept}, removed {counts} "
            f"(score threshold {threshold:.4f}){against_noise(measured)}, {time.time() - t0:.1f}s",
            flush=True,
        )
        return {"manifest": f"{ctx.uri}/shards/manifest.json", "kept": kept, "removed": counts, **metrics}

    return run


def against_noise(measured: dict) -> str:
    """`; against the known noise: low_clip_score precision 0.81 recall 0.64, ...` (or nothing)."""
    parts = []
    for reason in ("low_clip_score", "semantic_duplicate"):
        pr = [f"{m} {measured[f'{reason}_{m}']:.2f}" for m in ("precision", "recall") if f"{reason}_{m}" in measured]
        parts += [f"{reason} {' '.join(pr)}"] if pr else []
    return f"; against the known noise: {', '.join(parts)}" if parts else ""


def curated_manifest(
    src: str, entries: list[dict], kept: int, counts: dict, examples: list, threshold, cfg, measured=None
) -> dict:
    """The shard step's manifest fields: the curated training shards, the original held-out shards
    (full names), the removed samples by reason with examples, the settings that chose them (and
    `known_noise`: the removals measured against the source's known noise, when it declares some)."""
    source = read_manifest(src)
    parent = src.rpartition("/")[0]
    held_out = source["splits"].get("eval", {"samples": 0, "shards": []})
    return {
        "source": f"curate of {src}",
        "samples": kept + held_out["samples"],
        "rejected": counts,
        "rejected_total": sum(counts.values()),
        "rejected_samples": examples,
        "curation": {
            "score_threshold": threshold,
            "min_score": cfg.min_score,
            "keep_fraction": cfg.keep_fraction,
            "dedup_eps": cfg.dedup_eps,
            "clusters": cfg.clusters,
            **({"known_noise": measured} if measured else {}),
        },  # fmt: skip
        "splits": {
            "train": {"shards": entries, "samples": kept},
            "eval": {
                "samples": held_out["samples"],
                "shards": [dict(s, name=f"{parent}/{s['name']}") for s in held_out["shards"]],
            },
        },
    }
