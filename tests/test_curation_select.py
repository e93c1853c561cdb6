"""Curation's selection (data/curation/select.py) on embeddings with planted structure: k-means
finds separated clusters, semantic dedup finds exactly the planted near-duplicates (the later one of
each pair), blockwise as on the whole, and the score filter keeps what it says."""

import numpy as np
import pytest

from data.curation.select import kmeans, low_scores, normalised, precision_recall, semantic_duplicates


def _planted(n=1500, dups=150, dim=48, noise=0.01, seed=0):
    """n unit vectors around 20 topics (embeddings of real data cluster), then `dups` near-copies of
    earlier ones (cosine about 0.998): (embeddings, copy -> original)."""
    rng = np.random.default_rng(seed)
    topics = normalised(rng.normal(size=(20, dim))) * 3.0
    base = normalised(topics[rng.integers(20, size=n)] + rng.normal(size=(n, dim)))
    src = rng.choice(n, size=dups, replace=False)
    copies = normalised(base[src] + noise * rng.normal(size=(dups, dim)))
    return np.vstack([base, copies]), {n + i: int(s) for i, s in enumerate(src)}


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(1)
    centres = normalised(rng.normal(size=(4, 32))) * 10
    x = np.vstack([c + rng.normal(size=(200, 32)) for c in centres])
    _, assign = kmeans(x, 4, seed=0)
    truth = np.repeat(np.arange(4), 200)
    for c in range(4):  # each planted cluster is one k-means cluster, and all of it
        assert len(set(assign[truth == c])) == 1
    assert len(set(assign)) == 4


@pytest.mark.parametrize("block", [4096, 97])
def test_semantic_dedup_removes_exactly_the_later_of_each_planted_pair(block):
    emb, copy_of = _planted()
    dup_of = semantic_duplicates(emb, np.arange(len(emb)), n_clusters=12, eps=0.01, block=block)
    removed = {int(i) for i in np.flatnonzero(dup_of >= 0)}
    precision, recall = precision_recall(removed, set(copy_of))
    assert precision == 1.0 and recall >= 0.97  # a pair k-means splits is not compared (SemDeDup's trade)
    assert all(dup_of[i] == copy_of[i] for i in removed)  # each names its original


def test_priority_decides_which_of_a_pair_is_kept_and_eps_zero_removes_nothing():
    emb, copy_of = _planted(n=400, dups=40)
    first_copies = np.arange(len(emb))[::-1].copy()  # the copies (last rows) come first now
    dup_of = semantic_duplicates(emb, first_copies, n_clusters=4, eps=0.01)
    removed = {int(i) for i in np.flatnonzero(dup_of >= 0)}
    precision, recall = precision_recall(removed, set(copy_of.values()))
    assert precision == 1.0 and recall >= 0.95  # the originals go: their copies came first
    assert not (semantic_duplicates(emb, np.arange(len(emb)), n_clusters=4, eps=0.0) >= 0).any()


def test_the_score_filter_keeps_the_top_fraction_or_what_is_over_the_threshold():
    scores = np.array([0.30, 0.10, 0.25, 0.05, 0.20, 0.15, 0.35, 0.28, 0.12, 0.22])
    removed, threshold = low_scores(scores, keep_fraction=0.7)
    assert removed.sum() == 3 and threshold == pytest.approx(0.15) and set(np.flatnonzero(removed)) == {1, 3, 8}
    removed, threshold = low_scores(scores, min_score=0.2)
    assert set(np.flatnonzero(removed)) == {1, 3, 5, 8} and threshold == 0.2
    with pytest.raises(ValueError, match="exactly one of min_score and keep_fraction"):
        low_scores(scores)
    with pytest.raises(ValueError, match="curate.keep_fraction: must be > 0 and <= 1, got 1.5"):
        low_scores(scores, keep_fraction=1.5)


