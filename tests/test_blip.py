"""BLIP: each loss on tiny tensors against a direct computation, hard negatives never the positive,
the text transformer's three modes, momentum/queue updates, generation, and CapFilt keeping and
dropping exactly as the scores say."""

import json
import math
import tarfile

import pytest
import torch
import torch.nn.functional as F

from families.blip.loss import hard_negatives, itc_loss, itm_loss, lm_loss, lm_targets
from families.blip.model import BLIP, init_momentum
from pipelines.config import BlipModelConfig, CapfiltConfig

VOCAB = 60  # a toy vocabulary: 58 = start, 59 = end (the largest id, as in CLIP's tokenizer)
CFG = BlipModelConfig(
    embed_dim=8,
    image_size=16,
    patch_size=8,
    vision_width=16,
    vision_layers=1,
    vision_heads=2,
    text_width=16,
    text_layers=2,
    text_heads=2,
    context_length=8,
    queue_size=8,
    lm_vocab=tuple(range(1, 58)) + (59,),
)


def _text(rows):
    out = torch.zeros(len(rows), 8, dtype=torch.long)
    for i, r in enumerate(rows):
        ids = [58] + r + [59]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def _model():
    torch.manual_seed(0)
    m = BLIP(CFG, VOCAB)
    init_momentum(m)
    return m


def test_itc_loss_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    n = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    img, txt, m_img, m_txt = n(3, 4), n(3, 4), n(3, 4), n(3, 4)
    iq, tq = n(5, 4).T, n(5, 4).T
    temp, alpha = 0.1, 0.4
    got = itc_loss(img, txt, m_img, m_txt, iq, tq, temp, alpha)
    total = 0.0
    for q, mq, keys, mkeys in (
        (img, m_img, torch.cat([m_txt, tq.T]), None),
        (txt, m_txt, torch.cat([m_img, iq.T]), None),
    ):
        for i in range(3):
            logits = [float(q[i] @ keys[j]) / temp for j in range(8)]
            m_logits = [float(mq[i] @ keys[j]) / temp for j in range(8)]
            z, mz = sum(math.exp(v) for v in logits), sum(math.exp(v) for v in m_logits)
            for j in range(8):
                target = alpha * math.exp(m_logits[j]) / mz + (1 - alpha) * (1.0 if j == i else 0.0)
                total -= target * math.log(math.exp(logits[j]) / z) / 3
    assert got.item() == pytest.approx(total / 2, rel=1e-5)


