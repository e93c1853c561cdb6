"""One text shard task: read its documents (or pairs), reject, hash, tokenize and pack them in one
pass, and write its shards; and the rewrite of a packed shard without its repeats (data.writing.dedup).

Task i writes `train-NNNNNN.tar` (and `eval-NNNNNN.tar` when text.holdout_fraction > 0), each with
`<name>.hashes.parquet` (key, sha256, input order, characters, and where the document's tokens
start in the shard's stream and how many they are) and the `<name>.json` sidecar, the train one
last: the task is complete. The sidecar keeps the stream's last partial sequence (`tail`, fewer
than seq_len tokens, not in the tar): a rewrite without a repeated document re-cuts the stream
exactly, without reading or tokenizing anything again.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import IO, cast

import numpy as np

from data.reading.text_values import NotText
from data.text.bpe import TextTokenizer
from data.text.text_sources import document_text, holdout
from data.writing.shard_io import write_tar_shard
from data.writing.shard_task import Rejects, parts_of
from infra.storage import Store

HASH_COLUMNS = (
    ("key", "string"),
    ("sha256", "string"),
    ("order", "int64"),
    ("chars", "int64"),
    ("start", "int64"),
    ("tokens", "int64"),
)


@lru_cache(maxsize=2)
def tokenizer(tokenizer_json: str):

    return TextTokenizer(tokenizer_json)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def judge(doc: dict, min_chars: int, seen: dict, rejects: Rejects):
    """(text, sha256) of a document to keep, or None (rejected: unreadable, invalid_text, too_short,
    or a repeat of a document `seen` earlier {sha256: its src})."""
    src = doc.get("src", doc["key"])
    try:
        text = document_text(doc)
    except NotText as e:
        return rejects.add(src, e.reason, str(e))
    except Exception as e:
        return rejects.add(src, "unreadable", f"{type(e).__name__}: {e}")
    if len(text) < min_chars:
        return rejects.add(src, "too_short", f"{len(text)} characters (text.min_chars {min_chars})")
    try:
        digest = hashlib.sha256(text.encode()).hexdigest()
    except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud83d")
        return rejects.add(src, "invalid_text", f"not encodable as UTF-8: {e}")
    if digest in seen:
        return rejects.add(src, "duplicate", f"same text as {seen[digest]}")
    seen[digest] = src
    return text, digest


def write_hashes(store: Store, name: str, rows: list[dict], columns=HASH_COLUMNS) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    schema = pa.schema([(c, getattr(pa, t)()) for c, t in columns])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    store.write_bytes(f"{name}.hashes.parquet", buf.getvalue())


def write_packed(
    store: Store, name: str, stream: np.ndarray, rows: list[dict], seq_len: int, vocab_size: int, extra: dict
) -> dict:
    """Cut token `stream` into `seq_len` sequences and write them as shard `name` (hashes first,
    the sidecar last); `rows`: the documents in the stream."""
    n = len(stream) // seq_len
    arr = stream[: n * seq_len].reshape(n, seq_len)
    write_hashes(store, name, rows)
    chars = Counter(r["chars"] for r in rows)
    return write_tar_shard(
        str(store.root),
        name,
        [(f"{name}-{i:06d}", {"npy": npy_bytes(row)}) for i, row in enumerate(arr)],
        extra={
            "tokens": int(arr.size),
            "dropped_tokens": len(stream) - int(arr.size),
            "documents": len(rows),
            "characters": sum(r["chars"] for r in rows),
            "token_counts": np.bincount(arr.reshape(-1), minlength=vocab_size).tolist(),
            "tail": stream[n * seq_len :].tolist(),
            "dtype": str(stream.dtype),
            "hist": {"document_chars": {str(k): v for k, v in chars.items()}},
            **extra,
        },
    )


def pack_task(task: int, docs: list[dict], cfg: dict) -> list[dict]:
    """Shard the documents `docs` of task `task` into cfg["out"]; return the sidecars written."""
    store = Store(cfg["out"])
    tok = tokenizer(cfg["tokenizer"])
    rejects = Rejects()
    seen: dict[str, str] = {}
    kept: dict[str, list] = {"train": [], "eval": []}
    for d in sorted(docs, key=lambda d: d["order"]):  # input order: the first of two repeats wins
        got = judge(d, cfg["min_chars"], seen, rejects)
        if got:
            kept["eval" if holdout(d["key"], cfg["holdout_fraction"]) else "train"].append((d, *got))
    out = []
    for name in parts_of(task, cfg["holdout_fraction"]):  # train last: its sidecar marks the task complete
        items = kept[name.split("-")[0]]
        stream: list[int] = []
        rows = []
        for (d, text, digest), ids in zip(items, tok.encode_batch([t for _, t, _ in items])):
            rows.append(
                {
                    "key": d["key"],
                    "sha256": digest,
                    "order": d["order"],
                    "chars": len(text),
                    "start": len(stream),
                    "tokens": len(ids) + 1,
                }
            )
            stream += ids + [tok.eos_id]
        extra = {"task": task, "seq_len": cfg["seq_len"], "rejected": {}, "rejected_samples": []}
        if name.startswith("train"):
            extra.update(input_documents=len(docs), rejected=dict(rejects.counts), rejected_samples=rejects.samples)
        out.append(
            write_packed(
                store, name, np.asarray(stream, dtype=tok.dtype()), rows, cfg["seq_len"], tok.vocab_size, extra
            )
        )
    return out


def _read_stream(path: Path, dtype: str) -> np.ndarray:
    with tarfile.open(path) as tar:
        # a regular member (isfile) always has its bytes: extractfile gives None only for the others
        rows = [
            np.load(io.BytesIO(cast(IO[bytes], tar.extractfile(m)).read()))
            for m in tar
            if m.isfile() and m.name.endswith(".npy")
        ]
    return np.concatenate(rows).reshape(-1) if rows else np.zeros(0, dtype=dtype)


def rewrite_packed(group, root: str):
    """Rewrite packed shard `group["shard"]` without the documents `group["key"]` (repeats of
    earlier ones, `first_key`): their tokens are cut out of the stream, which is cut again."""
    from data.writing.dedup import duplicates_counted, load_repeats, removed

    store, name, drop, sidecar, rows = load_repeats(group, root)
    with tempfile.TemporaryDirectory(prefix="dedup-") as tmp:
        store.download(f"{name}.tar", Path(tmp) / "in.tar")
        stream = np.concatenate(
            [_read_stream(Path(tmp) / "in.tar", sidecar["dtype"]), np.asarray(sidecar["tail"], dtype=sidecar["dtype"])]
        )
    if len(stream) != sum(r["tokens"] for r in rows):
        raise RuntimeError(
            f"{name}: {len(stream)} tokens in the shard, its hashes list {sum(r['tokens'] for r in rows)}"
        )
    store.delete(f"{name}.json")  # incomplete from here until the new sidecar
    kept, parts, start = [], [], 0
    for r in rows:
        if r["key"] not in drop:
            parts.append(stream[r["start"] : r["start"] + r["tokens"]])
            kept.append(dict(r, start=start))
            start += r["tokens"]
    keep = {k: sidecar[k] for k in ("task", "seq_len", "input_documents") if k in sidecar}
    new = np.concatenate(parts) if parts else np.zeros(0, dtype=sidecar["dtype"])
    write_packed(
        store,
        name,
        new,
        kept,
        sidecar["seq_len"],
        len(sidecar["token_counts"]),
        dict(keep, **duplicates_counted(sidecar, drop, "text")),
    )
    return removed(name, len(drop))