def test_a_scorer_that_sees_every_image_alike_is_refused_not_obeyed():
    from data.curation.write import choose

    rng = np.random.default_rng(0)
    collapsed = normalised(np.ones((200, 16)) + 1e-4 * rng.normal(size=(200, 16)))  # an undertrained teacher
    scored = {"keys": [f"k{i}" for i in range(200)], "scores": rng.random(200), "embs": collapsed,
              "priority": np.arange(200)}  # fmt: skip
    with pytest.raises(ValueError, match=r"curate.dedup_eps: \d+ of 200 samples would go as semantic duplicates"):
        choose(scored, None, 1.0, n_clusters=4, eps=0.02)
    removed, _ = choose(scored, None, 1.0, n_clusters=4, eps=0.0)
    assert removed == {}  # no dedup asked: nothing goes


def test_dedup_on_image_pair_or_caption_decides_what_a_duplicate_is():
    """dedup_on image (SemDeDup): the same image under another caption is a duplicate; dedup_on
    pair: only the same image under the same caption is (a scorer that cannot tell similar images
    apart still tells their captions apart); dedup_on caption: the same caption is, whatever the
    image."""
    from data.curation.write import choose

    rng = np.random.default_rng(1)
    img, txt = normalised(rng.normal(size=(6, 8))), normalised(rng.normal(size=(6, 8)))
    img[3], txt[3] = img[0], txt[0] + 1e-4  # sample 3: sample 0 again (the image and the caption)
    img[4] = img[1]  # sample 4: sample 1's image with a caption of its own
    scored = {"keys": [f"k{i}" for i in range(6)], "scores": np.ones(6), "embs": img, "text_embs": txt,
              "priority": np.arange(6)}  # fmt: skip
    by_image, _ = choose(scored, None, 1.0, n_clusters=1, eps=1e-3)
    assert {k: r["duplicate_of"] for k, r in by_image.items()} == {"k3": "k0", "k4": "k1"}
    by_pair, _ = choose(scored, None, 1.0, n_clusters=1, eps=1e-3, dedup_on="pair")
    assert {k: r["duplicate_of"] for k, r in by_pair.items()} == {"k3": "k0"}
    by_caption, _ = choose(scored, None, 1.0, n_clusters=1, eps=1e-3, dedup_on="caption")
    assert {k: r["duplicate_of"] for k, r in by_caption.items()} == {"k3": "k0"}
    txt[5] = txt[2]  # sample 5: sample 2's caption under an image of its own
    by_caption, _ = choose(scored, None, 1.0, n_clusters=1, eps=1e-3, dedup_on="caption")
    assert {k: r["duplicate_of"] for k, r in by_caption.items()} == {"k3": "k0", "k5": "k2"}
    by_pair, _ = choose(scored, None, 1.0, n_clusters=1, eps=1e-3, dedup_on="pair")
    assert {k: r["duplicate_of"] for k, r in by_pair.items()} == {"k3": "k0"}
    with pytest.raises(ValueError, match="curate.dedup_on: 'text' is not 'image', 'pair' or 'caption'"):
        choose(scored, None, 1.0, n_clusters=1, eps=1e-3, dedup_on="text")


# --- the streamed selection (data/curation/threshold.py, stream.py): choose()'s results, bounded memory


def test_the_streamed_threshold_is_low_scores_exactly_ties_and_one_bin_included():
    from data.curation.threshold import histogram, threshold

    rng = np.random.default_rng(3)
    tied = rng.choice(rng.uniform(-0.2, 0.6, 40), size=3000)  # many ties
    packed = 0.3 + rng.integers(0, 50, 2000) * 1e-7  # all in one or two bins, ties too
    spread = rng.uniform(-1.2, 1.2, 2000)  # out of [-1, 1] at both ends
    for scores in (tied, packed, spread, np.concatenate([tied, packed, spread]), np.array([0.1])):
        scores = scores.astype(np.float32)
        batches = np.array_split(scores, 7)
        for fraction in (0.001, 0.1, 0.5, 0.77, 0.999, 1.0):
            keep = max(1, round(fraction * len(scores)))
            expected = float(np.sort(scores.astype(np.float64))[::-1][keep - 1])
            got = threshold(sum(histogram(b) for b in batches), lambda: iter(batches), fraction)
            assert got == expected
            removed, used = low_scores(scores, keep_fraction=fraction)
            assert used == expected and removed.sum() == (scores < expected).sum()


