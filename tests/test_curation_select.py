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


def test_pair_dedup_takes_a_near_image_for_a_duplicate_only_with_a_near_caption():
    """dedup_on image (SemDeDup): the same image under another caption is a duplicate; dedup_on
    pair: only the same image under the same caption is (a scorer that cannot tell similar images
    apart still tells their captions apart)."""
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
    with pytest.raises(ValueError, match="curate.dedup_on: 'caption' is not 'image' or 'pair'"):
        choose(scored, None, 1.0, n_clusters=1, eps=1e-3, dedup_on="caption")
