"""Evaluation metrics on constructed inputs whose answers are known by hand: CLIP retrieval R@K
and zero-shot (also end to end through `evaluate_clip` on real shards), BLIP's ITM re-ranking,
BLEU-4 / CIDEr, the MAE linear probe and classifier accuracy, the unigram perplexity of MDLM.

The model objects here are stubs whose embeddings / logits are chosen by the test: they are the
inputs of the metric code, which is what is under test."""

import io
import json
import math
import re
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from data.loading.pixels import MEAN, STD
from data.loading.tokenizer import get_tokenizer
from families.blip.evaluate import caption_scores, rerank
from families.clip.evaluate import evaluate_clip, recall_at_k, zero_shot
from families.mae.evaluate import classifier_accuracy, linear_probe, logistic_regression
from families.mdlm.evaluate import unigram_perplexity
from pipelines.config import EvalConfig

CTX = 16
TOK = get_tokenizer(CTX)
LETTERS = "abcdefghijkl"  # captions 'pair a', 'pair b', ...


def _tar(path, samples):
    """samples: [(key, {ext: bytes})] written as one WebDataset shard."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


def _flat_jpeg(rgb, size=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(rgb)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _colours(images: torch.Tensor) -> np.ndarray:
    """Mean RGB (0-255) of normalised loader images [B, 3, S, S]."""
    x = images.numpy().transpose(0, 2, 3, 1) * STD + MEAN
    return x.reshape(len(x), -1, 3).mean(1) * 255


# -- CLIP retrieval ---------------------------------------------------------------------------


def test_recall_of_an_oracle_is_one():
    emb = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert recall_at_k(emb @ emb.T) == {"R1": 1.0, "R5": 1.0, "R10": 1.0}


def test_recall_at_k_from_known_ranks():
    # query i's own candidate is beaten by exactly ranks[i] others (strictly higher scores)
    ranks = [0, 0, 0, 1, 2, 4, 4, 5, 9, 10, 11, 3]
    n = len(ranks)
    sim = torch.full((n, n), -1.0)
    for i, r in enumerate(ranks):
        sim[i, i] = 0.0
        for step in range(1, r + 1):
            sim[i, (i + step) % n] = 1.0
    assert recall_at_k(sim) == pytest.approx({"R1": 3 / 12, "R5": 8 / 12, "R10": 10 / 12})
    assert recall_at_k(sim, ks=(2, 12)) == pytest.approx({"R2": 4 / 12, "R12": 1.0})


def test_ties_count_against_and_a_shuffle_keeps_only_its_fixed_points():
    n = 12
    assert recall_at_k(torch.zeros(n, n)) == {"R1": 0.0, "R5": 0.0, "R10": 0.0}  # all tied: rank n-1
    one_tie = torch.eye(n)
    one_tie[0, 5] = 1.0  # query 0 ties with one other candidate
    assert recall_at_k(one_tie, ks=(1, 2)) == pytest.approx({"R1": 11 / 12, "R2": 1.0})
    # texts shuffled by a permutation with 3 fixed points (0, 4, 9), one-hot embeddings: a moved
    # query's own candidate scores 0 like all others but one, so it ranks last
    perm = [0, 2, 3, 1, 4, 6, 7, 8, 5, 9, 11, 10]
    img = torch.eye(n)
    txt = torch.eye(n)[perm]  # candidate j is the text of pair perm[j]
    assert recall_at_k(img @ txt.T) == pytest.approx({"R1": 3 / 12, "R5": 3 / 12, "R10": 3 / 12})


# -- CLIP zero-shot ---------------------------------------------------------------------------

BASE = {"cat": [1.0, 0, 0, 0], "dog": [0, 10.0, 0, 0], "red fox": [0, 0, 1.0, 0]}
TEMPLATES = ("{}", "a photo of {}")


class PromptTable:
    """encode_text: template 0 gives base + v, template 1 base - v (the mean is the base); a
    caption 'pair x' gives the row of `captions` at the index of letter x (CLIP's BPE decodes
    "10" as "1 0")."""

    def __init__(self, base=BASE, captions=None, width=4, offset=0):
        self.base, self.captions, self.width, self.offset = base, captions, width, offset

    def encode_text(self, tokens):
        rows = []
        for ids in tokens.tolist():
            text = TOK.decode(ids).strip()
            m = re.fullmatch(r"pair ([a-z])", text)
            if m:
                rows.append(self.captions[LETTERS.index(m.group(1))])
                continue
            name = text[len("a photo of ") :] if text.startswith("a photo of ") else text
            sign = -1.0 if text.startswith("a photo of ") else 1.0
            v = torch.zeros(self.width)
            v[self.offset : self.offset + 4] = torch.tensor(self.base[name]) + sign * torch.tensor([0, 0, 0, 3.0])
            rows.append(v)
        return torch.stack(rows)


def test_zero_shot_predictions_and_scores_are_exact():
    # labels and image embeddings; the predictions come from the mean prompt embedding, normalised
    # (unnormalised, "dog" (norm 10) would win [0.8, 0.6]; from template 0 alone, too)
    cat_like, dog, fox = [0.8, 0.6, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]
    rows = [
        ("dog", dog),
        ("cat", cat_like),
        ("dog", cat_like),
        ("red-fox", fox),
        ("dog", dog),
        ("cat", fox),
        ("dog", dog),
        ("cat", cat_like),
        ("dog", cat_like),
        ("dog", dog),
    ]
    labels = [lab for lab, _ in rows]
    img = torch.tensor([e for _, e in rows])
    got = zero_shot(PromptTable(), SimpleNamespace(context_length=CTX), img, labels, TEMPLATES, "hyphen_to_space")
    # hits: dog 4 of 6, cat 2 of 3, red-fox 1 of 1
    assert got == pytest.approx(
        {
            "zeroshot_top1": 0.7,
            "zeroshot_balanced": (4 / 6 + 2 / 3 + 1) / 3,
            "zeroshot_classes": 3,
            "zeroshot_chance": 1 / 3,
            "zeroshot_majority": 0.6,
        }
    )


N_EVAL = 12
CLASS_NAMES = ("alpha", "beta", "gamma-ray")


def _eval_shards(tmp_path):
    """12 flat-colour images: red encodes the pair index, green the class the image 'looks
    like' (which differs from its label for pairs 4 and 7)."""
    samples = []
    for i in range(N_EVAL):
        label = i % 3
        looks = (label + 1) % 3 if i in (4, 7) else label
        samples.append(
            (
                f"e{i:02d}",
                {
                    "jpg": _flat_jpeg((8 + 20 * i, 40 + 80 * looks, 100)),
                    "txt": f"pair {LETTERS[i]}".encode(),
                    "json": json.dumps({"subgroup": CLASS_NAMES[label]}).encode(),
                },
            )
        )
    return [_tar(tmp_path / "eval-000000.tar", samples[:7]), _tar(tmp_path / "eval-000001.tar", samples[7:])]


