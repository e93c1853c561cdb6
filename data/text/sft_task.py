"""One SFT shard task: read its prompt/response pairs, reject, hash, tokenize and write them; and
the rewrite of an SFT shard without its repeats (data.writing.dedup).

A pair becomes `prompt EOS-padded response` of `seq_len` tokens (`<key>.npy`) and `<key>.json`
{"prompt_len"}. Task i writes `sft-train-NNNNNN.tar` (and `sft-eval-NNNNNN.tar`), each with its
`<name>.hashes.parquet` and sidecar, the train one last.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from data.text.text_sources import holdout
from data.text.text_task import npy_bytes, tokenizer, write_hashes
from data.writing.dedup import copy_without, duplicates_counted, load_repeats, removed
from data.writing.shard_io import write_tar_shard
from data.writing.shard_task import Rejects, parts_of
from infra.storage import Store

HASH_COLUMNS = (("key", "string"), ("sha256", "string"), ("order", "int64"), ("response_tokens", "int64"))


def key_hash(key: str) -> str:
    """The order of the SFT sample (`text.sft_limit`): a hash of the pair's key."""
    return hashlib.sha1(key.encode()).hexdigest()


def names_of(task: int, holdout_fraction: float) -> list[str]:
    return [f"sft-{n}" for n in parts_of(task, holdout_fraction)]


def pair_task(task: int, pairs: list[dict], cfg: dict) -> list[dict]:
    """Shard the pairs of task `task` (those sampled: key hash <= cfg["threshold"], or all when it
    is empty) into cfg["out"]; return the sidecars written."""
    store, tok, seq_len = Store(cfg["out"]), tokenizer(cfg["tokenizer"]), cfg["seq_len"]
    rejects = Rejects()
    kept, sampled = _kept_pairs(pairs, cfg, rejects)
    names = names_of(task, cfg["holdout_fraction"])
    built = {}
    for name in names:  # every split encoded (and its too_long rejects counted) before a sidecar is written
        built[name] = _encoded(name, kept[name.split("-")[1]], tok, seq_len, rejects)
    out = []
    for name in names:  # train last: its sidecar marks the task complete
        samples, rows = built[name]
        extra = {
            "task": task,
            "rejected": {},
            "rejected_samples": [],
            "response_tokens": sum(r["response_tokens"] for r in rows),
        }
        if name.startswith("sft-train"):
            extra.update(
                input_pairs=len(pairs), sampled=sampled, rejected=dict(rejects.counts), rejected_samples=rejects.samples
            )
        write_hashes(store, name, rows, HASH_COLUMNS)
        out.append(write_tar_shard(str(store.root), name, samples, extra=extra))
    return out


def _kept_pairs(pairs: list[dict], cfg: dict, rejects: Rejects) -> tuple[dict[str, list], int]:
    """The sampled pairs that are text, not empty and not repeated, by split (with their hashes),
    and how many were sampled; the others counted in `rejects`."""
    seen: dict[str, str] = {}
    kept: dict[str, list] = {"train": [], "eval": []}
    sampled = 0
    for p in sorted(pairs, key=lambda p: p["order"]):
        if cfg["threshold"] and key_hash(p["key"]) > cfg["threshold"]:
            continue
        sampled += 1
        if p.get("reject"):
            rejects.add(p["key"], *p["reject"])
            continue
        bad = [f for f in ("prompt", "response") if not isinstance(p[f], str)]
        if bad:
            rejects.add(p["key"], "not_text", f"the {bad[0]} is {type(p[bad[0]]).__name__}, not text")
            continue
        if not p["prompt"].strip() or not p["response"].strip():
            rejects.add(p["key"], "empty", "empty prompt or response")
            continue
        digest = hashlib.sha256(json.dumps([p["prompt"], p["response"]]).encode()).hexdigest()
        if digest in seen:
            rejects.add(p["key"], "duplicate", f"same prompt and response as pair {seen[digest]}")
            continue
        seen[digest] = p["key"]
        kept["eval" if holdout(p["key"], cfg["holdout_fraction"]) else "train"].append((p, digest))
    return kept, sampled


def _encoded(name: str, items: list, tok, seq_len: int, rejects: Rejects) -> tuple[list, list]:
    """(tar samples, hash rows) of split `name`: prompt + response + EOS padding, one row each; a
    pair longer than `seq_len` is `too_long`."""
    prompts = tok.encode_batch([p["prompt"] for p, _ in items])
    responses = tok.encode_batch([p["response"] for p, _ in items])
    samples, rows = [], []
    for (p, digest), pi, ri in zip(items, prompts, responses):
        if len(pi) + len(ri) + 1 > seq_len:  # at least one EOS ends the response
            rejects.add(
                p["key"],
                "too_long",
                f"{len(pi)} prompt + {len(ri)} response tokens + EOS > {seq_len} (text.sft_seq_len)",
            )
            continue
        row = np.full(seq_len, tok.eos_id, dtype=tok.dtype())
        row[: len(pi)] = pi
        row[len(pi) : len(pi) + len(ri)] = ri
        key = f"{name}-{p['key']}"
        samples.append((key, {"npy": npy_bytes(row), "json": json.dumps({"prompt_len": len(pi)}).encode()}))
        rows.append({"key": key, "sha256": digest, "order": p["order"], "response_tokens": len(ri)})
    return samples, rows


def rewrite_pairs(group, root: str):
    """Rewrite SFT shard `group["shard"]` without the samples `group["key"]` (repeats of earlier
    pairs, `first_key`)."""
    store, name, drop, sidecar, rows = load_repeats(group, root)
    store.delete(f"{name}.json")  # incomplete from here until the new sidecar
    digest, size = copy_without(store, name, set(drop))
    kept = [r for r in rows if r["key"] not in drop]
    write_hashes(store, name, kept, HASH_COLUMNS)
    sidecar.update(
        bytes=size,
        sha256=digest,
        samples=len(kept),
        response_tokens=sum(r["response_tokens"] for r in kept),
        **duplicates_counted(sidecar, drop, "prompt and response"),
    )
    store.write_text(f"{name}.json", json.dumps(sidecar))
    return removed(name, len(drop))
