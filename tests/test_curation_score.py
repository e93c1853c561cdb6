"""Curation's scoring (data/curation/score.py) on Ray Data's actor pool with a tiny CLIP: one
Parquet file of scores and image embeddings per shard, equal to the model's own embeddings, and a
rerun after a loss scores only the shards whose scores are missing."""

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from data.curation.score import SUFFIX, score_shards
from data.loading.pixels import eval_pixels
from data.loading.tokenizer import get_tokenizer
from data.writing.shard_io import write_tar_shard
from families.clip.config import ClipModelConfig
from families.clip.curate import ClipScorerFactory
from tests.conftest import image_bytes
from tests.test_export_hf import TINY, _model_file


def _shards(root, n_shards=3, per=7):
    captions = {}
    for s in range(n_shards):
        samples = []
        for i in range(per):
            key = f"s{s}-{i:02d}"
            captions[key] = f"a photo of thing {s * per + i}"
            samples.append((key, {"jpg": image_bytes(s * per + i), "txt": captions[key].encode(), "json": b"{}"}))
        write_tar_shard(str(root), f"train-{s:06d}", samples)
    return [str(root / f"train-{s:06d}.tar") for s in range(n_shards)], captions


def test_scores_are_the_models_cosines_one_file_per_shard_and_a_rerun_scores_only_what_is_missing(ray_local, tmp_path):
    model, path = _model_file(tmp_path, ClipModelConfig(**TINY))
    urls, captions = _shards(tmp_path / "shards")
    out = tmp_path / "scores"
    factory = ClipScorerFactory(str(path), ClipModelConfig)
    first = score_shards(urls, str(out), factory, actors=2, batch_size=4)
    assert first["scored"] == 3 and first["skipped"] == 0 and first["samples"] == 21 and first["images_per_s"] > 0

    table = pq.read_table(out / f"train-000001{SUFFIX}").to_pydict()
    assert table["key"] == [f"s1-{i:02d}" for i in range(7)] and table["order"] == list(range(7))
    pixels = np.stack([eval_pixels(image_bytes(7 + i), TINY["image_size"]) for i in range(7)])
    with torch.no_grad():  # the model's own embeddings of the same pixels and captions
        img = model.encode_image(torch.from_numpy(pixels))
        txt = model.encode_text(
            torch.from_numpy(get_tokenizer(TINY["context_length"])([captions[k] for k in table["key"]]))
        )
    assert np.abs(np.array(table["image_emb"]) - img.numpy()).max() <= 1e-5
    assert np.abs(np.array(table["score"]) - (img * txt).sum(1).numpy()).max() <= 1e-5

    kept = {p.name: p.stat().st_mtime_ns for p in out.glob(f"*{SUFFIX}")}
    (out / f"train-000002{SUFFIX}").unlink()  # a kill before this shard's scores were written
    again = score_shards(urls, str(out), factory, actors=2, batch_size=4)
    assert again["scored"] == 1 and again["skipped"] == 2 and again["samples"] == 7
    now = {p.name: p.stat().st_mtime_ns for p in out.glob(f"*{SUFFIX}")}
    assert all(now[n] == kept[n] for n in kept if n != f"train-000002{SUFFIX}")  # not scored twice
    assert json.loads(json.dumps(again))  # counts a step can record
