"""Streaming WebDataset loader with an explicit epoch length.

Training reads shards *resampled* (drawn with replacement, an infinite stream), so "an epoch" is
whatever we say it is. We say it once, in samples: `epoch_samples`. From it:

    steps_per_epoch = ceil(epoch_samples / (batch_size * world_size))

and every Ray Train rank yields exactly `steps_per_epoch` batches per epoch, split across its
DataLoader workers (batch j by worker j mod L). Each (rank, lane, epoch) draws shards from its own
seeded RNG, so ranks never read the same stream, and a resume mid-epoch rebuilds the same batches
(see TrainStream). Evaluation reads every shard once, in order (data/loading/shard_reading.py).
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from data.loading.pixels import open_image, random_resized_crop, to_array
from data.loading.tar_stream import shard_samples
from data.loading.tokenizer import get_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderSpec:
    urls: tuple[str, ...]
    batch_size: int
    image_size: int
    epoch_samples: int
    context_length: int = 0  # tokens per caption; 0: image-only batches (no text)
    label_field: str = ""  # metadata field with the class; batches get `label` indices
    classes: tuple[str, ...] = ()  # class names in index order
    world_size: int = 1
    rank: int = 0
    seed: int = 0
    shuffle_buffer: int = 1000
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    color_jitter: float = 0.2
    alt_caption_prob: float = 0.0  # chance of training on one of a sample's `alt_captions` instead
    hflip: bool = False  # random horizontal flips
    tokens: bool = False  # token shards (data/text/text_sharder.py): batches of `tokens` [B, L]
    prompt_len: bool = False  # tokens: SFT pairs, batches get `prompt_len` [B] too

    def __post_init__(self):
        for name in ("batch_size", "epoch_samples", "world_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"loader: {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"loader: rank {self.rank} is outside world_size {self.world_size}")
        if not self.urls:
            raise ValueError("loader: no shards to read (the split is empty)")
        if not self.tokens and self.image_size < 1:
            raise ValueError(f"loader: image_size must be at least 1, got {self.image_size}")

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.epoch_samples / (self.batch_size * self.world_size)))


def _collate(images: list[np.ndarray], captions: list[str], labels: list[int], spec: "LoaderSpec") -> dict:
    batch: dict[str, Any] = {"image": torch.from_numpy(np.stack(images))}
    if spec.context_length:
        batch["text"] = torch.from_numpy(get_tokenizer(spec.context_length)(captions))
        batch["caption"] = captions
    if spec.label_field:
        batch["label"] = torch.tensor(labels, dtype=torch.long)
    return batch


def _collate_tokens(rows: list[np.ndarray], prompt_lens: list[int], spec: "LoaderSpec") -> dict:
    batch = {"tokens": torch.from_numpy(np.stack(rows))}
    if spec.prompt_len:
        batch["prompt_len"] = torch.tensor(prompt_lens, dtype=torch.long)
    return batch


def label_index(sample: dict, field: str, classes: dict[str, int]) -> int:
    meta = json.loads(sample["json"]) if "json" in sample else {}
    label = str(meta.get(field, ""))
    if label not in classes:
        raise ValueError(
            f"sample {sample.get('__key__')} ({sample.get('__url__')}): label field "
            f"'{field}' is {meta.get(field)!r}, not one of the {len(classes)} classes"
        )
    return classes[label]


def pick_caption(sample: dict, alt_prob: float, rng: random.Random) -> str:
    caption = sample["txt"].decode("utf-8")
    if alt_prob > 0 and "json" in sample and rng.random() < alt_prob:
        alts = json.loads(sample["json"]).get("alt_captions") or []
        if alts:
            caption = rng.choice(alts)
    return caption


class TrainStream(torch.utils.data.IterableDataset):
    """`epochs` epochs of training batches for one rank, from batch `start` of epoch `epoch` on.

    Batch j of an epoch is served by "lane" j mod L (L = DataLoader workers). A lane's shard choice
    and shuffle order come from an RNG seeded by (seed, epoch, rank, lane), and each sample's
    augmentation from its own RNG seeded by its position in the lane. So the batches of an epoch
    are a function of (seed, epoch, rank, L) alone, and a resume at batch k rebuilds exactly
    batches k, k+1, ...: each lane replays its shard/shuffle stream up to k without decoding.
    The DataLoader's round-robin hands the stream's n-th batch to worker n mod L, so in each epoch
    every worker takes the one lane whose batches fall on its turns; the same workers serve every
    epoch (no restart at an epoch boundary).
    """

    def __init__(self, spec: LoaderSpec, epoch: int = 0, start: int = 0, epochs: int = 1):
        self.spec = spec
        self.epoch = epoch
        self.start = start
        self.epochs = epochs

    def _shards(self, rng: random.Random) -> Iterator[dict]:
        while True:
            yield {"url": rng.choice(self.spec.urls)}

    def _lane(self, start: int, before: int) -> tuple[int, int, int]:
        """In an epoch read from batch `start` on, after `before` batches of earlier epochs: (this
        worker's lane, its batches before `start`, the batches it yields)."""
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        lane = (wid - before + start) % nw
        skip = len(range(lane, start, nw))
        return lane, skip, len(range(lane, self.spec.steps_per_epoch, nw)) - skip

    def _shard_error(self, exn: Exception) -> bool:  # a corrupt or truncated shard: skip the rest of it
        self._bad["shard_errors"] += 1
        self._bad["in_a_row"] += 1
        if self._bad["in_a_row"] > 10 * len(self.spec.urls) + 10:
            raise RuntimeError(f"{self._bad['in_a_row']} shard reads in a row failed, last: {exn}") from exn
        log.warning("skipping the rest of a shard: %s", str(exn)[:300])
        return True

    def _complete(self, sample: dict) -> bool:
        s = self.spec
        if s.tokens:
            return "npy" in sample and (not s.prompt_len or "json" in sample)
        return "jpg" in sample and (not s.context_length or "txt" in sample)

    def _shuffled(self, samples, rng: random.Random) -> Iterator[tuple[int, dict]]:
        """(position in the lane, sample) through the shuffle buffer: it starts emitting once a few
        batches are in, then one sample per two read until it holds `shuffle_buffer` samples."""
        s, reads, index = self.spec, 0, 0
        buf: list[dict] = []
        for sample in samples:
            self._bad["in_a_row"] = 0
            if not self._complete(sample):
                self._bad["samples"] += 1
                continue
            if len(buf) < s.shuffle_buffer:
                buf.append(sample)
                reads += 1
                if len(buf) < min(s.shuffle_buffer, 4 * s.batch_size) or reads % 2:
                    continue
                sample = buf.pop(rng.randrange(len(buf)))
            else:
                j = rng.randrange(len(buf))
                sample, buf[j] = buf[j], sample
            index += 1
            yield index, sample

    def _decode(self, sample: dict, srng_seed: tuple, class_index: dict):
        """A token sample's (row, prompt length), or an image sample's (array, caption, label),
        augmented by its own RNG; None when the sample is corrupt."""
        s = self.spec
        if s.tokens:
            try:
                row = np.load(io.BytesIO(sample["npy"])).astype(np.int64)
                plen = json.loads(sample["json"])["prompt_len"] if s.prompt_len else None
            except Exception:  # noqa: BLE001  (a corrupt sample)
                return None
            return (row, plen) if row.ndim == 1 else None
        srng = random.Random(hash(srng_seed) & 0xFFFFFFFF)
        try:  # decoded at the size the crop needs (crop_resize), never below it
            img = random_resized_crop(open_image(sample["jpg"]), s.image_size, s.scale, s.ratio, srng)
        except Exception:  # noqa: BLE001  (a corrupt image)
            return None
        if s.hflip and srng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = to_array(img, s.color_jitter, srng)
        caption = pick_caption(sample, s.alt_caption_prob, srng) if s.context_length else None
        label = label_index(sample, s.label_field, class_index) if s.label_field else None
        return array, caption, label

    def _batch(self, items: list) -> dict:
        s = self.spec
        if s.tokens:
            batch = _collate_tokens([r for r, _ in items], [p for _, p in items] if s.prompt_len else [], s)
        else:
            batch = _collate(
                [a for a, _, _ in items],
                [c for _, c, _ in items] if s.context_length else [],
                [lb for _, _, lb in items] if s.label_field else [],
                s,
            )
        batch["skipped"] = (self._bad["samples"], self._bad["shard_errors"])  # since the last batch
        self._bad["samples"] = self._bad["shard_errors"] = 0
        return batch

    def __iter__(self) -> Iterator[dict]:
        self._bad = {"samples": 0, "shard_errors": 0, "in_a_row": 0}
        before = 0
        for epoch in range(self.epoch, self.epoch + self.epochs):
            start = self.start if epoch == self.epoch else 0
            yield from self._epoch(epoch, *self._lane(start, before))
            before += self.spec.steps_per_epoch - start

    def _epoch(self, epoch: int, lane: int, skip: int, n_batches: int) -> Iterator[dict]:
        s = self.spec
        if n_batches <= 0:
            return
        base = (s.seed, epoch, s.rank, lane)
        rng = random.Random(hash(base) & 0xFFFFFFFF)
        class_index = {c: i for i, c in enumerate(s.classes)}
        items, produced = [], 0
        for index, sample in self._shuffled(shard_samples(self._shards(rng), self._shard_error), rng):
            if index <= skip * s.batch_size:  # replaying up to the resume point: no decoding
                continue
            item = self._decode(sample, base + (index,), class_index)
            if item is None:
                self._bad["samples"] += 1
                continue
            items.append(item)
            if len(items) == s.batch_size:
                yield self._batch(items)
                items, produced = [], produced + 1
                if produced >= n_batches:
                    return


def train_loader(
    spec: LoaderSpec, num_workers: int, epoch: int = 0, start: int = 0, epochs: int = 1
) -> torch.utils.data.DataLoader:
    """Batches `start`, `start`+1, ... of `epoch` (spec.steps_per_epoch batches each), then those of
    the next `epochs` - 1 epochs, from the same workers; their base seed from a generator of its own
    (torch's global stream, MAE's masks, stays the training thread's)."""
    seeds = torch.Generator().manual_seed(hash((spec.seed, epoch, spec.rank)) & 0xFFFFFFFF)
    return torch.utils.data.DataLoader(
        TrainStream(spec, epoch, start, epochs),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        generator=seeds,
    )