def test_evaluate_clip_end_to_end_on_real_shards(tmp_path):
    urls = _eval_shards(tmp_path)
    width = N_EVAL + 4
    captions = [torch.eye(width)[i] for i in range(N_EVAL)]
    captions[5] = 0.1 * torch.eye(width)[5] + torch.eye(width)[0] + torch.eye(width)[1]

    class Model(PromptTable):
        def encode_image(self, images):
            rgb = _colours(images)
            index = np.rint((rgb[:, 0] - 8) / 20).astype(int)
            looks = np.rint((rgb[:, 1] - 40) / 80).astype(int)
            out = torch.zeros(len(images), width)
            out[torch.arange(len(images)), torch.from_numpy(index)] = 1.0
            out[torch.arange(len(images)), torch.from_numpy(N_EVAL + looks)] = 1.0
            return out

    base = {"alpha": [1.0, 0, 0, 0], "beta": [0, 1.0, 0, 0], "gamma ray": [0, 0, 1.0, 0]}
    model = Model(base, captions, width, N_EVAL)
    m = evaluate_clip(
        model, SimpleNamespace(context_length=CTX, image_size=16), EvalConfig(batch_size=5, templates=TEMPLATES), urls
    )
    # caption 5 scores 1 against images 0 and 1 (ties with their own captions: two i2t misses at
    # R@1) and 0.1 against its own image (rank 2 among the images: one t2i miss)
    assert m == pytest.approx(
        {
            "eval_samples": 12,
            "i2t_R1": 10 / 12,
            "i2t_R5": 1.0,
            "i2t_R10": 1.0,
            "t2i_R1": 11 / 12,
            "t2i_R5": 1.0,
            "t2i_R10": 1.0,
            "retrieval_chance_R1": 1 / 12,
            "retrieval_chance_R5": 5 / 12,
            "retrieval_chance_R10": 10 / 12,
            "zeroshot_top1": 10 / 12,
            "zeroshot_balanced": (1 + 0.5 + 1) / 3,
            "zeroshot_classes": 3,
            "zeroshot_chance": 1 / 3,
            "zeroshot_majority": 4 / 12,
        }
    )


# -- BLIP re-ranking and captioning -------------------------------------------------------------

SIM = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.7, 0.6, 0.3], [0.4, 0.1, 0.3, 0.35]])
ITM = torch.tensor(
    [
        [-1.0, 0.5, 9.0, 9.0],  # ITM match logit of (image i, text j); the 9s are
        [9.0, 0.0, 0.3, 9.0],  # outside the image queries' top 2
        [0.2, 9.0, 9.0, -0.5],
    ]
)


