"""Shard an image-text source into WebDataset tars: one streaming pass of Ray tasks.

1. plan (driver, data.reading.inputs): shard task i takes input rows [i*n, (i+1)*n) of a manifest (or
   the i-th slice of a folder's listing); the driver holds the ranges, never the rows.
2. shard (one Ray task per range, at most one per CPU in flight, data.writing.shard_task): each task reads its rows, fetches their
   images with many reads in flight, decodes, validates, resizes, re-encodes and hashes them in
   the same pass and writes `train-NNNNNN.tar` (+ `eval-NNNNNN.tar`), written as `.tar.tmp` and
   renamed when complete, then the `.json` sidecars (train last: the task is complete). A rerun
   lists the complete tasks and runs only the others: it reads none of their inputs. A task that
   still fails after Ray's retries is searched for the inputs that kill it (bisection with
   throw-away tasks); they are rejected as `task_failed` and the task runs without them.
3. dedup (over the shards' hash lists: on the driver up to 500,000 samples, a Ray Data groupby
   above, data.writing.dedup): a repeat of content across
   shards is removed from its shard, first occurrence in input order wins.
4. manifest: merged from the sidecars, one at a time (counts, histograms of sizes: no per-image
   list), written last.

The held-out split is chosen by hashing a metadata field (`split_by`) so that related samples
(e.g. every skin tone of one emoji) fall on the same side.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import ray

from data.reading.inputs import Plan, plan_inputs, read_range
from data.reading.sources import list_records
from data.writing import imageops
from data.writing.dedup import dedup_once
from data.writing.shard_io import (
    SAMPLE_REJECTS_KEPT,
    complete_tasks,
    hist_summary,
    read_manifest,
    read_sidecars,
    run_tasks,
    shard_urls,
    stream_tasks,
    summary,
    write_ready_shard,
    write_tar_shard,
)
from data.writing.shard_task import Rejects, check_record, fetch, parts_of, process, run_task, split_of
from infra.os_errors import environment_error
from infra.storage import StorageError, Store

log = logging.getLogger(__name__)
__all__ = [
    "shard_dataset",
    "read_manifest",
    "shard_urls",
    "write_tar_shard",
    "write_ready_shard",
    "split_of",
    "find_poisoned",
    "run_tasks",
    "summary",
    "SAMPLE_REJECTS_KEPT",
]
TASK_KEYS = (
    "max_caption_chars",
    "http_timeout_s",
    "http_retries",
    "image_size",
    "resize_mode",
    "min_image_size",
    "max_aspect",
    "jpeg_quality",
    "require_caption",
    "label_field",
    "holdout_fraction",
    "split_by",
    "fetch_concurrency",
    "fetch_per_host",
    "max_record_bytes",
)


def _records(plan: Plan, i: int) -> list[dict]:
    return read_range(plan.table, *plan.ranges[i]) if plan.table else plan.listed[i]


@ray.remote(max_retries=0)
def _probe(records: list[dict], cfg: dict) -> None:
    """Process `records` and throw the results away: does any of them kill the task?"""
    for r in records:
        try:
            check_record(r, cfg)
            process(fetch(r, cfg), cfg)
        except imageops.Rejected:
            pass


def find_poisoned(records: list[dict], cfg: dict) -> list[dict]:
    """The records on which processing fails outside the per-record checks (a crash of the worker
    process, an unexpected exception), by bisection with throw-away tasks."""
    try:
        ray.get(_probe.remote(records, cfg))
        return []
    except ray.exceptions.RayError as e:
        if len(records) == 1:
            detail = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            return [
                {
                    "key": records[0]["key"],
                    "src": records[0]["src"],
                    "reason": "task_failed",
                    "detail": f"{type(e).__name__}: {detail}",
                }
            ]
        mid = len(records) // 2
        return find_poisoned(records[:mid], cfg) + find_poisoned(records[mid:], cfg)


# a task is retried (with its inputs) when it fails: a storage outage outlasting botocore's own
# retries costs a rerun of the task, not the run
@ray.remote(max_retries=3, retry_exceptions=True)
def _run_task_remote(task: int, records: list[dict], cfg: dict, poisoned: list[dict]) -> list[dict]:
    return run_task(task, records, cfg, poisoned)


def _isolate(plan: Plan, i: int, cfg: dict) -> None:
    records = _records(plan, i)
    log.warning("shard task %d failed after retries: looking for the input that breaks it", i)
    poisoned = find_poisoned(records, cfg)
    if not poisoned:  # no input is to blame: run it once more to say what fails
        try:
            ray.get(_run_task_remote.options(max_retries=0).remote(i, records, cfg, []))
            return
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None)
            if environment_error(cause):
                raise StorageError(f"shard task {i} cannot write its output: {environment_error(cause)}") from None
            lines = [x for x in str(cause or e).strip().splitlines() if x.strip()]
            raise RuntimeError(
                f"shard task {i} ({plan.rows_of(i)} records of {plan.source}) keeps failing, "
                f"though each of its inputs alone is processed: "
                f"{lines[-1][:500] if lines else type(e).__name__}"
            ) from None
    bad = {r["key"] for r in poisoned}
    for r in poisoned:
        log.warning("rejected %s (%s): processing it fails the task: %s", r["key"], r["src"], r["detail"])
    ray.get(_run_task_remote.remote(i, [r for r in records if r["key"] not in bad], cfg, poisoned))


def _run_shard_tasks(plan: Plan, todo: list[int], cfg: dict, concurrency: int) -> None:
    """Run the tasks `todo` on Ray Data; isolate the inputs of those that fail after their retries."""
    finished = stream_tasks(plan, todo, _records, run_task, cfg, concurrency, "shard", "img")
    for i in (i for i in todo if i not in finished):
        _isolate(plan, i, cfg)


def _manifest(cfg, plan: Plan, store: Store, names: list[str]) -> dict:
    splits: dict[str, dict] = {}
    rejects = Rejects()
    fetch_errors: Counter[str] = Counter()
    hist: dict[str, Counter] = {f: Counter() for f in ("orig_width", "orig_height", "caption_chars")}
    removed = 0
    for name, sc in zip(names, read_sidecars(store, names)):
        sp = splits.setdefault(name.split("-")[0], {"shards": [], "samples": 0})
        sp["shards"].append({k: sc[k] for k in ("name", "samples", "bytes", "sha256")})
        sp["samples"] += sc["samples"]
        if cfg.label_field:
            sp["labels"] = dict(sorted((Counter(sp.get("labels", {})) + Counter(sc["labels"])).items()))
        rejects.merge(sc)
        fetch_errors.update(sc["fetch_errors"])
        for f, c in sc["hist"].items():
            hist[f].update({int(k): v for k, v in c.items()})
        removed += sc.get("dedup_removed", 0)
    splits = {s: splits[s] for s in ("train", "eval") if s in splits}
    return {
        "source": cfg.source,
        "input_records": plan.total,
        "samples": sum(sp["samples"] for sp in splits.values()),
        "splits": splits,
        "rejected": dict(sorted(rejects.counts.items())),
        "rejected_total": sum(rejects.counts.values()),
        "rejected_samples": rejects.samples,
        "fetch_errors": dict(sorted(fetch_errors.items())),
        "duplicates_across_shards": removed,
        "stats": {
            "orig_width": hist_summary(hist["orig_width"]),
            "orig_height": hist_summary(hist["orig_height"]),
            "caption_chars": hist_summary(hist["caption_chars"]),
            "image_size": cfg.image_size,
            "resize_mode": cfg.resize_mode,
        },
    }


def shard_dataset(cfg, out_dir, crash_on: str = "") -> dict:
    """Shard the source of DataConfig `cfg` into `out_dir` (a folder or an s3://bucket/prefix);
    write and return `manifest.json`. (`crash_on`: tests only, inputs whose path contains it crash
    the worker.)"""
    t0 = time.time()
    store = Store(out_dir)
    store.check()
    store.remove_stale_tmp()
    plan = plan_inputs(
        cfg.source, cfg.url_column, cfg.caption_column, cfg.shard_samples, cfg.limit, lister=list_records
    )
    log.info("sharding %d records from %s into %s: %d tasks", plan.total, cfg.source, store.root, plan.tasks)
    task_cfg = {k: getattr(cfg, k) for k in TASK_KEYS}
    task_cfg.update(out=str(store.root), crash_on=crash_on)
    parts = [parts_of(i, cfg.holdout_fraction) for i in range(plan.tasks)]
    names = [n for p in parts for n in p]
    complete = complete_tasks(store, parts)
    todo = [i for i in range(plan.tasks) if i not in complete]
    skipped = len(names) - sum(len(parts[i]) for i in todo)
    if skipped:
        log.info("%d of %d shards already complete: skipped", skipped, len(names))
    concurrency = cfg.max_parallel_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    _run_shard_tasks(plan, todo, task_cfg, concurrency)

    # global dedup, skipped when the shards are those the last dedup left
    (manifest,) = dedup_once(store, lambda: (_manifest(cfg, plan, store, names),), concurrency)
    manifest.update(shards_written=len(names) - skipped, shards_skipped=skipped, seconds=round(time.time() - t0, 2))
    store.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest
