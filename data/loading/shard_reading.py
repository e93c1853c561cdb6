"""Reading shards once, in order (evaluation, tests): every sample of a list of shards, no
resampling, no augmentation."""

from __future__ import annotations

import io
import json
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

import data.loading.tar_stream  # noqa: F401  (registers the s3:// scheme for webdataset)
from data.loading.pixels import eval_pixels
from data.progress import progress_bar


def token_batches(urls: list[str], batch_size: int) -> Iterator[dict]:
    """Every sequence of token shards `urls` once, in order: {"tokens" [B, L], "prompt_len" [B]
    (SFT shards; else absent), "keys"}."""
    ds = wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples(handler=wds.warn_and_continue))
    rows, plens, keys = [], [], []
    for sample in ds:
        if "npy" not in sample:
            continue
        rows.append(np.load(io.BytesIO(sample["npy"])).astype(np.int64))
        keys.append(sample["__key__"])
        if "json" in sample:
            plens.append(json.loads(sample["json"])["prompt_len"])
        if len(rows) == batch_size:
            yield _token_batch(rows, plens, keys)
            rows, plens, keys = [], [], []
    if rows:
        yield _token_batch(rows, plens, keys)


def _token_batch(rows, plens, keys) -> dict:
    out = {"tokens": torch.from_numpy(np.stack(rows)), "keys": keys}
    if plens:
        out["prompt_len"] = torch.tensor(plens, dtype=torch.long)
    return out


def eval_samples(urls: list[str]) -> Iterator[dict]:
    """Every sample of `urls` once, in order: {"key", "jpg" (the encoded image), "caption", "meta"}."""
    ds = wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples(handler=wds.warn_and_continue))
    for sample in ds:
        if "jpg" not in sample:
            continue
        yield {
            "key": sample["__key__"],
            "jpg": sample["jpg"],
            "caption": sample["txt"].decode("utf-8") if "txt" in sample else None,
            "meta": json.loads(sample["json"]) if "json" in sample else {},
        }


def eval_batches(
    urls: list[str], batch_size: int, image_size: int, total: int | None = None, desc: str = "evaluate"
) -> Iterator[tuple[torch.Tensor, list]]:
    """(images [B,3,S,S], samples) in shard order, centre-cropped, no augmentation: the pixels of
    data.loading.loader.eval_pixels, as serving computes them. A progress bar counts the batches
    handed on (of `total` samples, when known)."""
    images, items = [], []
    with progress_bar(total, desc) as bar:
        for s in eval_samples(urls):
            images.append(eval_pixels(s["jpg"], image_size))
            items.append(s)
            if len(images) == batch_size:
                yield torch.from_numpy(np.stack(images)), items
                bar.update(len(items))
                images, items = [], []
        if images:
            yield torch.from_numpy(np.stack(images)), items
            bar.update(len(items))
