"""Tokenize text corpora and pack them into fixed-length sequences, as WebDataset shards, on Ray.

Pretraining corpus (`shard_text`), three passes:
1. read (Ray tasks over chunks of documents): sha256 and length of each document; empty or
   unreadable documents are rejected, repeats of a hash after the first (in source order) too.
2. tokenizer: a byte-level BPE trained on the train split's documents (data/bpe.py), written as
   `tokenizer.json` next to the shards; a rerun reuses it.
3. pack (one Ray task per shard): each document is tokenized and ended with EOS, the documents of
   a shard are concatenated and cut into `seq_len` sequences; the last partial sequence of a shard
   is dropped (counted as `dropped_tokens`). A sample is `<key>.npy`: the sequence's token ids.
Documents go to the held-out `eval` split by the hash of their key: a held-out document is never
seen in training. Shards are complete once their `.json` sidecar is written; a rerun skips them.

SFT pairs (`shard_pairs`): each prompt/response pair becomes `prompt EOS-padded response` of
`sft_seq_len` tokens, `<key>.npy` plus `<key>.json` {"prompt_len"}; pairs that do not fit, or with
an empty prompt or response, are rejected and counted.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter

import numpy as np
import ray

from data.bpe import TextTokenizer, train_bpe
from data.shard_io import SAMPLE_REJECTS_KEPT, write_tar_shard
from data.shard_io import run_tasks as _run_tasks, summary as _summary
from data.text_sources import document_text, holdout, list_documents, list_pairs
from infra.storage import Store

log = logging.getLogger(__name__)
READ_CHUNK = 64
TOKENIZER = "tokenizer.json"
COUNTS = "train_token_counts.json"


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@ray.remote(max_retries=3, retry_exceptions=True)
def _read_chunk(docs: list[dict]) -> list[tuple]:
    """(sha256, chars, error) per document."""
    out = []
    for d in docs:
        try:
            text = document_text(d)
            out.append((hashlib.sha256(text.encode()).hexdigest(), len(text), ""))
        except Exception as e:
            out.append((None, 0, f"{type(e).__name__}: {e}"))
    return out


@ray.remote(max_retries=3, retry_exceptions=True)
def _pack_shard(out_root: str, name: str, docs: list[dict], tokenizer_json: str, seq_len: int) -> dict:
    tok = TextTokenizer(tokenizer_json)
    stream: list[int] = []
    for d, ids in zip(docs, tok.encode_batch([document_text(d) for d in docs])):
        stream += ids + [tok.eos_id]
    n = len(stream) // seq_len
    arr = np.asarray(stream[: n * seq_len], dtype=tok.dtype()).reshape(n, seq_len)
    counts = np.bincount(arr.reshape(-1), minlength=tok.vocab_size)
    return write_tar_shard(out_root, name, [(f"{name}-{i:06d}", {"npy": npy_bytes(row)}) for i, row in enumerate(arr)],
                           extra={"tokens": int(arr.size), "dropped_tokens": len(stream) - int(arr.size),
                                  "documents": len(docs), "token_counts": counts.tolist()})


def _by_chars(docs: list[dict], chars: list[int], per_shard: int) -> list[list[dict]]:
    chunks, cur, size = [], [], 0
    for d, c in zip(docs, chars):
        cur.append(d)
        size += c
        if size >= per_shard:
            chunks.append(cur)
            cur, size = [], 0
    if cur:
        chunks.append(cur)
    return chunks


def _complete(store: Store, plan: list[tuple]) -> tuple[dict, list]:
    """Sidecars of the shards a previous run finished; the rest of `plan` to do."""
    done, todo = {}, []
    sidecars, tars = set(store.list(".json")), set(store.list(".tar"))
    for item in plan:
        name = item[1]
        if f"{name}.json" in sidecars and f"{name}.tar" in tars:
            done[name] = json.loads(store.read_text(f"{name}.json"))
        else:
            todo.append(item)
    return done, todo


def _reject(rejected: Counter, samples: list, key: str, reason: str, detail: str) -> None:
    rejected[reason] += 1
    if len(samples) < SAMPLE_REJECTS_KEPT:
        samples.append({"key": key, "reason": reason, "detail": detail[:200]})


def shard_text(cfg, out_dir: str) -> dict:
    """Shard the corpus of TextDataConfig `cfg` into `out_dir` (folder or s3:// prefix); write and
    return `manifest.json`."""
    t0 = time.time()
    store = Store(out_dir)
    store.check()
    store.remove_stale_tmp()
    docs = list_documents(cfg.source, cfg.text_column)
    if cfg.limit:
        docs = docs[: cfg.limit]
    in_flight = cfg.max_parallel_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    chunks = [docs[i:i + READ_CHUNK] for i in range(0, len(docs), READ_CHUNK)]
    parts = _run_tasks(_read_chunk, [(c,) for c in chunks], "read", [len(c) for c in chunks], in_flight,
                       unit="doc")
    rejected: Counter = Counter()
    rejected_samples: list[dict] = []
    seen: dict[str, str] = {}
    kept: dict[str, list] = {"train": [], "eval": []}
    for d, (digest, chars, err) in zip(docs, [x for p in parts for x in p]):
        src = d.get("src", d["key"])
        if digest is None:
            _reject(rejected, rejected_samples, src, "unreadable", err)
        elif chars < cfg.min_chars:
            _reject(rejected, rejected_samples, src, "too_short", f"{chars} characters (text.min_chars {cfg.min_chars})")
        elif digest in seen:
            _reject(rejected, rejected_samples, src, "duplicate", f"same text as {seen[digest]}")
        else:
            seen[digest] = src
            kept["eval" if holdout(d["key"], cfg.holdout_fraction) else "train"].append((d, chars))
    if not kept["train"]:
        raise ValueError(f"text.source '{cfg.source}': no training documents left "
                         f"({len(docs)} read, rejected {dict(rejected)})")

    if store.exists(TOKENIZER):
        tok = TextTokenizer(store.read_text(TOKENIZER))
    else:
        tok = train_bpe((document_text(d) for d, _ in kept["train"]), cfg.vocab_size)
        store.write_text(TOKENIZER, tok.json)

    plan = [(split, f"{split}-{i:06d}", chunk) for split, items in kept.items()
            for i, chunk in enumerate(_by_chars([d for d, _ in items], [c for _, c in items], cfg.shard_chars))]
    stats, todo = _complete(store, plan)
    written = _run_tasks(_pack_shard, [(store.root, name, chunk, tok.json, cfg.seq_len) for _, name, chunk in todo],
                         "pack", [len(c) for _, _, c in todo], in_flight, unit="doc")
    stats.update({name: st for (_, name, _), st in zip(todo, written)})
    splits: dict[str, dict] = {}
    for split, name, chunk in plan:
        st = stats[name]
        sp = splits.setdefault(split, {"shards": [], "samples": 0, "tokens": 0, "documents": 0, "dropped_tokens": 0})
        sp["shards"].append({k: st[k] for k in ("name", "samples", "bytes", "sha256", "tokens")})
        for k in ("samples", "tokens", "documents", "dropped_tokens"):
            sp[k] += st[k]
    for split, sp in splits.items():
        sp["characters"] = sum(c for _, c in kept[split])
    counts = np.zeros(tok.vocab_size, dtype=np.int64)   # the unigram baseline's counts
    for split, name, _ in plan:
        if split == "train":
            counts += np.asarray(stats[name]["token_counts"], dtype=np.int64)
    store.write_text(COUNTS, json.dumps(counts.tolist()))
    manifest = {
        "kind": "text", "source": cfg.source, "input_documents": len(docs),
        "samples": sum(sp["samples"] for sp in splits.values()), "splits": splits,
        "seq_len": cfg.seq_len, "tokenizer": TOKENIZER, "train_token_counts": COUNTS, "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id, "mask_id": tok.mask_id,
        "rejected": dict(sorted(rejected.items())), "rejected_total": sum(rejected.values()),
        "rejected_samples": rejected_samples,
        "stats": {"document_chars": _summary([c for items in kept.values() for _, c in items]),
                  "chars_per_token": round(splits["train"]["characters"] / max(1, splits["train"]["tokens"]
                                                                              + splits["train"]["dropped_tokens"]), 3)},
        "shards_written": len(todo), "shards_skipped": len(plan) - len(todo),
        "seconds": round(time.time() - t0, 2),
    }
    store.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest


@ray.remote(max_retries=3, retry_exceptions=True)
def _pair_shard(out_root: str, name: str, pairs: list[dict], tokenizer_json: str, seq_len: int) -> dict:
    tok = TextTokenizer(tokenizer_json)
    prompts = tok.encode_batch([p["prompt"] for p in pairs])
    responses = tok.encode_batch([p["response"] for p in pairs])
    samples, rejected, rejected_samples, response_tokens = [], Counter(), [], 0
    for p, pi, ri in zip(pairs, prompts, responses):
        if len(pi) + len(ri) + 1 > seq_len:   # at least one EOS ends the response
            _reject(rejected, rejected_samples, p["key"], "too_long",
                    f"{len(pi)} prompt + {len(ri)} response tokens + EOS > {seq_len} (text.sft_seq_len)")
            continue
        row = np.full(seq_len, tok.eos_id, dtype=tok.dtype())
        row[: len(pi)] = pi
        row[len(pi): len(pi) + len(ri)] = ri
        response_tokens += len(ri)
        samples.append((f"{name}-{p['key']}", {"npy": npy_bytes(row),
                                               "json": json.dumps({"prompt_len": len(pi)}).encode()}))
    return write_tar_shard(out_root, name, samples, extra={
        "rejected": dict(rejected), "rejected_samples": rejected_samples, "response_tokens": response_tokens})


def shard_pairs(cfg, out_dir: str, tokenizer_uri: str) -> dict:
    """Shard the SFT pairs of TextDataConfig `cfg` (`sft_source`) with the corpus's tokenizer."""
    from data.bpe import load_tokenizer

    t0 = time.time()
    store = Store(out_dir)
    store.check()
    store.remove_stale_tmp()
    tok = load_tokenizer(tokenizer_uri)
    pairs = list_pairs(cfg.sft_source, cfg.prompt_column, cfg.response_column)
    n_input = len(pairs)
    # a fixed pseudo-random order: `sft_limit` takes a sample of the whole table, not its head
    pairs = sorted(pairs, key=lambda p: hashlib.sha1(p["key"].encode()).digest())
    rejected: Counter = Counter()
    rejected_samples: list[dict] = []
    seen: set[str] = set()
    kept: dict[str, list] = {"train": [], "eval": []}
    for p in pairs:
        if cfg.sft_limit and len(kept["train"]) + len(kept["eval"]) >= cfg.sft_limit:
            break
        digest = hashlib.sha256(json.dumps([p["prompt"], p["response"]]).encode()).hexdigest()
        if not p["prompt"].strip() or not p["response"].strip():
            _reject(rejected, rejected_samples, p["key"], "empty", "empty prompt or response")
        elif digest in seen:
            _reject(rejected, rejected_samples, p["key"], "duplicate", "same prompt and response as an earlier pair")
        else:
            seen.add(digest)
            kept["eval" if holdout(p["key"], cfg.holdout_fraction) else "train"].append(p)
    in_flight = cfg.max_parallel_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    plan = [(split, f"sft-{split}-{i // cfg.shard_sequences:06d}", items[i:i + cfg.shard_sequences])
            for split, items in kept.items() for i in range(0, len(items), cfg.shard_sequences)]
    stats, todo = _complete(store, plan)
    written = _run_tasks(_pair_shard, [(store.root, name, chunk, tok.json, cfg.sft_seq_len) for _, name, chunk in todo],
                         "pairs", [len(c) for _, _, c in todo], in_flight, unit="pair")
    stats.update({name: st for (_, name, _), st in zip(todo, written)})
    splits: dict[str, dict] = {}
    for split, name, _ in plan:
        st = stats[name]
        sp = splits.setdefault(split, {"shards": [], "samples": 0, "response_tokens": 0})
        sp["shards"].append({k: st[k] for k in ("name", "samples", "bytes", "sha256")})
        sp["samples"] += st["samples"]
        sp["response_tokens"] += st["response_tokens"]
        rejected.update(st["rejected"])
        rejected_samples += st["rejected_samples"][: max(0, SAMPLE_REJECTS_KEPT - len(rejected_samples))]
    if not splits.get("train", {}).get("samples"):
        raise ValueError(f"text.sft_source '{cfg.sft_source}': no training pairs left (rejected {dict(rejected)})")
    manifest = {"kind": "sft", "source": cfg.sft_source, "input_pairs": n_input,
                "samples": sum(sp["samples"] for sp in splits.values()), "splits": splits,
                "seq_len": cfg.sft_seq_len, "tokenizer": tokenizer_uri, "vocab_size": tok.vocab_size,
                "eos_id": tok.eos_id, "mask_id": tok.mask_id,
                "rejected": dict(sorted(rejected.items())), "rejected_total": sum(rejected.values()),
                "rejected_samples": rejected_samples, "shards_written": len(todo),
                "shards_skipped": len(plan) - len(todo), "seconds": round(time.time() - t0, 2)}
    store.write_text("manifest.json", json.dumps(manifest, indent=1))
    return manifest