def test_hard_negatives_follow_the_similarities_and_never_pick_the_positive():
    g = torch.Generator().manual_seed(0)
    sim = torch.tensor([[5.0, 1.0, 0.0, -1.0], [0.0, 5.0, 2.0, 0.0], [3.0, 3.0, 9.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    same = torch.eye(4, dtype=torch.bool)
    same[2, 3] = same[3, 2] = True  # texts 2 and 3 are the same caption
    draws = torch.stack([hard_negatives(sim, same, g) for _ in range(4000)])
    assert not (draws == torch.arange(4)).any()
    assert not (draws[:, 2] == 3).any() and not (draws[:, 3] == 2).any()
    # row 1: columns 0, 2, 3 in proportion to exp(0), exp(2), exp(0)
    freq = torch.bincount(draws[:, 1], minlength=4).float() / 4000
    expected = torch.tensor([1.0, 0.0, math.e**2, 1.0]) / (2 + math.e**2)
    assert (freq - expected).abs().max() < 0.03
    with pytest.raises(ValueError, match="two distinct captions"):
        hard_negatives(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))


def test_a_confident_row_still_draws_other_negatives_as_blip_does():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    sim = torch.tensor([[0.0, 50.0, 0.0, 0.0, 0.0, 0.0]]).expand(n, 6)  # softmax: ~1 on column 1
    same = torch.zeros(n, 6, dtype=torch.bool)
    same[:, 0] = True
    draws = hard_negatives(sim, same, g)
    others = int((draws >= 2).sum())  # 4 columns of weight ~1e-4 against ~1: 80 expected
    assert 40 < others < 140, others
    assert not (draws == 0).any()


def test_itm_negatives_are_drawn_from_online_against_momentum_similarities(monkeypatch):
    import families.blip.loss as lb

    model = _model()
    with torch.no_grad():  # the momentum encoders lag: make them differ
        for p in list(model.m_text_proj.parameters()) + list(model.m_image_proj.parameters()):
            p.add_(torch.randn_like(p))
    images = torch.randn(4, 3, 16, 16)
    text = _text([[1, 2], [3], [4, 5, 6], [7]])
    seen = []
    real = lb.hard_negatives
    monkeypatch.setattr(lb, "hard_negatives", lambda sim, same, g=None: seen.append(sim) or real(sim, same, g))
    model.eval()  # no enqueue: the same features below
    lb.blip_losses(model, images, text)
    with torch.no_grad():
        tokens = model.image_tokens(images)
        img, txt = model.image_embed(tokens), model.text_embed(text)
        m_img = model.image_embed(model.m_visual(images), model.m_image_proj)
        m_txt = model.text_embed(text, model.m_text, model.m_text_proj)
    temp = float(model.temp)
    assert torch.allclose(seen[0], txt @ m_img.T / temp, atol=1e-5)  # an image for each text
    assert torch.allclose(seen[1], img @ m_txt.T / temp, atol=1e-5)  # a text for each image
    assert not torch.allclose(seen[1], img @ txt.T / temp, atol=1e-3)


def test_itm_and_lm_losses_match_direct_computations():
    logits = torch.tensor([[0.2, 1.0], [2.0, -1.0], [0.5, 0.5]])
    expected = (
        -(
            math.log(math.exp(1.0) / (math.exp(0.2) + math.exp(1.0)))
            + math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(-1.0)))
            + math.log(0.5)
        )
        / 3
    )
    assert itm_loss(logits, 1).item() == pytest.approx(expected, rel=1e-6)

    model = _model()
    text = _text([[5, 6], [7]])  # [58, 5, 6, 59, 0...], [58, 7, 59, 0...]
    targets = lm_targets(model, text)
    cls = lambda t: CFG.lm_vocab.index(t)  # noqa: E731
    assert targets[0].tolist() == [cls(5), cls(6), cls(59), -100, -100, -100, -100]
    assert targets[1].tolist() == [cls(7), cls(59), -100, -100, -100, -100, -100]
    lg = torch.randn(2, 7, len(CFG.lm_vocab), generator=torch.Generator().manual_seed(1))
    eps, v, total, count = 0.1, len(CFG.lm_vocab), 0.0, 0
    for b in range(2):
        for j in range(7):
            if targets[b, j] >= 0:
                logp = F.log_softmax(lg[b, j], dim=0)
                total += -(1 - eps) * logp[targets[b, j]] - eps / v * logp.sum()
                count += 1
    assert lm_loss(lg, targets, eps).item() == pytest.approx(float(total) / count, rel=1e-5)


def test_text_modes_padding_causality_and_cross_attention():
    model = _model().eval()
    images = torch.randn(2, 3, 16, 16)
    text = _text([[5, 6, 7], [8]])
    longer = text.clone()
    longer[1, 4:] = 33  # garbage after the end token
    torch.testing.assert_close(model.encode_text(longer), model.encode_text(text))  # padding ignored
    tokens = model.image_tokens(images)
    h = model.text(text, "caption", model.image_to_text(tokens))
    changed = text.clone()
    changed[0, 3] = 9
    h2 = model.text(changed, "caption", model.image_to_text(tokens))
    torch.testing.assert_close(h[0, :3], h2[0, :3])  # causal: the past is unchanged
    assert not torch.allclose(h[0, 3:], h2[0, 3:])
    other = model.itm_logits(model.image_tokens(torch.randn(2, 3, 16, 16)), text)
    assert not torch.allclose(other, model.itm_logits(tokens, text))  # ITM looks at the image