class ItmTable:
    """itm_logits from the table: column 1 is ITM[i, j], column 0 something else."""

    def itm_logits(self, image_tokens, text):
        s = ITM[image_tokens[:, 0].long(), text[:, 0]]
        return torch.stack([3.0 - s, s], dim=1)


def test_rerank_rescored_top_k_and_keeps_the_rest_below():
    images, texts = torch.arange(3.0)[:, None], torch.arange(4)[:, None]
    out = rerank(ItmTable(), SIM, images, texts, k=2, image_queries=True, batch=4)
    top = [[0, 1], [1, 2], [0, 3]]
    for i in range(3):
        for j in range(4):
            want = SIM[i, j] + ITM[i, j] if j in top[i] else SIM[i, j] - 1e4
            assert out[i, j].item() == pytest.approx(want.item(), abs=1e-3)
    assert out.argsort(dim=1, descending=True).tolist() == [[1, 0, 3, 2], [2, 1, 3, 0], [0, 3, 2, 1]]
    # text queries: row r is text r against the images, the ITM pair is (image c, text r)
    sim_t = SIM.T.contiguous()
    out_t = rerank(ItmTable(), sim_t, images, texts, k=1, image_queries=False, batch=3)
    for r, c in enumerate(sim_t.argmax(dim=1).tolist()):
        assert out_t[r, c].item() == pytest.approx((sim_t[r, c] + ITM[c, r]).item())
        others = [x for x in range(3) if x != c]
        assert out_t[r, others].max() < out_t[r, c] and torch.allclose(out_t[r, others], sim_t[r, others] - 1e4)
    # k above the number of candidates: every candidate re-scored
    assert torch.allclose(rerank(ItmTable(), SIM, images, texts, k=10, image_queries=True), SIM + ITM)


