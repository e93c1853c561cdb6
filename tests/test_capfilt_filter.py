"""CapFilt with its real filter: the match probability of a real BLIP's ITM head at the recipe's
threshold (0.5). The ITM head's bias is set so that the threshold falls between two known pair
scores, which the test computes itself, one (image, text) pair at a time; the kept and dropped texts,
the counts and the shards written must be exactly those that `p >= threshold` implies."""

import io
import json
import math
import tarfile

import torch

from data.loading.pixels import eval_pixels
from data.loading.tokenizer import get_tokenizer
from families.blip.capfilt import capfilt
from families.blip.model import BLIP
from pipelines.config import BlipModelConfig, CapfiltConfig
from tests.conftest import image_bytes

CAPTIONS = [
    "a red square",
    "a blue square",
    "a green circle",
    "a tiny dot",
    "a red circle",
    "a blue dot",
    "a green square",
    "a tiny circle",
]


def _shard(path):
    with tarfile.open(path, "w") as tar:
        for i, c in enumerate(CAPTIONS):
            for ext, payload in (
                ("jpg", image_bytes(i, size=(16, 16))),
                ("txt", c.encode()),
                ("json", json.dumps({"n": i}).encode()),
            ):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


def _model(tok):
    words = sorted({tok.encode(w)[0] for c in CAPTIONS for w in c.split()})
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
        lm_vocab=tuple(words) + (tok.eot,),
    )
    torch.manual_seed(0)
    model = BLIP(cfg, tok.vocab_size).eval()
    with torch.no_grad():
        model.itm_head.weight.mul_(100)  # spread the match logits well apart
    return model


@torch.no_grad()
def _logit_margin(model, tok, jpg: bytes, text: str) -> float:
    """ITM match logit minus no-match logit of one (image, text) pair, computed on its own."""
    image = torch.from_numpy(eval_pixels(jpg, 16))[None]
    logits = model.itm_logits(model.image_tokens(image), torch.from_numpy(tok([text]))).double()[0]
    return float(logits[1] - logits[0])


def _written(out_dir, shards):
    kept = {}
    for shard in shards:
        with tarfile.open(out_dir / shard["name"]) as tar:
            for name in tar.getnames():
                if name.endswith(".txt"):
                    key = name[:-4]
                    meta = json.loads(tar.extractfile(f"{key}.json").read())
                    kept[key] = [tar.extractfile(name).read().decode()] + meta["alt_captions"]
    return kept


def test_capfilt_filters_with_the_itm_heads_match_probability(tmp_path):
    tok = get_tokenizer(8)
    src = _shard(tmp_path / "train-000000.tar")
    jpgs = [image_bytes(i, size=(16, 16)) for i in range(len(CAPTIONS))]
    model = _model(tok)
    cfg = CapfiltConfig(threshold=0.5, shard_samples=3, batch_size=5)

    first = capfilt(model, [src], str(tmp_path / "first"), cfg, seed=0)
    synthetic = {e["key"]: e["synthetic"] for e in first["examples"]}
    assert len(synthetic) == len(CAPTIONS)

    # p = softmax(logits)[1] = sigmoid(margin); shift the match logit so that exactly half of the
    # 16 texts reach p >= 0.5, the threshold half way between two scores far apart
    margins = {
        (f"k{i}", kind): _logit_margin(model, tok, jpgs[i], text)
        for i, c in enumerate(CAPTIONS)
        for kind, text in (("orig", c), ("syn", synthetic[f"k{i}"]))
    }
    ordered = sorted(margins.values())
    assert ordered[8] - ordered[7] > 1e-2, ordered
    shift = -(ordered[7] + ordered[8]) / 2
    with torch.no_grad():
        model.itm_head.bias[1] += shift
    p = {pair: 1 / (1 + math.exp(-(m + shift))) for pair, m in margins.items()}
    keep = {pair: prob >= 0.5 for pair, prob in p.items()}
    assert sum(keep.values()) == 8
    assert {k for (k, kind), v in keep.items() if kind == "orig" and v}, "no original kept: a vacuous case"
    assert {k for (k, kind), v in keep.items() if kind == "orig" and not v}, "no original dropped"

    out = capfilt(model, [src], str(tmp_path / "out"), cfg, seed=0)
    assert {e["key"]: e["synthetic"] for e in out["examples"]} == synthetic  # the same captioner draws
    for e in out["examples"]:
        assert abs(e["original_score"] - p[(e["key"], "orig")]) <= 6e-5, e
        assert abs(e["synthetic_score"] - p[(e["key"], "syn")]) <= 6e-5, e

    expected = {}
    for i, c in enumerate(CAPTIONS):
        key, syn = f"k{i}", synthetic[f"k{i}"]
        texts = ([c] if keep[(key, "orig")] else []) + ([syn] if keep[(key, "syn")] and syn and syn != c else [])
        if texts:
            expected[key] = texts
    n_orig = sum(v for (_, kind), v in keep.items() if kind == "orig")
    n_syn = sum(v for (_, kind), v in keep.items() if kind == "syn")
    assert out["counts"] == {
        "images": 8,
        "images_kept": len(expected),
        "original_kept": n_orig,
        "original_dropped": 8 - n_orig,
        "synthetic_kept": n_syn,
        "synthetic_dropped": 8 - n_syn,
    }
    assert _written(tmp_path / "out", out["shards"]) == expected
    assert [s["samples"] for s in out["shards"]] == [3] * (len(expected) // 3) + (
        [len(expected) % 3] if len(expected) % 3 else []
    )

    # the same filter with the match logit pushed far down keeps nothing, far up keeps every text
    with torch.no_grad():
        model.itm_head.bias[1] -= 1e4
    assert capfilt(model, [src], str(tmp_path / "none"), cfg, seed=0)["counts"]["images_kept"] == 0
    with torch.no_grad():
        model.itm_head.bias[1] += 2e4
    all_kept = capfilt(model, [src], str(tmp_path / "all"), cfg, seed=0)
    assert all_kept["counts"]["original_kept"] == all_kept["counts"]["synthetic_kept"] == 8
    assert [e["kept"][0] for e in all_kept["examples"]] == CAPTIONS
    # every text passes, yet an empty synthetic caption is never written
    assert "" in synthetic.values(), synthetic
    assert _written(tmp_path / "all", all_kept["shards"]) == {
        f"k{i}": [c] + ([synthetic[f"k{i}"]] if synthetic[f"k{i}"] not in ("", c) else [])
        for i, c in enumerate(CAPTIONS)
    }
