"""Exact global dedup by content, after the shards are written, without reading an image again.

Every shard's `<name>.hashes.parquet` lists its samples' sha256 and input order. A Ray Data pass
reads those lists, groups them by a bucket of the hash (a repeat always falls in its original's
bucket), and in each bucket marks every sample whose content an earlier sample (in input order)
already has. The marked samples' shards are rewritten without them (a second groupby, by shard,
on the workers): their tar, hashes and sidecar, the sidecar counting them as `duplicate` and its
statistics adjusted. The driver only sees one small summary per rewritten shard.

Why rewrite rather than have the loader skip: every reader of the shards (training, evaluation,
CapFilt, WebDataset outside this project) then sees exactly the manifest's samples, and the cost
falls only on shards that hold a repeat (a local copy of a tar, no fetch).
A rewrite deletes the sidecar first: a crash part-way leaves the shard incomplete, and a rerun
writes it again from its inputs (and dedups again).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from data.writing.shard_io import ray_data_quiet
from data.writing.shard_task import HIST_FIELDS, SAMPLE_REJECTS_KEPT, add_stats, write_hashes
from data.writing.tar_writer import TarWriter
from infra.storage import Store

MARKER = "dedup.json"
ROWS_PER_BUCKET = 200_000
# up to this many samples the repeats are found on the driver (16 bytes a sample: 8 MB at 500k,
# read 16 hash lists at once) instead of a Ray Data shuffle, whose start-up (about 1 s warm, 3-4 s
# cold) is most of a small job's dedup; above it the driver's memory stays flat
DRIVER_ROWS = 500_000


def fingerprint(sidecars: list[dict]) -> str:
    return hashlib.sha256(json.dumps(sorted((s["name"], s["sha256"]) for s in sidecars)).encode()).hexdigest()


def _hash_table(store: Store, name: str, columns: list[str] | None = None, tries: int = 3):
    """The hash list of shard `name` (those `columns`, or all) as a pyarrow table; a read that
    fails (object storage's transient errors) is tried `tries` times, 1 s then 2 s apart."""
    import pyarrow.parquet as pq

    for attempt in range(tries):
        try:
            return pq.read_table(io.BytesIO(store.read_bytes(f"{name}.hashes.parquet")), columns=columns)
        except Exception:  # botocore's errors are not OSErrors; a bad file fails again, then raises
            if attempt == tries - 1:
                raise
            time.sleep(2**attempt)


def _read_hashes(batch: dict, root: str) -> dict:
    import pyarrow as pa

    store = Store(root)
    tables = []
    for name in batch["name"]:
        t = _hash_table(store, name, ["key", "sha256", "order"])
        tables.append(t.append_column("shard", pa.array([name] * len(t), pa.string())))
    return pa.concat_tables(tables) if tables else pa.table({"key": [], "sha256": [], "order": [], "shard": []})


def _with_bucket(batch, buckets: int):
    batch["bucket"] = batch["sha256"].str[:8].apply(lambda h: int(h, 16) % buckets)
    return batch


def _repeats(group):
    """The rows of one bucket whose sha256 an earlier row (by input order) already has."""
    group = group.sort_values(["sha256", "order"])
    first = group.drop_duplicates("sha256")[["sha256", "key"]].rename(columns={"key": "first_key"})
    dup = group[group.duplicated("sha256", keep="first")]
    return dup.merge(first, on="sha256")[["shard", "key", "first_key"]]


def copy_without(store: Store, name: str, drop: set) -> tuple[str, int]:
    """Rewrite `<name>.tar` under `store` without the samples whose key is in `drop`; (sha256, bytes)."""
    with tempfile.TemporaryDirectory(prefix="dedup-") as tmp:
        src, dst = Path(tmp) / "in.tar", Path(tmp) / "out.tar"
        store.download(f"{name}.tar", src)
        tout = TarWriter(dst)
        with tarfile.open(src) as tin:
            for member in tin:
                if member.isfile() and member.name.split(".", 1)[0] not in drop:
                    data = tin.extractfile(member)
                    assert data is not None  # member.isfile(): a regular member always has its bytes
                    tout.add(member.name, data.read())
        digest, size = tout.close()
        store.put_file(dst, f"{name}.tar", digest, keep=True)
    return digest, size


def load_repeats(group, root: str):
    """(store, shard name, {repeat key: its first's key}, sidecar, hash rows) of one shard's group of repeats."""
    store = Store(root)
    name = group["shard"].iloc[0]
    sidecar = json.loads(store.read_text(f"{name}.json"))
    rows = _hash_table(store, name).to_pylist()
    return store, name, dict(zip(group["key"], group["first_key"])), sidecar, rows


def duplicates_counted(sidecar: dict, drop: dict, what: str, **sample) -> dict:
    """The sidecar's `rejected`, `rejected_samples` and `dedup_removed` with the repeats `drop` added."""
    rejected = Counter(sidecar["rejected"])
    rejected["duplicate"] += len(drop)
    samples = list(sidecar["rejected_samples"])
    for key, first in sorted(drop.items())[: max(0, SAMPLE_REJECTS_KEPT - len(samples))]:
        samples.append({"key": key, **sample, "reason": "duplicate", "detail": f"same {what} as {first}"})
    return {
        "rejected": dict(rejected),
        "rejected_samples": samples,
        "dedup_removed": sidecar.get("dedup_removed", 0) + len(drop),
    }


def removed(name: str, n: int):
    import pandas as pd

    return pd.DataFrame({"name": [name], "removed": [n]})


def _rewrite(group, root: str):
    """Rewrite one image shard without the rows of `group` (its repeats)."""
    store, name, drop, sidecar, rows = load_repeats(group, root)
    store.delete(f"{name}.json")  # incomplete from here until the new sidecar
    digest, size = copy_without(store, name, set(drop))
    sidecar.update(bytes=size, sha256=digest)
    hist = {f: Counter({int(k): v for k, v in sidecar["hist"][f].items()}) for f in HIST_FIELDS}
    labels = Counter(sidecar["labels"])
    kept = []
    for row in rows:
        if row["key"] in drop:
            add_stats(hist, labels, row, -1)
        else:
            kept.append(row)
    write_hashes(store, name, kept)
    sidecar.update(
        samples=len(kept),
        hist={f: {k: v for k, v in c.items() if v} for f, c in hist.items()},
        labels={k: v for k, v in labels.items() if v},
        **duplicates_counted(sidecar, drop, "content", src=""),
    )
    store.write_text(f"{name}.json", json.dumps(sidecar))
    return removed(name, len(drop))


def _repeats_on_driver(root: str, names: list[str]):
    """The repeats (a DataFrame: shard, key, first_key; None when there is none) among the shards `names`: candidates by the
    first 64 bits of the sha256 (numpy, 16 bytes a sample), confirmed on the full hash."""

    store = Store(root)
    prefixes, orders, shards = [], [], []
    with ThreadPoolExecutor(16) as pool:
        for i, t in enumerate(pool.map(lambda n: _hash_table(store, n, ["sha256", "order"]), names)):
            prefixes.append(np.array([int(h[:16], 16) for h in t.column("sha256").to_pylist()], dtype=np.uint64))
            orders.append(t.column("order").to_numpy().astype(np.int64))
            shards.append(np.full(len(t), i, dtype=np.int32))
    prefix = np.concatenate(prefixes)
    _, inverse, counts = np.unique(prefix, return_inverse=True, return_counts=True)
    suspects = counts[inverse] > 1
    if not suspects.any():  # the usual case: pandas is not even imported
        return None
    import pandas as pd

    order, shard = np.concatenate(orders)[suspects], np.concatenate(shards)[suspects]
    rows = []
    for i in sorted(set(shard.tolist())):  # the few shards holding a suspect: their keys and full hashes
        t = _hash_table(store, names[i], ["key", "sha256", "order"]).to_pandas()
        rows.append(t[t["order"].isin(order[shard == i])].assign(shard=names[i]))
    return _repeats(pd.concat(rows))


def _dedup_on_driver(root: str, names: list[str], rewrite) -> dict[str, int]:
    import ray

    repeats = _repeats_on_driver(root, names)
    if repeats is None or repeats.empty:
        return {}
    task = ray.remote(max_retries=3, retry_exceptions=True)(rewrite)
    done = ray.get([task.remote(group, root) for _, group in repeats.groupby("shard")])
    return {row["name"]: int(row["removed"]) for df in done for row in df.to_dict("records")}


def dedup_shards(root: str, names: list[str], rows: int, concurrency: int, rewrite=_rewrite) -> dict[str, int]:
    """Remove repeats of content across the shards `names` under `root` (`rows`: their samples in
    all) with `rewrite(group of one shard's repeats, root)` (image shards by default); returns the
    samples removed from each shard rewritten."""
    import ray.data

    if len(names) < 2 or rows < 2:
        return {}
    if rows <= DRIVER_ROWS:
        return _dedup_on_driver(root, names, rewrite)
    buckets = max(1, min(4096, rows // ROWS_PER_BUCKET + 1))
    parts = max(1, min(buckets, 2 * concurrency))  # shuffle partitions (Ray Data's default, 200, is for clusters)
    with ray_data_quiet(tolerate_failures=False):  # a Dataset keeps the settings it was made with
        from ray.data.context import ShuffleStrategy

        # the task-based sort shuffle: no aggregator actors to start (about 1 s less on every run)
        ray.data.DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        ds = ray.data.from_items([{"name": n} for n in names], override_num_blocks=min(len(names), 4 * concurrency))
        hashes = ds.map_batches(
            _read_hashes,  # type: ignore[arg-type]  # Ray's UDF type leaves out the fn_kwargs it passes
            fn_kwargs={"root": root},
            batch_format="numpy",
            batch_size=16,
            compute=ray.data.TaskPoolStrategy(size=max(1, min(concurrency, len(names) // 16))),
        )
        repeats = (
            hashes.map_batches(_with_bucket, fn_kwargs={"buckets": buckets}, batch_format="pandas")  # type: ignore[arg-type]  # fn_kwargs, as above
            .groupby("bucket", num_partitions=parts)
            .map_groups(_repeats, batch_format="pandas")
            .materialize()
        )  # in the object store, not the driver
        if repeats.count() == 0:
            return {}
        rewritten = repeats.groupby("shard", num_partitions=parts).map_groups(
            rewrite, fn_args=(root,), batch_format="pandas"
        )
        return {row["name"]: int(row["removed"]) for row in rewritten.iter_rows()}


def dedup_once(store: Store, manifest_fn, concurrency: int, rewrite=_rewrite, unit: str = "samples"):
    """Remove repeats across the shards of `manifest_fn()` (its first item: a manifest; `rewrite`
    rewrites one shard; `unit`: the shard field counting what is deduplicated), unless they are the
    shards the last dedup left (`dedup.json`); returns `manifest_fn()` as it is after."""

    def shards(m):
        return [s for sp in m["splits"].values() for s in sp["shards"]]

    out = manifest_fn()
    marker = json.loads(store.read_text(MARKER)) if store.exists(MARKER) else {}
    if marker.get("fingerprint") != fingerprint(shards(out[0])):
        have = [s for s in shards(out[0]) if s[unit]]
        dedup_shards(
            str(store.root), [s["name"][:-4] for s in have], sum(s[unit] for s in have), concurrency, rewrite=rewrite
        )
        out = manifest_fn()
        store.write_text(MARKER, json.dumps({"fingerprint": fingerprint(shards(out[0]))}))
    return out
