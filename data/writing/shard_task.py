"""One shard task: read, decode, validate, resize, re-encode and hash its input records in one pass,
many reads in flight (data.reading.fetch), and write its shards.

Task i writes `train-NNNNNN.tar` (and `eval-NNNNNN.tar` when data.holdout_fraction > 0), each with
`<name>.hashes.parquet` (key, sha256, input order and statistics of every sample: the input of the
global dedup) and the `<name>.json` sidecar; the train sidecar is written last and marks the task
complete. A repeat of content within the task is rejected as `duplicate` at once (first in input
order wins); repeats across tasks are found afterwards (data.writing.dedup).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from data.reading.fetch import FetchError, HostLimiter, fetch_bytes, host_of, ordered_map
from data.reading.text_values import NotText, alt_captions
from data.writing import imageops
from data.writing.tar_writer import TarWriter
from infra.storage import Store

SAMPLE_REJECTS_KEPT = 20
HIST_FIELDS = ("orig_width", "orig_height", "caption_chars")


class Rejects:
    """Rejected inputs: counts by reason and the first SAMPLE_REJECTS_KEPT examples."""

    def __init__(self):
        self.counts, self.samples = Counter(), []

    def add(self, key: str, reason: str, detail: str, **fields) -> None:
        self.counts[reason] += 1
        if len(self.samples) < SAMPLE_REJECTS_KEPT:
            self.samples.append({"key": key, **fields, "reason": reason, "detail": detail[:200]})

    def merge(self, sidecar: dict) -> None:
        """Add a shard sidecar's `rejected` counts and examples (for a manifest)."""
        self.counts.update(sidecar["rejected"])
        self.samples += sidecar["rejected_samples"][: SAMPLE_REJECTS_KEPT - len(self.samples)]


