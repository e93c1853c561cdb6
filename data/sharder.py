"""Shard an image-text source into WebDataset tars with Ray tasks.

Two passes, both Ray tasks over chunks of records:
1. hash: read each record's bytes and hash them (sha256); the driver marks every repeat of a hash
   after its first occurrence (in source order) as a duplicate, so dedup is global and deterministic.
2. write: decode, validate, resize, re-encode and write one shard per chunk: `<split>-NNNNNN.tar`,
   written as `.tar.tmp` and renamed when complete, then a `.json` sidecar with its stats. A shard
   whose sidecar exists is complete and is skipped by a rerun; a partial one is never listed.

The held-out split is chosen by hashing a metadata field (`split_by`) so that related samples
(e.g. every skin tone of one emoji) fall on the same side.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import ray

from data import imageops
from data.sources import list_records, read_bytes
from infra.storage import Store, sha256_file

log = logging.getLogger(__name__)
SAMPLE_REJECTS_KEPT = 20
HASH_CHUNK = 256


def split_of(record: dict, holdout_fraction: float, split_by: str | None) -> str:
    group = record["meta"].get(split_by, record["key"]) if split_by else record["key"]
    h = int(hashlib.sha1(str(group).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < holdout_fraction else "train"


# tasks are retried (with their inputs) when they fail: a storage outage outlasting botocore's
# own retries costs a rerun of the task, not the run
@ray.remote(max_retries=3, retry_exceptions=True)
def _hash_chunk(records: list[dict], timeout_s: float, retries: int) -> list[tuple[str | None, str]]:
    """(sha256 or None, error) per record."""
    out = []
    for r in records:
        try:
            out.append((hashlib.sha256(read_bytes(r["src"], timeout_s, retries)).hexdigest(), ""))
        except Exception as e:  # missing file, HTTP failure...
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


def _add_tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


def _process_record(r: dict, cfg: dict):
    """(caption or None, processed image) of one record; raises imageops.Rejected."""
    if cfg.get("crash_on") and cfg["crash_on"] in r["src"]:   # tests: a native crash on this input
        os.kill(os.getpid(), 9)
    caption = None
    if r["caption"] is not None or cfg["require_caption"]:
        caption = imageops.check_caption(r["caption"], cfg["max_caption_chars"])
    label_field = cfg["label_field"]
    if label_field and str(r["meta"].get(label_field, "")) == "":
        raise imageops.Rejected("missing_label", f"no metadata field '{label_field}'")
    try:
        raw = read_bytes(r["src"], cfg["http_timeout_s"], cfg["http_retries"])
    except Exception as e:
        raise imageops.Rejected("unreadable", f"{type(e).__name__}: {e}") from None
    return caption, imageops.process_image(raw, cfg["image_size"], cfg["resize_mode"], cfg["min_image_size"],
                                           cfg["max_aspect"], cfg["jpeg_quality"])


@ray.remote(max_retries=0)
def _probe(records: list[dict], cfg: dict) -> None:
    """Process `records` and throw the results away: does any of them kill the task?"""
    for r in records:
        try:
            _process_record(r, cfg)
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
            return [{"key": records[0]["key"], "src": records[0]["src"], "reason": "task_failed",
                     "detail": f"{type(e).__name__}: {detail}"}]
        mid = len(records) // 2
        return find_poisoned(records[:mid], cfg) + find_poisoned(records[mid:], cfg)


@ray.remote(max_retries=3, retry_exceptions=True)
def _write_shard(out_root: str, name: str, records: list[dict], cfg: dict,
                 poisoned: list[dict] = ()) -> dict:
    """Process `records` into `<out_root>/<name>.tar` (a folder or an S3 prefix); return the
    shard's stats, also written to `<name>.json` last. `poisoned`: records left out because
    processing them kills the task (find_poisoned), counted as rejected."""
    import tempfile

    store = Store(out_root)
    tmp_dir = None if not store.s3 else tempfile.mkdtemp(prefix="shard-")
    tmp = Path(tmp_dir or out_root) / f"{name}.tar.tmp"
    rejected: Counter = Counter()
    samples_rejected: list[dict] = []
    widths, heights, caption_lens = [], [], []
    labels: Counter = Counter()
    label_field = cfg["label_field"]
    n = 0
    for r in poisoned:
        rejected["task_failed"] += 1
        samples_rejected.append(r)
    with tarfile.open(tmp, "w") as tar:
        for r in records:
            try:
                caption, p = _process_record(r, cfg)
            except imageops.Rejected as e:
                rejected[e.reason] += 1
                if len(samples_rejected) < SAMPLE_REJECTS_KEPT:
                    samples_rejected.append({"key": r["key"], "src": r["src"], "reason": e.reason,
                                             "detail": e.detail[:200]})
                continue
            meta = dict(r["meta"], source=r["src"], orig_width=p.orig_width, orig_height=p.orig_height,
                        sha256=r["sha256"], width=p.width, height=p.height)
            _add_tar_member(tar, f"{r['key']}.jpg", p.jpeg)
            if caption is not None:
                _add_tar_member(tar, f"{r['key']}.txt", caption.encode())
                caption_lens.append(len(caption))
            _add_tar_member(tar, f"{r['key']}.json", json.dumps(meta, ensure_ascii=False).encode())
            widths.append(p.orig_width)
            heights.append(p.orig_height)
            if label_field:
                labels[str(r["meta"][label_field])] += 1
            n += 1
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest, size = sha256_file(tmp), tmp.stat().st_size
    store.put_file(tmp, f"{name}.tar", digest)   # rename, or a verified (multipart) upload
    if tmp_dir:
        os.rmdir(tmp_dir)
    stats = {"name": f"{name}.tar", "samples": n, "bytes": size,
             "sha256": digest, "rejected": dict(rejected),
             "rejected_samples": samples_rejected, "orig_widths": widths, "orig_heights": heights,
             "caption_lengths": caption_lens, "labels": dict(labels)}
    store.write_text(f"{name}.json", json.dumps(stats))  # written last: marks the shard complete
    return stats


def _summary(values: list[int | float]) -> dict:
    if not values:
        return {}
    s = sorted(values)
    return {"min": s[0], "max": s[-1], "mean": round(sum(s) / len(s), 2), "median": s[len(s) // 2]}


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _run_tasks(fn, args: list[tuple], desc: str, units: list[int], max_in_flight: int,
               on_error=None, unit: str = "img") -> list:
    """Run `fn.remote(*a)` for each `a`, at most `max_in_flight` at once, with a progress bar
    counting `units[i]` items (`unit`: images, documents, pairs) for task i; results in input order. A task that still
    fails after Ray's retries raises, or gives `on_error(i, error)` as its result."""
    from tqdm import tqdm

    results: dict[int, object] = {}
    index: dict = {}
    todo = list(range(len(args)))[::-1]
    pending: list = []
    with tqdm(total=sum(units), desc=desc, unit=unit, mininterval=1.0,
              disable=os.environ.get("CI") == "true" and not os.isatty(2)) as bar:
        while todo or pending:
            while todo and len(pending) < max_in_flight:
                i = todo.pop()
                ref = fn.remote(*args[i])
                index[ref] = i
                pending.append(ref)
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    if on_error is None:
                        raise
                    results[index[ref]] = on_error(index[ref], e)
                bar.update(units[index[ref]])
    return [results[i] for i in range(len(args))]


