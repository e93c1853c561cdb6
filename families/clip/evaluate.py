"""CLIP evaluation on the held-out split: zero-shot classification and image<->text retrieval.

- zero-shot: the classes are the distinct values of a metadata field (e.g. the emoji subgroup) of
  the held-out images; each class is embedded through prompt templates (averaged, normalised) and
  every image is assigned the nearest class. Chance is 1 / number of classes; `zeroshot_balanced`
  (mean per-class recall) is not inflated by a dominant class, `zeroshot_majority` is the share a
  constant guess of the largest class would get.
- retrieval: each held-out image against all held-out captions and back; R@K (metric `R<K>`) is the share of
  queries whose own pair ranks in the top K (ties count against us). Chance R@K is K / N.
"""

from __future__ import annotations

from collections import Counter

import torch

from data.loading.shard_reading import eval_batches
from data.loading.tokenizer import get_tokenizer


def format_label(label: str, fmt: str) -> str:
    return label.replace("-", " ").replace("_", " ") if fmt == "hyphen_to_space" else label


@torch.no_grad()
def embed_eval_split(model, mcfg, urls: list[str], batch_size: int, total: int | None = None):
    tok = get_tokenizer(mcfg.context_length)
    img_embs, txt_embs, items = [], [], []
    for images, batch in eval_batches(urls, batch_size, mcfg.image_size, total):
        img_embs.append(model.encode_image(images))
        txt_embs.append(model.encode_text(torch.from_numpy(tok([s["caption"] for s in batch]))))
        items += [{"key": s["key"], "caption": s["caption"], "meta": s["meta"]} for s in batch]
    if not items:
        raise ValueError("the held-out split is empty: raise data.holdout_fraction")
    return torch.cat(img_embs), torch.cat(txt_embs), items


def recall_at_k(sim: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """sim[i, j]: query i vs candidate j, the right candidate of query i is j == i."""
    correct = sim.diagonal().unsqueeze(1)
    rank = (sim >= correct).sum(dim=1) - 1  # candidates scoring at least as high, ties included
    return {f"R{k}": (rank < k).float().mean().item() for k in ks}


@torch.no_grad()
def zero_shot(model, mcfg, img_emb: torch.Tensor, labels: list[str], templates, label_format: str):
    tok = get_tokenizer(mcfg.context_length)
    classes = sorted(set(labels))
    weights = []
    for c in classes:
        prompts = [t.format(format_label(c, label_format)) for t in templates]
        e = model.encode_text(torch.from_numpy(tok(prompts))).mean(dim=0)
        weights.append(e / e.norm())
    pred = (img_emb @ torch.stack(weights).T).argmax(dim=1)
    target = torch.tensor([classes.index(lab) for lab in labels])
    hit = (pred == target).float()
    per_class = [hit[target == i].mean().item() for i in range(len(classes))]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    return {
        "zeroshot_top1": hit.mean().item(),
        "zeroshot_balanced": sum(per_class) / len(per_class),
        "zeroshot_classes": len(classes),
        "zeroshot_chance": 1 / len(classes),
        "zeroshot_majority": majority,
    }


def evaluate_clip(model, mcfg, eval_cfg, urls: list[str], total: int | None = None) -> dict:
    """Zero-shot and retrieval on the held-out shards `urls` (`total` samples: the progress bar's)."""
    img, txt, items = embed_eval_split(model, mcfg, urls, eval_cfg.batch_size, total)
    n = len(items)
    sim = img @ txt.T
    metrics: dict[str, float] = {"eval_samples": n}
    metrics.update({f"i2t_{k}": v for k, v in recall_at_k(sim).items()})
    metrics.update({f"t2i_{k}": v for k, v in recall_at_k(sim.T).items()})
    metrics.update({f"retrieval_chance_R{k}": min(1.0, k / n) for k in (1, 5, 10)})
    labels = [str(it["meta"].get(eval_cfg.label_field, "")) for it in items]
    if all(labels):
        metrics.update(zero_shot(model, mcfg, img, labels, eval_cfg.templates, eval_cfg.label_format))
    else:
        missing = sum(1 for lab in labels if not lab)
        print(
            f"[eval] zero-shot skipped: {missing}/{n} held-out samples lack the metadata field "
            f"'{eval_cfg.label_field}' (eval.label_field)"
        )
    return metrics