def test_momentum_update_and_queue():
    model = _model()
    p, mp = model.text_proj.weight, model.m_text_proj.weight
    torch.testing.assert_close(p, mp)
    with torch.no_grad():
        p.add_(1.0)
    before = mp.clone()
    model.momentum_update()
    torch.testing.assert_close(mp, 0.995 * before + 0.005 * p)
    assert not any(q.requires_grad for q in model.m_visual.parameters())
    feats = torch.arange(6 * 8, dtype=torch.float).view(6, 8)
    model.enqueue(feats, feats)
    model.enqueue(feats, feats)  # 12 > 8: wraps around
    assert int(model.queue_ptr) == 4
    torch.testing.assert_close(model.image_queue[:, 0], feats[2])
    torch.testing.assert_close(model.image_queue[:, 5], feats[5])


def test_losses_train_and_generation_stops_at_the_end_token():
    model = _model()
    images, text = torch.randn(4, 3, 16, 16), _text([[5, 6], [7], [8, 9, 10], [11]])
    out = model(images, text)
    assert set(out) == {"loss", "itc", "itm", "lm"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.text.layers[0].sa_dec.qkv.weight.grad.abs().sum() > 0  # the decoder's own attention
    assert model.text.layers[0].ca.q.weight.grad.abs().sum() > 0  # shared cross-attention
    assert model.m_text_proj.weight.grad is None
    model.eval()
    for top_p in (None, 0.9):
        caps = model.generate(images, eot=59, top_p=top_p, generator=torch.Generator().manual_seed(0))
        assert len(caps) == 4 and all(len(c) <= 7 and 59 not in c and 58 not in c for c in caps)
        assert all(t in CFG.lm_vocab for c in caps for t in c)


def test_capfilt_keeps_and_drops_exactly_as_the_scores_say(tmp_path, monkeypatch):
    import families.blip.capfilt as cf
    from data.loading.tokenizer import get_tokenizer
    from pipelines.config import BlipModelConfig
    from tests.conftest import image_bytes

    src = tmp_path / "train-000000.tar"
    captions = ["a red square", "a blue square", "a green circle", "a tiny dot"]
    with tarfile.open(src, "w") as tar:
        import io

        for i, c in enumerate(captions):
            for ext, payload in (
                ("jpg", image_bytes(i, size=(16, 16))),
                ("txt", c.encode()),
                ("json", json.dumps({"n": i, "alt_captions": ["x"]}).encode()),
            ):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    tok = get_tokenizer(8)
    cfg = BlipModelConfig(
        embed_dim=8,
        image_size=16,
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        text_width=16,
        text_layers=1,
        text_heads=2,
        context_length=8,
        queue_size=8,
    )
    model = BLIP(cfg, tok.vocab_size).eval()
    synthetic = ["synthetic zero", "synthetic one", "synthetic two", "synthetic three"]
    monkeypatch.setattr(model, "generate", lambda images, eot, **kw: [tok.encode(s) for s in synthetic])
    scores = {
        "a red square": 0.9,
        "a blue square": 0.2,
        "a green circle": 0.5,
        "a tiny dot": 0.1,
        "synthetic zero": 0.7,
        "synthetic one": 0.6,
        "synthetic two": 0.49,
        "synthetic three": 0.3,
    }

    def fake_probability(model, image_tokens, text):
        return torch.tensor([scores[tok.decode(t)] for t in text.tolist()])

    monkeypatch.setattr(cf, "match_probability", fake_probability)
    out = cf.capfilt(model, [str(src)], str(tmp_path / "out"), CapfiltConfig(threshold=0.5, shard_samples=2))
    assert out["counts"] == {
        "images": 4,
        "images_kept": 3,
        "original_kept": 2,
        "original_dropped": 2,
        "synthetic_kept": 2,
        "synthetic_dropped": 2,
    }
    kept = {}
    for shard in out["shards"]:
        with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
            for name in tar.getnames():
                if name.endswith(".txt"):
                    key = name[:-4]
                    meta = json.loads(tar.extractfile(f"{key}.json").read())
                    kept[key] = [tar.extractfile(name).read().decode()] + meta["alt_captions"]
    assert kept == {"k0": ["a red square", "synthetic zero"], "k1": ["synthetic one"], "k2": ["a green circle"]}
    assert sum(s["samples"] for s in out["shards"]) == 3
