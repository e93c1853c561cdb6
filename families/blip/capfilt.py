"""CapFilt (BLIP): the captioner writes a synthetic caption for every training image (nucleus
sampling), the filter (the ITM head) scores the original and the synthetic caption against the
image, and a text is kept when its match probability reaches the threshold. New shards hold every
image with at least one kept text (the first as its caption, the others as `alt_captions`)."""

from __future__ import annotations

import numpy as np
import torch

from data.loading.pixels import eval_pixels
from data.loading.shard_reading import eval_samples
from data.loading.tokenizer import get_tokenizer


def keep(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """A text is kept when the filter's match probability is at least the threshold."""
    return scores >= threshold


@torch.no_grad()
def match_probability(model, image_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.itm_logits(image_tokens, text).float(), dim=1)[:, 1]


def _batches(urls, batch_size):
    items = []
    for s in eval_samples(urls):
        items.append(s)
        if len(items) == batch_size:
            yield items
            items = []
    if items:
        yield items


@torch.no_grad()
def capfilt(model, urls: list[str], out_root: str, cfg, seed: int = 0) -> dict:
    """Bootstrap the samples of `urls` into shards under `out_root`; returns the counts and the
    new shards' manifest entries."""
    from data.writing.sharder import write_ready_shard

    tok = get_tokenizer(model.cfg.context_length)
    g = torch.Generator().manual_seed(seed)
    counts = {
        "images": 0,
        "images_kept": 0,
        "original_kept": 0,
        "original_dropped": 0,
        "synthetic_kept": 0,
        "synthetic_dropped": 0,
    }
    shards, pending, examples = [], [], []  # type: list[dict], list[dict], list[dict]
    size = model.cfg.image_size
    for items in _batches(urls, cfg.batch_size):
        images = torch.from_numpy(np.stack([eval_pixels(s["jpg"], size) for s in items]))
        tokens = model.image_tokens(images)
        synthetic = [tok.decode(ids) for ids in model.generate(images, tok.eot, top_p=cfg.top_p, generator=g)]
        originals = [s["caption"] or "" for s in items]
        p_orig = match_probability(model, tokens, torch.from_numpy(tok(originals)))
        p_syn = match_probability(model, tokens, torch.from_numpy(tok(synthetic)))
        k_orig, k_syn = keep(p_orig, cfg.threshold), keep(p_syn, cfg.threshold)
        for s, orig, syn, po, ps, ko, ks in zip(
            items, originals, synthetic, p_orig.tolist(), p_syn.tolist(), k_orig.tolist(), k_syn.tolist()
        ):
            counts["images"] += 1
            counts["original_kept" if ko else "original_dropped"] += 1
            counts["synthetic_kept" if ks else "synthetic_dropped"] += 1
            texts = ([orig] if ko else []) + ([syn] if ks and syn and syn != orig else [])
            if len(examples) < 20:
                examples.append(
                    {
                        "key": s["key"],
                        "original": orig,
                        "original_score": round(po, 4),
                        "synthetic": syn,
                        "synthetic_score": round(ps, 4),
                        "kept": texts,
                    }
                )
            if not texts:
                continue
            counts["images_kept"] += 1
            meta = {k: v for k, v in s["meta"].items() if k != "alt_captions"}
            meta.update(
                alt_captions=texts[1:],
                capfilt={"original_score": round(po, 4), "synthetic": syn, "synthetic_score": round(ps, 4)},
            )
            pending.append({"__key__": s["key"], "jpg": s["jpg"], "txt": texts[0], "json": meta})
            if len(pending) == cfg.shard_samples:
                shards.append(write_ready_shard(out_root, f"train-{len(shards):06d}", pending))
                pending = []
    if pending:
        shards.append(write_ready_shard(out_root, f"train-{len(shards):06d}", pending))
    return {"counts": counts, "shards": shards, "examples": examples}