def shard_dataset(cfg, out_dir: str | Path, crash_on: str = "") -> dict:
    """Shard the source of DataConfig `cfg` into `out_dir` (a folder or an s3://bucket/prefix);
    write and return `manifest.json`. A shard whose task keeps failing (after Ray's retries) is
    searched for the inputs that kill it; they are rejected as `task_failed` and the shard is
    written without them. (`crash_on`: tests only, inputs whose path contains it crash the worker.)"""
    t0 = time.time()
    store = Store(out_dir)
    store.check()
    store.remove_stale_tmp()
    out = store.root
    records = list_records(cfg.source, cfg.url_column, cfg.caption_column)
    if cfg.limit:
        records = records[:cfg.limit]
    log.info("sharding %d records from %s into %s", len(records), cfg.source, out)

    rejected: Counter = Counter()
    rejected_samples: list[dict] = []

    def reject(r: dict, reason: str, detail: str) -> None:
        rejected[reason] += 1
        if len(rejected_samples) < SAMPLE_REJECTS_KEPT:
            rejected_samples.append({"key": r["key"], "src": r["src"], "reason": reason, "detail": detail[:200]})
    # rejected while listing (a symbolic link out of the source folder, an unreadable caption file):
    # never read
    for r in records:
        if r.get("reject"):
            reject(r, *r["reject"])
    readable = [r for r in records if not r.get("reject")]

    # pass 1: content hashes, global dedup in source order
    in_flight = cfg.max_parallel_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    chunks = list(_chunks(readable, HASH_CHUNK))
    parts = _run_tasks(_hash_chunk, [(c, cfg.http_timeout_s, cfg.http_retries) for c in chunks],
                       "hash", [len(c) for c in chunks], in_flight)
    hashes = [h for part in parts for h in part]
    seen: dict[str, str] = {}
    kept: list[dict] = []
    for r, (digest, err) in zip(readable, hashes):
        if digest is None:
            reason, detail = "unreadable", err
        elif digest in seen:
            reason, detail = "duplicate", f"same content as {seen[digest]}"
        else:
            seen[digest] = r["key"]
            kept.append(dict(r, sha256=digest))
            continue
        reject(r, reason, detail)

    # pass 2: one task per shard that is not complete yet
    by_split: dict[str, list[dict]] = {"train": [], "eval": []}
    # a fixed pseudo-random order (by key hash): class-sorted sources do not give one-class shards
    for r in sorted(kept, key=lambda r: hashlib.sha1(r["key"].encode()).digest()):
        by_split[split_of(r, cfg.holdout_fraction, cfg.split_by)].append(r)
    task_cfg = {k: getattr(cfg, k) for k in ("max_caption_chars", "http_timeout_s", "http_retries",
                                             "image_size", "resize_mode", "min_image_size",
                                             "max_aspect", "jpeg_quality", "require_caption",
                                             "label_field")}
    task_cfg["crash_on"] = crash_on
    plan = [(split, f"{split}-{i:06d}", chunk) for split, recs in by_split.items()
            for i, chunk in enumerate(_chunks(recs, cfg.shard_samples))]
    stats: dict[str, dict] = {}
    todo = []
    complete = set(store.list(".json"))
    tars = set(store.list(".tar"))
    for split, name, chunk in plan:
        if f"{name}.json" in complete and f"{name}.tar" in tars:
            stats[name] = json.loads(store.read_text(f"{name}.json"))
        else:
            todo.append((name, chunk))
    skipped = len(stats)
    if skipped:
        log.info("%d of %d shards already complete: skipped", skipped, len(plan))
    def isolate(i: int, error: Exception) -> dict:
        name, chunk = todo[i]
        log.warning("shard %s failed after retries (%s): looking for the input that breaks it",
                    name, type(error).__name__)
        poisoned = find_poisoned(chunk, task_cfg)
        if not poisoned:
            raise error
        bad = {r["key"] for r in poisoned}
        for r in poisoned:
            log.warning("rejected %s (%s): processing it fails the task: %s", r["key"], r["src"], r["detail"])
        return ray.get(_write_shard.remote(str(out), name, [r for r in chunk if r["key"] not in bad],
                                           task_cfg, poisoned))

    written = _run_tasks(_write_shard, [(str(out), name, chunk, task_cfg) for name, chunk in todo],
                         "shard", [len(c) for _, c in todo], in_flight, on_error=isolate)
    for (name, _), st in zip(todo, written):
        stats[name] = st

    splits: dict[str, dict] = {}
    widths, heights, lens = [], [], []
    for split, name, _ in plan:
        st = stats[name]
        sp = splits.setdefault(split, {"shards": [], "samples": 0})
        sp["shards"].append({k: st[k] for k in ("name", "samples", "bytes", "sha256")})
        sp["samples"] += st["samples"]
        if cfg.label_field:
            counts = Counter(sp.get("labels", {}))
            counts.update(st.get("labels", {}))
            sp["labels"] = dict(sorted(counts.items()))
        rejected.update(st["rejected"])
        for s in st["rejected_samples"]:
            if len(rejected_samples) < SAMPLE_REJECTS_KEPT:
                rejected_samples.append(s)
        widths += st["orig_widths"]
        heights += st["orig_heights"]
        lens += st["caption_lengths"]
    for s in rejected_samples[:5]:
        log.warning("rejected %s (%s): %s %s", s["key"], s["src"], s["reason"], s["detail"])
    manifest = {
        "source": cfg.source,
        "input_records": len(records),
        "samples": sum(sp["samples"] for sp in splits.values()),
        "splits": splits,
        "rejected": dict(sorted(rejected.items())),
        "rejected_total": sum(rejected.values()),
        "rejected_samples": rejected_samples,
        "stats": {"orig_width": _summary(widths), "orig_height": _summary(heights),
                  "caption_chars": _summary(lens), "image_size": cfg.image_size,
                  "resize_mode": cfg.resize_mode},
        "shards_written": len(todo),
        "shards_skipped": skipped,
        "seconds": round(time.time() - t0, 2),
    }
    store.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest


def read_manifest(manifest_uri: str | Path) -> dict:
    parent, _, name = str(manifest_uri).rpartition("/")
    return json.loads(Store(parent).read_text(name))


def shard_urls(manifest_uri: str | Path, split: str) -> list[str]:
    """Paths (or s3:// URLs) of the shards of `split` listed in a manifest (names relative to the
    manifest's folder, or absolute: a derived manifest may point at another step's shards)."""
    manifest = read_manifest(manifest_uri)
    parent = str(manifest_uri).rpartition("/")[0]
    if split not in manifest["splits"]:
        raise ValueError(f"{manifest_uri}: no split '{split}' (have {sorted(manifest['splits'])})")
    return [s["name"] if "://" in s["name"] or s["name"].startswith("/") else f"{parent}/{s['name']}"
            for s in manifest["splits"][split]["shards"] if s["samples"]]


def write_tar_shard(out_root: str, name: str, samples: list[tuple[str, dict[str, bytes]]],
                    extra: dict | None = None) -> dict:
    """Write samples (key, {extension: bytes}) as shard `<name>.tar` under `out_root` (a folder or
    an S3 prefix), its sidecar `<name>.json` last (the shard is complete from then on); returns
    the sidecar: its entry for a manifest (name, samples, bytes, sha256) and `extra`."""
    import tempfile

    store = Store(out_root)
    with tempfile.TemporaryDirectory(prefix="shard-") as tmp_dir:
        tmp = Path(tmp_dir) / f"{name}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for key, members in samples:
                for ext, payload in members.items():
                    _add_tar_member(tar, f"{key}.{ext}", payload)
        digest, size = sha256_file(tmp), tmp.stat().st_size
        store.put_file(tmp, f"{name}.tar", digest, keep=True)   # copied: /tmp may be another disk
    entry = {"name": f"{name}.tar", "samples": len(samples), "bytes": size, "sha256": digest, **(extra or {})}
    store.write_text(f"{name}.json", json.dumps(entry))
    return entry


def write_ready_shard(out_root: str, name: str, samples: list[dict]) -> dict:
    """Write already-processed image samples ({"__key__", "jpg": bytes, "txt": str, "json": dict})
    as shard `<name>.tar` (see write_tar_shard)."""
    return write_tar_shard(out_root, name, [
        (s["__key__"], {"jpg": s["jpg"], "txt": s["txt"].encode(),
                        "json": json.dumps(s["json"], ensure_ascii=False).encode()}) for s in samples])