def _score_files(root, n_shards=4, per=150, dim=48, seed=0, collapsed=False):
    """Scores files as score_shards writes them, of planted near-duplicates (and captions: the
    image's own direction, a little moved), scores with ties; tar shards of the same keys (a caption
    each); their urls."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.curation.score import _vectors, scores_name
    from data.writing.shard_io import write_tar_shard

    emb, copy_of = _planted(n=n_shards * per - per // 3, dups=per // 3, dim=dim, seed=seed)
    rng = np.random.default_rng(seed)
    if collapsed:
        emb = normalised(np.ones_like(emb) + 1e-4 * rng.normal(size=emb.shape))
    txt = normalised(emb + 0.05 * rng.normal(size=emb.shape))
    for copy, original in copy_of.items():  # a copy's caption: its original's, nearly
        txt[copy] = normalised(txt[[original]] + 0.001 * rng.normal(size=(1, dim)))[0]
    scores = rng.choice(np.linspace(0.1, 0.4, 60), size=len(emb)).astype(np.float32)
    urls = []
    for s in range(n_shards):
        rows = range(s * per, (s + 1) * per)
        keys = [f"s{s}-{i:03d}" for i in range(per)]
        table = pa.table({
            "key": pa.array(keys), "order": pa.array(range(per), pa.int64()),
            "score": pa.array(scores[list(rows)], pa.float32()),
            "image_emb": _vectors([emb[r].astype(np.float32) for r in rows], dim),
            "text_emb": _vectors([txt[r].astype(np.float32) for r in rows], dim),
        })  # fmt: skip
        write_tar_shard(str(root / "shards"), f"train-{s:06d}", [(k, {"txt": k.encode()}) for k in keys])
        urls.append(str(root / "shards" / f"train-{s:06d}.tar"))
        sink = io.BytesIO()
        pq.write_table(table, sink)
        (root / "scores").mkdir(parents=True, exist_ok=True)
        (root / "scores" / scores_name(urls[-1])).write_bytes(sink.getvalue())
    return str(root / "scores"), urls


@pytest.mark.parametrize("dedup_on", ["image", "pair", "caption"])
def test_the_streamed_selection_and_its_shards_are_chooses(tmp_path, dedup_on):
    """select_streamed + write_shards give what read_scores + choose + write_curated give: the same
    threshold, removals (cosine included), counts, examples, and byte-identical curated shards."""
    from data.curation.stream import select_streamed
    from data.curation.write import choose, read_scores, removal_counts, write_curated, write_shards

    scores_dir, urls = _score_files(tmp_path)
    for settings in [(None, 0.8, 6, 0.01), (0.2, None, 3, 0.02), (None, 0.5, 1, 0.0)]:
        removed, threshold = choose(read_scores(scores_dir, urls), *settings, seed=1, dedup_on=dedup_on)
        sel = select_streamed(scores_dir, urls, tmp_path / "work", *settings, seed=1, dedup_on=dedup_on)
        assert sel.threshold == threshold and sel.scores.n == 600
        for i in range(len(urls)):
            assert sel.removed_in(i) == {k for k in removed if k.startswith(f"s{i}-")}
        counts, examples = removal_counts(removed)
        assert dict(sel.removals.counts) == counts and sel.removals.examples() == examples
        dups = {k: r for k, r in removed.items() if r["reason"] == "semantic_duplicate"}
        assert (len(dups) > 10) == (settings[3] > 0)
        least = sorted(dups, key=lambda k: (dups[k]["cosine"], k))[:8]
        assert [v["key"] for _, _, v in sel.removals.duplicates] == least
        assert all(v["duplicate_of"] == dups[v["key"]]["duplicate_of"] for _, _, v in sel.removals.duplicates)
    before = write_curated(urls, removed, str(tmp_path / "before"))
    after = write_shards(urls, sel.removed_in, str(tmp_path / "after"))
    assert before == after  # names, sample counts, sha256 of every shard


def test_the_streamed_selection_holds_a_shard_a_fit_sample_and_a_cluster_never_the_data(tmp_path, monkeypatch):
    from data.curation import stream

    scores_dir, urls = _score_files(tmp_path)
    seen = {"shard": 0, "fit": 0, "clusters": []}
    read, fit, load = stream.shard_scores, stream.kmeans, stream.ClusterFiles.load

    def counted_read(*a, **k):
        s = read(*a, **k)
        seen["shard"] = max(seen["shard"], len(s["keys"]))
        return s

    def counted_fit(x, *a, **k):
        seen["fit"] = max(seen["fit"], len(x))
        return fit(x, *a, **k)

    def counted_load(self, c):
        out = load(self, c)
        seen["clusters"].append(len(out[0]))
        return out

    monkeypatch.setattr(stream, "shard_scores", counted_read)
    monkeypatch.setattr(stream, "kmeans", counted_fit)
    monkeypatch.setattr(stream.ClusterFiles, "load", counted_load)
    monkeypatch.setattr(stream, "FIT_SAMPLE", 100)
    sel = stream.select_streamed(scores_dir, urls, tmp_path / "work", None, 0.9, 8, 0.01)
    assert seen["shard"] == 150 and seen["fit"] == 100  # a shard's rows; k-means on a sample
    assert sum(seen["clusters"]) == sel.kept_by_score >= 540 and max(seen["clusters"]) < 540 // 2  # ties kept
    dups = sel.removals.counts["semantic_duplicate"]
    assert 40 <= dups <= 50  # the 50 planted copies, less those a sampled fit splits from their original
    rerun = stream.select_streamed(scores_dir, urls, tmp_path / "work", None, 0.9, 8, 0.01)
    assert [rerun.removed_in(i) for i in range(4)] == [sel.removed_in(i) for i in range(4)]  # a rerun starts afresh


def test_the_streamed_selection_refuses_a_scorer_that_sees_every_image_alike(tmp_path):
    from data.curation.stream import select_streamed

    scores_dir, urls = _score_files(tmp_path, collapsed=True)
    with pytest.raises(ValueError, match=r"curate.dedup_eps: \d+ of 600 samples would go as semantic duplicates"):
        select_streamed(scores_dir, urls, tmp_path / "work", None, 1.0, 4, 0.02)
    with pytest.raises(ValueError, match="curate.dedup_on: 'text' is not 'image', 'pair' or 'caption'"):
        select_streamed(scores_dir, urls, tmp_path / "work", None, 1.0, 4, 0.02, dedup_on="text")


def test_duplicates_found_block_by_block_are_those_of_the_whole_similarity_matrix():
    """cluster_duplicates compares rows and earlier members a block at a time: with small blocks
    (and exact ties, the first of equals wins) it finds what the full matrix finds."""
    from data.curation.select import cluster_duplicates

    rng = np.random.default_rng(3)
    x = normalised(rng.normal(size=(50, 6)))
    x[[20, 33, 41]] = x[7]  # exact ties: every later copy names row 7, the first of equals
    x[45] = normalised(x[12:13] + 1e-3)[0]
    sim = x @ x.T
    sim[np.triu_indices(len(x))] = -np.inf  # only earlier rows count
    want = np.where(sim.max(axis=1) > 1 - 1e-3, sim.argmax(axis=1), -1)
    want[0] = -1
    for block in (1, 3, 7, 64):
        best, cosine = cluster_duplicates(x, 1e-3, block=block)
        assert best.tolist() == want.tolist(), block
        assert np.allclose(cosine[best >= 0], sim.max(axis=1)[best >= 0]) and np.isnan(cosine[best < 0]).all()
    assert best[[20, 33, 41, 45]].tolist() == [7, 7, 7, 12]