def split_of(record: dict, holdout_fraction: float, split_by: str | None) -> str:
    group = record["meta"].get(split_by, record["key"]) if split_by else record["key"]
    h = int(hashlib.sha1(str(group).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < holdout_fraction else "train"


def parts_of(task: int, holdout_fraction: float) -> list[str]:
    """The shard names task `task` writes; the last one's sidecar marks the task complete."""
    return ([f"eval-{task:06d}"] if holdout_fraction > 0 else []) + [f"train-{task:06d}"]


def check_record(r: dict, cfg: dict):
    """The record's caption (None when it has none and none is required); raises imageops.Rejected
    for what can be judged before reading the image."""
    if r.get("reject"):
        raise imageops.Rejected(*r["reject"])
    caption = None
    if r["caption"] is not None or cfg["require_caption"]:
        caption = imageops.check_caption(r["caption"], cfg["max_caption_chars"])
    if "alt_captions" in r["meta"]:
        try:
            r["meta"]["alt_captions"] = alt_captions(r["meta"]["alt_captions"], cfg["max_caption_chars"])
        except NotText as e:
            raise imageops.Rejected(e.reason, str(e)) from None
    if cfg["label_field"] and str(r["meta"].get(cfg["label_field"], "")) == "":
        raise imageops.Rejected("missing_label", f"no metadata field '{cfg['label_field']}'")
    return caption


def fetch(r: dict, cfg: dict, limiter: HostLimiter | None = None) -> bytes:
    """The record's bytes; raises imageops.Rejected (`unreadable`, with `fetch_reason`)."""
    if cfg.get("crash_on") and cfg["crash_on"] in r["src"]:  # tests: a native crash on this input
        os.kill(os.getpid(), 9)
    try:
        with limiter.slot(r["src"]) if limiter else nullcontext():
            return fetch_bytes(r["src"], cfg["http_timeout_s"], cfg["http_retries"], cfg["max_record_bytes"])
    except FetchError as e:
        rejected = imageops.Rejected("unreadable", str(e))
        rejected.fetch_reason = e.reason
        raise rejected from None


def process(raw: bytes, cfg: dict):
    """(sha256 of the bytes read, the processed image); raises imageops.Rejected."""
    p = imageops.process_image(
        raw, cfg["image_size"], cfg["resize_mode"], cfg["min_image_size"], cfg["max_aspect"], cfg["jpeg_quality"]
    )
    return hashlib.sha256(raw).hexdigest(), p


class ShardWriter:
    """One output shard: the tar (written to a temporary file), its samples' hashes and stats."""

    def __init__(self, store: Store, name: str, label_field: str):
        self.store, self.name, self.label_field = store, name, label_field
        self.tmp_dir = tempfile.mkdtemp(prefix="shard-") if store.s3 else None
        self.tmp = Path(self.tmp_dir or store.root) / f"{name}.tar.tmp"
        self.tar = TarWriter(self.tmp)
        self.rows: list[dict] = []
        self.hist: dict[str, Counter] = {f: Counter() for f in HIST_FIELDS}
        self.labels: Counter = Counter()

    def add(self, r: dict, caption, p: imageops.Processed, sha: str) -> None:
        meta = dict(
            r["meta"],
            source=r["src"],
            orig_width=p.orig_width,
            orig_height=p.orig_height,
            sha256=sha,
            width=p.width,
            height=p.height,
        )
        try:  # every member encoded before any is written: a reject leaves nothing behind
            members = (
                [(f"{r['key']}.jpg", p.jpeg)]
                + ([(f"{r['key']}.txt", caption.encode())] if caption is not None else [])
                + [(f"{r['key']}.json", json.dumps(meta, ensure_ascii=False).encode())]
            )
        except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud83d") in the caption or metadata
            raise imageops.Rejected("invalid_text", f"not encodable as UTF-8: {e}") from None
        for name, payload in members:
            self.tar.add(name, payload)
        label = str(r["meta"][self.label_field]) if self.label_field else None
        row = {
            "key": r["key"],
            "sha256": sha,
            "order": r["order"],
            "orig_width": p.orig_width,
            "orig_height": p.orig_height,
            "caption_chars": len(caption) if caption is not None else -1,
            "label": label,
        }
        self.rows.append(row)
        add_stats(self.hist, self.labels, row, +1)

    def finish(self, extra: dict) -> dict:
        """Upload the tar and its hashes, then write the sidecar; return the sidecar."""
        digest, size = self.tar.close()  # fsynced, hashed as written
        self.store.put_file(self.tmp, f"{self.name}.tar", digest)  # rename, or a verified upload
        if self.tmp_dir:
            os.rmdir(self.tmp_dir)
        write_hashes(self.store, self.name, self.rows)
        sidecar = {
            "name": f"{self.name}.tar",
            "samples": len(self.rows),
            "bytes": size,
            "sha256": digest,
            "rejected": {},
            "rejected_samples": [],
            "fetch_errors": {},
            "hist": {f: dict(c) for f, c in self.hist.items()},
            "labels": dict(self.labels),
            **extra,
        }
        self.store.write_text(f"{self.name}.json", json.dumps(sidecar))
        return sidecar


def add_stats(hist: dict, labels: Counter, row: dict, sign: int) -> None:
    for f in HIST_FIELDS:
        if row[f] >= 0:
            hist[f][row[f]] += sign
    if row.get("label") is not None:
        labels[row["label"]] += sign


def write_hashes(store: Store, name: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("sha256", pa.string()),
            ("order", pa.int64()),
            ("orig_width", pa.int32()),
            ("orig_height", pa.int32()),
            ("caption_chars", pa.int32()),
            ("label", pa.string()),
        ]
    )
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    store.write_bytes(f"{name}.hashes.parquet", buf.getvalue())


def _attempt(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - judged by the caller
        return e


def _processed(todo: list, cfg: dict, limiter: HostLimiter):
    """((record, caption), (sha256, processed image) or the exception) for each of `todo`, in order.
    Remote reads (http(s), s3) wait on many threads (data.fetch_concurrency); local files are read
    where they are decoded: a task has one CPU, and a thread handing each file over costs more CPU
    than reading it (measured: 2.3x the CPU per image of one thread doing both)."""
    remote = [host_of(r["src"]) is not None for r, _ in todo]
    fetched = iter(
        ordered_map(
            lambda item: fetch(item[0], cfg, limiter),
            [item for item, far in zip(todo, remote) if far],
            cfg["fetch_concurrency"],
        )
        if any(remote)
        else ()
    )
    for item, far in zip(todo, remote):
        raw = next(fetched)[1] if far else _attempt(fetch, item[0], cfg)
        yield item, raw if isinstance(raw, Exception) else _attempt(process, raw, cfg)


def run_task(task: int, records: list[dict], cfg: dict, poisoned: Sequence[dict] = ()) -> list[dict]:
    """Shard `records` (task `task` of the plan) into cfg["out"]; return the sidecars written.
    `poisoned`: records left out because processing them kills the task, rejected as `task_failed`."""
    store = Store(cfg["out"])
    names = parts_of(task, cfg["holdout_fraction"])
    writers = {n.split("-")[0]: ShardWriter(store, n, cfg["label_field"]) for n in names}
    rejects = Rejects()
    fetch_errors: Counter[str] = Counter()

    def reject(r: dict, reason: str, detail: str) -> None:
        rejects.add(r["key"], reason, detail, src=r["src"])

    for r in poisoned:
        reject(r, r["reason"], r["detail"])
    todo = []
    for r in sorted(records, key=lambda r: r["order"]):  # input order: the first of two repeats wins
        try:
            todo.append((r, check_record(r, cfg)))
        except imageops.Rejected as e:
            reject(r, e.reason, e.detail)
    limiter = HostLimiter(cfg["fetch_per_host"])
    seen: dict[str, str] = {}
    for (r, caption), result in _processed(todo, cfg, limiter):
        if isinstance(result, imageops.Rejected):
            reject(r, result.reason, result.detail)
            if getattr(result, "fetch_reason", None):
                fetch_errors[result.fetch_reason] += 1
            continue
        if isinstance(result, Exception):
            raise result  # not a judgement on the input: the task fails (retried, then isolated)
        sha, p = result
        if sha in seen:
            reject(r, "duplicate", f"same content as {seen[sha]}")
            continue
        try:
            writers[split_of(r, cfg["holdout_fraction"], cfg["split_by"])].add(r, caption, p, sha)
        except imageops.Rejected as e:
            reject(r, e.reason, e.detail)
            continue
        seen[sha] = r["key"]
    out = []
    for n in names:  # train last: its sidecar marks the task complete
        extra: dict[str, Any] = {"task": task}
        if n.startswith("train"):
            extra.update(
                input_records=len(records) + len(poisoned),
                rejected=dict(rejects.counts),
                rejected_samples=rejects.samples,
                fetch_errors=dict(fetch_errors),
            )
        out.append(writers[n.split("-")[0]].finish(extra))
    return out
