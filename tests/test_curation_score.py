"""Curation's scoring (data/curation/score.py) on Ray Data's actor pool with a tiny CLIP: one
Parquet file of scores and image embeddings per shard, equal to the model's own embeddings, and a
rerun after a loss scores only the shards whose scores are missing."""

import json
import warnings
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(np.__file__).resolve().parents[1]  # site-packages (inside ROOT where the venv is)


def _ours(w) -> bool:
    """A warning raised from the project's own files (not the venv's, not the standard library's)."""
    where = Path(w.filename).resolve()
    return where.is_relative_to(ROOT) and not where.is_relative_to(SITE)


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = score_shards(urls, str(out), factory, actors=2, batch_size=4)
    assert [f"{w.filename}:{w.lineno} {w.message}" for w in caught if _ours(w)] == []  # Ray's own are Ray's
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
    assert np.abs(np.array(table["text_emb"]) - txt.numpy()).max() <= 1e-5
    assert np.abs(np.array(table["score"]) - (img * txt).sum(1).numpy()).max() <= 1e-5

    kept = {p.name: p.stat().st_mtime_ns for p in out.glob(f"*{SUFFIX}")}
    (out / f"train-000002{SUFFIX}").unlink()  # a kill before this shard's scores were written
    again = score_shards(urls, str(out), factory, actors=2, batch_size=4)
    assert again["scored"] == 1 and again["skipped"] == 2 and again["samples"] == 7
    now = {p.name: p.stat().st_mtime_ns for p in out.glob(f"*{SUFFIX}")}
    assert all(now[n] == kept[n] for n in kept if n != f"train-000002{SUFFIX}")  # not scored twice
    assert json.loads(json.dumps(again))  # counts a step can record


def test_curated_shards_keep_the_bytes_of_what_stays_and_count_what_goes_by_reason(ray_local, tmp_path):
    import io as _io
    import tarfile

    from PIL import Image

    from data.curation.write import choose, read_scores, removal_counts, write_curated

    _, path = _model_file(tmp_path, ClipModelConfig(**TINY))
    urls, _ = _shards(tmp_path / "shards", n_shards=3, per=8)
    # a near-copy of s0-03 (re-encoded at another quality) as the last sample of shard 2
    twin = _io.BytesIO()
    Image.open(_io.BytesIO(image_bytes(3))).save(twin, format="JPEG", quality=80)
    extra = [("s2-99", {"jpg": twin.getvalue(), "txt": b"a photo of thing 3", "json": b"{}"})]
    with tarfile.open(urls[2]) as t:
        members = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
    rows = sorted({n.partition(".")[0] for n in members})
    samples = [(k, {n.partition(".")[2]: b for n, b in members.items() if n.partition(".")[0] == k}) for k in rows]
    write_tar_shard(str(tmp_path / "shards"), "train-000002", samples + extra)

    score_shards(urls, str(tmp_path / "scores"), ClipScorerFactory(str(path), ClipModelConfig), actors=1)
    scored = read_scores(str(tmp_path / "scores"), urls)
    assert len(scored["keys"]) == 25 and scored["embs"].shape == (25, TINY["embed_dim"])
    removed, threshold = choose(scored, None, 0.8, n_clusters=2, eps=1e-4)
    low = {k for k, r in removed.items() if r["reason"] == "low_clip_score"}
    by_score = sorted(zip(scored["scores"], scored["keys"]))
    assert low == {k for _, k in by_score[:5]} and threshold == by_score[5][0]  # 20 of 25 kept by score
    # an untrained tiny CLIP puts every image within cosine 0.9996 of the others, the re-encoded twin
    # within 0.999996 of its original: eps 1e-4 tells them apart (a trained scorer spreads them out)
    everything, _ = choose(scored, -2.0, None, n_clusters=2, eps=1e-4)  # no score removes anything
    dups = {k: r["duplicate_of"] for k, r in everything.items()}
    assert dups == {"s2-99": "s0-03"}  # the later of the pair goes, naming the earlier; nothing else
    counts, examples = removal_counts(removed)
    assert sum(counts.values()) == len(removed) and examples[0]["score"] == min(r["score"] for r in removed.values())

    entries = write_curated(urls, removed, str(tmp_path / "curated"))
    assert sum(e["samples"] for e in entries) == 25 - len(removed)
    with tarfile.open(tmp_path / "curated" / "train-000000.tar") as t:
        kept = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
    with tarfile.open(urls[0]) as t:
        original = {m.name: t.extractfile(m).read() for m in t if m.isfile()}
    assert kept == {n: b for n, b in original.items() if n.partition(".")[0] not in removed}  # bytes unchanged

    (tmp_path / "curated" / "train-000001.json").unlink()  # a kill while writing shard 1
    before = (tmp_path / "curated" / "train-000000.tar").stat().st_mtime_ns
    assert write_curated(urls, removed, str(tmp_path / "curated")) == entries
    assert (tmp_path / "curated" / "train-000000.tar").stat().st_mtime_ns == before  # complete: not rewritten