def test_bleu_and_cider_on_hand_computed_cases():
    refs = {"a": ["A b, c D."], "b": ["W x y z!"]}  # words(): lowercased, no punctuation, both sides
    same = caption_scores(refs, {"a": "a B c d", "b": "w x  y z."})
    assert same["bleu4"] == pytest.approx(1.0, rel=1e-6) and same["bleu1"] == pytest.approx(1.0, rel=1e-6)
    assert same["cider"] == pytest.approx(10.0, rel=1e-6)  # CIDEr-D of identical n-grams: 10 x mean cosine 1
    # one word changed in image a's caption; corpus n-gram precisions 7/8, 5/6, 3/4 and 1/2
    one_off = caption_scores(refs, {"a": "a b c e", "b": "w x y z"})
    assert one_off["bleu1"] == pytest.approx(7 / 8, rel=1e-6)
    assert one_off["bleu4"] == pytest.approx((7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25, rel=1e-6)
    # CIDEr: a's cosine per n is 3/4, 2/3, 1/2, 0 (every n-gram has the same idf, log 2); b's is 1
    assert one_off["cider"] == pytest.approx((10 * (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4 + 10) / 2, rel=1e-6)
    # short candidates: all precisions 1, corpus brevity penalty exp(1 - 12/8)
    short = caption_scores({"a": ["a b c d e f"], "b": ["a b c d e f"]}, {"a": "a b c d", "b": "a b c d"})
    assert short["bleu4"] == pytest.approx(math.exp(1 - 12 / 8), rel=1e-6)
    assert short["bleu1"] == pytest.approx(math.exp(1 - 12 / 8), rel=1e-6)
    disjoint = caption_scores(refs, {"a": "p q r s", "b": "t u v"})
    assert disjoint["cider"] == 0.0 and disjoint["bleu4"] < 1e-6 and disjoint["bleu1"] < 1e-6
    missing = caption_scores(refs, {"a": "", "b": "w x y z"})  # an empty caption scores as "empty"
    assert missing["bleu1"] == pytest.approx(4 / 5 * math.exp(1 - 8 / 5), rel=1e-6)


# -- MAE: linear probe and classifiers ------------------------------------------------------------


def _separable(n, g, bad=0):
    """3 classes 10 apart along one axis each, bounded noise, one feature on a huge scale; the
    first `bad` labels are -1 (no known class)."""
    y = torch.arange(n) % 3
    x = 10 * torch.eye(3)[y] + torch.rand(n, 3, generator=g) * 2 - 1
    x = torch.cat([x, torch.rand(n, 2, generator=g)], 1)
    x[:, 0] = x[:, 0] * 1e3 + 1e6
    y[:bad] = -1
    return x, y


def test_logistic_regression_separable_and_label_independent():
    g = torch.Generator().manual_seed(0)
    tr_x, tr_y = _separable(300, g, bad=6)
    te_x, te_y = _separable(150, g, bad=15)  # -1 test labels are always wrong
    got = logistic_regression(tr_x, tr_y, te_x, te_y, 3)
    assert got == pytest.approx({"train_accuracy": 1.0, "accuracy": 135 / 150})
    # features that say nothing about the labels: held-out accuracy at chance (1/4 +- 4 sd)
    x, y = torch.randn(4400, 20, generator=g), torch.randint(0, 4, (4400,), generator=g)
    got = logistic_regression(x[:400], y[:400], x[400:], y[400:], 4)
    assert abs(got["accuracy"] - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 4000), got


COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def _labelled_shard(path, n, extra=()):
    """n flat images cycling red/green/blue (shade varies), labelled by colour, plus `extra`
    (rgb, label) samples."""
    rows = [
        (tuple(max(0, c - 7 * (i // 3)) for c in COLOURS[name]), name)
        for i, name in ((i, list(COLOURS)[i % 3]) for i in range(n))
    ]
    rows += list(extra)
    return _tar(
        path,
        [
            (f"k{i:03d}", {"jpg": _flat_jpeg(rgb, 16), "json": json.dumps({"label": lab}).encode()})
            for i, (rgb, lab) in enumerate(rows)
        ],
    )


class MeanColourEncoder(torch.nn.Module):
    """Tokens [B, 1 + 4, 3]: a class token of noise, then 4 'patches' equal to the mean colour."""

    def forward(self, x):
        mean = x.mean(dim=(2, 3))
        cls = torch.randn(len(x), 1, 3, generator=torch.Generator().manual_seed(len(x)))
        return torch.cat([cls, mean[:, None].expand(-1, 4, -1)], dim=1)


def test_linear_probe_on_separable_features(tmp_path):
    train = _labelled_shard(tmp_path / "train.tar", 30, extra=[((90, 90, 90), "zebra")])
    held = _labelled_shard(tmp_path / "eval.tar", 12, extra=[((200, 30, 30), "zebra")])
    mae = SimpleNamespace(cfg=SimpleNamespace(image_size=16), encoder=MeanColourEncoder())
    got = linear_probe(mae, [train], [held], "label", list(COLOURS), iterations=50, weight_decay=1e-4)
    # the zebra (not a class) is left out of the fit and counts as a miss on the held-out split
    assert got == pytest.approx(
        {
            "probe_accuracy": 12 / 13,
            "probe_train_accuracy": 1.0,
            "pixels_accuracy": 12 / 13,
            "pixels_train_accuracy": 1.0,
        }
    )


def test_classifier_accuracy_counts_the_known_predictions(tmp_path):
    held = _labelled_shard(tmp_path / "eval.tar", 12, extra=[((200, 30, 30), "zebra"), ((200, 30, 30), "blue")])

    class ByDominantChannel(torch.nn.Module):  # predicts class i when channel i is the brightest
        encoder = SimpleNamespace(patch_size=4, grid=4)

        def forward(self, x):
            return x.mean(dim=(2, 3))

    model = ByDominantChannel()
    assert classifier_accuracy(model, [held], "label", ["red", "green", "blue"]) == pytest.approx(12 / 14)
    # the same outputs read through another class order: only the 4 blue ones stay right
    assert classifier_accuracy(model, [held], "label", ["green", "red", "blue"]) == pytest.approx(4 / 14)


# -- MDLM: unigram perplexity ---------------------------------------------------------------------


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a, dtype=np.int32))
    return buf.getvalue()


def test_unigram_perplexity_by_hand(tmp_path):
    urls = [
        _tar(tmp_path / "eval-000000.tar", [("a", {"npy": _npy([0, 1, 3, 3])}), ("b", {"npy": _npy([2, 2, 0, 4])})]),
        _tar(tmp_path / "eval-000001.tar", [("c", {"npy": _npy([3, 3, 3, 3])})]),
    ]
    counts = [3, 1, 0, 4, 0]  # add-one: 4, 2, 1, 5, 1 of 13
    got = unigram_perplexity(counts, urls, limit=0)
    # the 12 tokens: two 0s (4/13), one 1 (2/13), six 3s (5/13), three of 2 or 4 (1/13)
    nll = -(2 * math.log(4 / 13) + math.log(2 / 13) + 6 * math.log(5 / 13) + 3 * math.log(1 / 13)) / 12
    assert got == pytest.approx({"unigram_nll_per_token": nll, "unigram_perplexity": math.exp(nll)})
    assert got["unigram_perplexity"] == pytest.approx((13**12 / (4**2 * 2 * 5**6)) ** (1 / 12))
    first_two = unigram_perplexity(counts, urls, limit=2)
    assert first_two["unigram_perplexity"] == pytest.approx((13**8 / (4**2 * 2 * 5**2)) ** (1 / 8))
