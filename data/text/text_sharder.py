"""Tokenize text corpora and pack them into fixed-length sequences, as WebDataset shards: one
streaming pass on Ray Data.

Pretraining corpus (`shard_text`):
1. plan (driver, data.text.text_sources): shard task i takes about `text.shard_chars` characters of
   input: a range of a table's rows (Parquet metadata, or a streaming scan of CSV / JSONL byte
   offsets) or a run of a folder's (or S3 prefix's) files; the driver never holds the text.
2. tokenizer: a byte-level BPE (data/text/bpe.py) trained in one Ray task on the first
   `text.tokenizer_chars` characters of training documents (held-out, too short and repeated ones
   left out), written as `tokenizer.json` next to the shards; a rerun reuses it.
3. pack (Ray Data, one task per range, data.text.text_task): each task reads its documents, rejects
   unreadable, too short and repeated ones (first in input order wins), tokenizes the rest, ends
   each with EOS, concatenates them and cuts `seq_len` sequences: `train-NNNNNN.tar` (and
   `eval-NNNNNN.tar`), a sample being `<key>.npy` (the sequence's token ids); the last partial
   sequence of a shard is dropped (counted as `dropped_tokens`). The train sidecar, written last,
   marks the task complete; a rerun runs only the others.
4. dedup (data.writing.dedup, Ray Data groupby over the shards' hash lists): a document repeated across
   shards is cut out of the later shard's stream, which is cut again (no read, no tokenizing).
5. manifest and the unigram counts of the train split, merged from the sidecars one at a time.
Documents go to the held-out `eval` split by the hash of their key: a held-out document is never
seen in training.

SFT pairs (`shard_pairs`, data.text.sft_task): each prompt/response pair becomes `prompt EOS-padded
response` of `sft_seq_len` tokens, `<key>.npy` plus `<key>.json` {"prompt_len"}; pairs that do not
fit, or with an empty prompt or response, are rejected and counted.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import Counter

import numpy as np
import ray

from data.reading.inputs import Plan
from data.text.bpe import load_tokenizer, train_bpe
from data.text.sft_task import key_hash, names_of, pair_task, rewrite_pairs
from data.text.text_sources import holdout, plan_documents, plan_pairs, read_documents, read_pairs
from data.text.text_task import judge, pack_task, rewrite_packed
from data.writing.dedup import dedup_once
from data.writing.shard_io import complete_tasks, hist_summary, read_sidecars, stream_tasks
from data.writing.shard_task import Rejects, parts_of
from infra.storage import Store

log = logging.getLogger(__name__)
TOKENIZER = "tokenizer.json"
COUNTS = "train_token_counts.json"


@ray.remote(max_retries=3, retry_exceptions=True)
def _train_tokenizer(plan: Plan, cfg: dict) -> dict:
    """The tokenizer, trained on the first cfg["tokenizer_chars"] characters of training documents;
    or, when the whole corpus holds none, what was rejected."""

    rejects, texts, chars, read = Rejects(), [], 0, 0
    seen: dict[str, str] = {}
    for i in range(plan.tasks):
        for d in sorted(read_documents(plan, i), key=lambda d: d["order"]):
            read += 1
            got = judge(d, cfg["min_chars"], seen, rejects)
            if got and not holdout(d["key"], cfg["holdout_fraction"]):
                texts.append(got[0])
                chars += len(got[0])
        if chars >= cfg["tokenizer_chars"]:
            break
    if not texts:
        return {"read": read, "rejected": dict(rejects.counts)}
    return {"tokenizer": train_bpe(texts, cfg["vocab_size"]).json, "documents": len(texts), "characters": chars}


def _tokenizer(cfg, store: Store, plan: Plan) -> str:
    if store.exists(TOKENIZER):
        return store.read_text(TOKENIZER)
    out = ray.get(
        _train_tokenizer.remote(
            plan, {k: getattr(cfg, k) for k in ("min_chars", "holdout_fraction", "tokenizer_chars", "vocab_size")}
        )
    )
    if "tokenizer" not in out:
        raise ValueError(
            f"text.source '{cfg.source}': no training documents left ({out['read']} read, rejected {out['rejected']})"
        )
    log.info("tokenizer trained on %d documents (%d characters)", out["documents"], out["characters"])
    store.write_text(TOKENIZER, out["tokenizer"])
    return out["tokenizer"]


def _text_manifest(cfg, plan: Plan, store: Store, names: list[str], tok) -> tuple[dict, np.ndarray]:
    splits: dict[str, dict] = {}
    rejects, removed = Rejects(), 0
    chars: Counter[int] = Counter()
    counts = np.zeros(tok.vocab_size, dtype=np.int64)  # the unigram baseline's counts
    for name, sc in zip(names, read_sidecars(store, names)):
        split = name.split("-")[0]
        sp = splits.setdefault(
            split, {"shards": [], "samples": 0, "tokens": 0, "documents": 0, "dropped_tokens": 0, "characters": 0}
        )
        sp["shards"].append({k: sc[k] for k in ("name", "samples", "bytes", "sha256", "tokens", "documents")})
        for k in ("samples", "tokens", "documents", "dropped_tokens", "characters"):
            sp[k] += sc[k]
        if split == "train":
            counts += np.asarray(sc["token_counts"], dtype=np.int64)
        rejects.merge(sc)
        chars.update({int(k): v for k, v in sc["hist"]["document_chars"].items()})
        removed += sc.get("dedup_removed", 0)
    splits = {s: splits[s] for s in ("train", "eval") if s in splits}
    tr = splits["train"]
    manifest = {
        "kind": "text",
        "source": cfg.source,
        "input_documents": plan.total,
        "samples": sum(sp["samples"] for sp in splits.values()),
        "splits": splits,
        "seq_len": cfg.seq_len,
        "tokenizer": TOKENIZER,
        "train_token_counts": COUNTS,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "mask_id": tok.mask_id,
        "rejected": dict(sorted(rejects.counts.items())),
        "rejected_total": sum(rejects.counts.values()),
        "rejected_samples": rejects.samples,
        "duplicates_across_shards": removed,
        "stats": {
            "document_chars": hist_summary(chars),
            "chars_per_token": round(tr["characters"] / max(1, tr["tokens"] + tr["dropped_tokens"]), 3),
        },
    }
    return manifest, counts


def shard_text(cfg, out_dir: str) -> dict:
    """Shard the corpus of TextDataConfig `cfg` into `out_dir` (folder or s3:// prefix); write and
    return `manifest.json`."""
    from data.text.text_task import tokenizer

    t0 = time.time()
    store = Store(out_dir)
    store.check()
    store.remove_stale_tmp()
    plan = plan_documents(cfg.source, cfg.text_column, cfg.shard_chars, cfg.limit)
    log.info("sharding %d documents from %s into %s: %d tasks", plan.total, cfg.source, store.root, plan.tasks)
    tok_json = _tokenizer(cfg, store, plan)
    parts = [parts_of(i, cfg.holdout_fraction) for i in range(plan.tasks)]
    names = [n for p in parts for n in p]
    complete = complete_tasks(store, parts)
    todo = [i for i in range(plan.tasks) if i not in complete]
    concurrency = cfg.max_parallel_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task_cfg = {
        "out": str(store.root),
        "tokenizer": tok_json,
        "seq_len": cfg.seq_len,
        "min_chars": cfg.min_chars,
        "holdout_fraction": cfg.holdout_fraction,
    }
    stream_tasks(plan, todo, read_documents, pack_task, task_cfg, concurrency, "pack", "doc", tolerate_failures=False)
    tok = tokenizer(tok_json)
    manifest, counts = dedup_once(
        store, lambda: _text_manifest(cfg, plan, store, names, tok), concurrency, rewrite_packed, unit="documents"
    )
    if not manifest["splits"]["train"]["documents"]:
        raise ValueError(
            f"text.source '{cfg.source}': no training documents left "
            f"({plan.total} read, rejected {manifest['rejected']})"
        )
    store.write_text(COUNTS, json.dumps(counts.tolist()))
    skipped = sum(len(parts[i]) for i in complete)
    manifest.update(shards_written=len(names) - skipped, shards_skipped=skipped, seconds=round(time.time() - t0, 2))
    store.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest


def _threshold(plan: Plan, limit: int) -> str:
    """The key hash of the `limit`-th pair in key-hash order ("": all pairs): the sample is a fixed
    pseudo-random one of the whole table, not its head. Keys are row numbers: no row is read."""
    if not limit or limit >= plan.total:
        return ""
    assert plan.table is not None  # a pairs plan is always over a table (plan_pairs)
    width = plan.table.width
    return heapq.nsmallest(limit, (key_hash(f"{i:0{width}d}") for i in range(plan.total)))[-1]


def _pairs_manifest(cfg, plan: Plan, store: Store, names: list[str]) -> tuple[dict]:
    splits: dict[str, dict] = {}
    rejects, removed, sampled = Rejects(), 0, 0
    for name, sc in zip(names, read_sidecars(store, names)):
        sp = splits.setdefault(name.split("-")[1], {"shards": [], "samples": 0, "response_tokens": 0})
        sp["shards"].append({k: sc[k] for k in ("name", "samples", "bytes", "sha256")})
        sp["samples"] += sc["samples"]
        sp["response_tokens"] += sc["response_tokens"]
        rejects.merge(sc)
        removed += sc.get("dedup_removed", 0)
        sampled += sc.get("sampled", 0)
    splits = {s: splits[s] for s in ("train", "eval") if s in splits}
    return (
        {
            "kind": "sft",
            "source": cfg.sft_source,
            "input_pairs": plan.total,
            "sampled_pairs": sampled,
            "samples": sum(sp["samples"] for sp in splits.values()),
            "splits": splits,
            "rejected": dict(sorted(rejects.counts.items())),
            "rejected_total": sum(rejects.counts.values()),
            "rejected_samples": rejects.samples,
            "duplicates_across_shards": removed,
        },
    )


def shard_pairs(cfg, out_dir: str, tokenizer_uri: str) -> dict:
    """Shard the SFT pairs of TextDataConfig `cfg` (`sft_source`) with the corpus's tokenizer."""

    t0 = time.time()
    store = Store(out_dir)
    store.check()
    store.remove_stale_tmp()
    tok = load_tokenizer(tokenizer_uri)
    plan = plan_pairs(cfg.sft_source, cfg.prompt_column, cfg.response_column, cfg.shard_sequences)
    parts = [names_of(i, cfg.holdout_fraction) for i in range(plan.tasks)]
    names = [n for p in parts for n in p]
    complete = complete_tasks(store, parts)
    todo = [i for i in range(plan.tasks) if i not in complete]
    concurrency = cfg.max_parallel_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task_cfg = {
        "out": str(store.root),
        "tokenizer": tok.json,
        "seq_len": cfg.sft_seq_len,
        "holdout_fraction": cfg.holdout_fraction,
        "threshold": _threshold(plan, cfg.sft_limit) if todo else "",
    }
    stream_tasks(plan, todo, read_pairs, pair_task, task_cfg, concurrency, "pairs", "pair", tolerate_failures=False)
    (manifest,) = dedup_once(
        store, lambda: _pairs_manifest(cfg, plan, store, names), concurrency, rewrite_pairs, unit="samples"
    )
    if not manifest["splits"].get("train", {}).get("samples"):
        raise ValueError(
            f"text.sft_source '{cfg.sft_source}': no training pairs left (rejected {manifest['rejected']})"
        )
    skipped = sum(len(parts[i]) for i in complete)
    manifest.update(
        seq_len=cfg.sft_seq_len,
        tokenizer=tokenizer_uri,
        vocab_size=tok.vocab_size,
        eos_id=tok.eos_id,
        mask_id=tok.mask_id,
        shards_written=len(names) - skipped,
        shards_skipped=skipped,
        seconds=round(time.time() - t0, 2),
    )
    store.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest
