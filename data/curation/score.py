"""Scoring shards for curation: batch inference of a scorer model in a Ray Data actor pool.

Each row of the dataset is one shard; an actor (the model loaded once per actor, on a GPU when the
cluster has them) reads the shard's samples, embeds images (the evaluation's pixels) and captions,
and writes `<out>/<shard>.scores.parquet` (key, order in the shard, score = cosine of image and
caption, the image and caption embeddings) under a temporary name renamed once complete. The driver holds only
the per-shard counts, so its memory stays flat as the data grows; a rerun after a kill skips every
shard whose scores are there (nothing is scored twice).

`make_scorer()` (picklable, from the family: the model never crosses layers) returns an object
with `embed(pixels [B, 3, S, S] float32, captions) -> (image_emb [B, D], text_emb [B, D])`,
L2-normalised, and an `image_size`.
"""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.loading.pixels import eval_pixels
from data.loading.shard_reading import eval_samples
from data.writing.shard_io import ray_data_quiet
from infra.storage import Store, is_s3

SUFFIX = ".scores.parquet"


def scores_name(shard_url: str) -> str:
    return shard_url.rstrip("/").rpartition("/")[2].removesuffix(".tar") + SUFFIX


class ShardScorer:
    """A Ray Data actor: the scorer model once, then one shard per call."""

    def __init__(self, make_scorer: Callable[[], Any], out: str, batch_size: int):
        self.scorer, self.out, self.batch_size = make_scorer(), out, batch_size

    def __call__(self, batch: dict) -> dict:
        names, samples, seconds = [], [], []
        for url in batch["url"]:
            t = time.time()
            samples.append(self.score_shard(str(url)))
            names.append(str(url))
            seconds.append(time.time() - t)
        return {"url": np.array(names), "samples": np.array(samples), "seconds": np.array(seconds)}

    def score_shard(self, url: str) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys: list[str] = []
        scores: list[float] = []
        embs: list[np.ndarray] = []
        text_embs: list[np.ndarray] = []
        buf_px: list[np.ndarray] = []
        buf_txt: list[str] = []

        def flush():
            img, txt = self.scorer.embed(np.stack(buf_px), buf_txt)
            scores.extend((img * txt).sum(axis=1).tolist())
            embs.extend(img.astype(np.float32))
            text_embs.extend(txt.astype(np.float32))
            buf_px.clear()
            buf_txt.clear()

        for s in eval_samples([url]):
            keys.append(s["key"])
            buf_px.append(eval_pixels(s["jpg"], self.scorer.image_size))
            buf_txt.append(s["caption"] or "")
            if len(buf_px) == self.batch_size:
                flush()
        if buf_px:
            flush()
        dim = embs[0].shape[0] if embs else 0
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "order": pa.array(range(len(keys)), pa.int64()),
                "score": pa.array(scores, pa.float32()),
                "image_emb": _vectors(embs, dim),
                "text_emb": _vectors(text_embs, dim),
            }
        )
        sink = io.BytesIO()
        pq.write_table(table, sink)
        Store(self.out).write_bytes(scores_name(url), sink.getvalue())  # whole, or not at all
        return len(keys)


def _vectors(rows: list[np.ndarray], dim: int):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(rows) if rows else np.zeros(0, np.float32)), dim)


def score_shards(
    urls: list[str], out: str, make_scorer: Callable[[], Any], actors: int = 1, batch_size: int = 64, gpus: float = 0
) -> dict:
    """Scores of every shard in `urls` under `out` (one Parquet file each); the shards already
    scored are skipped. Returns {"scored": shards scored now, "skipped": already there, "samples":
    scored now, "seconds", "images_per_s"}."""
    import ray.data

    if not is_s3(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    Store(out).remove_stale_tmp()  # a write a kill cut short (complete files are renamed into place)
    done = set(Store(out).list(SUFFIX))
    todo = [u for u in urls if scores_name(u) not in done]
    t = time.time()
    samples = 0
    if todo:
        with ray_data_quiet(tolerate_failures=False):
            items = ray.data.from_items([{"url": u} for u in todo], override_num_blocks=len(todo))
            with warnings.catch_warnings():
                # Ray 2.60 names no parameter for max_restarts; its actor pool reads it from these
                # remote args (its own comment says so) and warns that they are deprecated
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                ds = items.map_batches(
                    ShardScorer,  # type: ignore[arg-type]  # Ray's UDF type leaves out the constructor kwargs it passes
                    fn_constructor_kwargs={"make_scorer": make_scorer, "out": out, "batch_size": batch_size},
                    batch_size=1,
                    compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(todo)))),
                    num_gpus=gpus or None,
                    # a scorer that dies fails the step, which a rerun resumes from the scored shards:
                    # never restarted in place (which would hide the cause; Ray also prints an error
                    # line for every restartable actor whose arguments sit in the object store)
                    max_restarts=0,
                )
            samples = sum(int(r["samples"]) for r in ds.iter_rows())
    seconds = time.time() - t
    return {
        "scored": len(todo),
        "skipped": len(urls) - len(todo),
        "samples": samples,
        "seconds": seconds,
        "images_per_s": samples / seconds if samples and seconds > 0 else 0.0,
    }
