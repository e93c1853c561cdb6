"""BLIP evaluation on the held-out split.

- retrieval: image->text and text->image R@1/5/10 ranked by ITC similarity, then with the top k
  of each query re-ranked by the ITM head (score = ITM match logit + ITC similarity, as BLIP's
  evaluation does; candidates outside the top k keep their order below).
- captioning: greedy captions of the held-out images scored against their reference captions
  (the caption and any alt_captions) with BLEU-4 and CIDEr (pycocoevalcap's scorers on lowercased
  word tokens); a table of sample captions.
"""

from __future__ import annotations

import re

import torch

from data.loading.shard_reading import eval_batches
from data.loading.tokenizer import get_tokenizer
from families.clip.evaluate import recall_at_k


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def caption_scores(references: dict[str, list[str]], candidates: dict[str, str]) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    refs = {k: [words(r) for r in v] for k, v in references.items()}
    res = {k: [words(candidates[k]) or "empty"] for k in references}
    bleu, _ = Bleu(4).compute_score(refs, res, verbose=0)
    cider, _ = Cider().compute_score(refs, res)
    return {"bleu4": float(bleu[3]), "bleu1": float(bleu[0]), "cider": float(cider)}


@torch.no_grad()
def rerank(
    model,
    sim: torch.Tensor,
    image_tokens: torch.Tensor,
    text: torch.Tensor,
    k: int,
    image_queries: bool,
    batch: int = 256,
) -> torch.Tensor:
    """sim [queries, candidates] with the top k of each row re-scored by ITM + sim; the others
    are pushed below every re-scored candidate."""
    k = min(k, sim.shape[1])
    out = sim - 1e4
    top = sim.topk(k, dim=1).indices
    rows = torch.arange(sim.shape[0]).repeat_interleave(k)
    cols = top.reshape(-1)
    scores = []
    for i in range(0, len(rows), batch):
        r, c = rows[i : i + batch], cols[i : i + batch]
        img, txt = (image_tokens[r], text[c]) if image_queries else (image_tokens[c], text[r])
        scores.append(model.itm_logits(img, txt)[:, 1].float())
    out[rows, cols] = torch.cat(scores) + sim[rows, cols]
    return out


@torch.no_grad()
def evaluate_blip(model, mcfg, eval_cfg, urls: list[str]) -> tuple[dict, list[dict]]:
    tok = get_tokenizer(mcfg.context_length)
    token_parts: list[torch.Tensor] = []
    img_parts: list[torch.Tensor] = []
    txt_parts: list[torch.Tensor] = []
    text_parts: list[torch.Tensor] = []
    items: list[dict] = []
    for images, batch in eval_batches(urls, eval_cfg.batch_size, mcfg.image_size):
        t = model.image_tokens(images)
        text = torch.from_numpy(tok([s["caption"] for s in batch]))
        token_parts.append(t)
        img_parts.append(model.image_embed(t))
        txt_parts.append(model.encode_text(text))
        text_parts.append(text)
        items += batch
    if not items:
        raise ValueError("the held-out split is empty: raise data.holdout_fraction")
    tokens, img_emb, txt_emb = torch.cat(token_parts), torch.cat(img_parts), torch.cat(txt_parts)
    texts = torch.cat(text_parts)
    n = len(items)
    sim = img_emb @ txt_emb.T
    m = {"eval_samples": n, **{f"retrieval_chance_R{k}": min(1.0, k / n) for k in (1, 5, 10)}}
    m.update({f"itc_i2t_{k}": v for k, v in recall_at_k(sim).items()})
    m.update({f"itc_t2i_{k}": v for k, v in recall_at_k(sim.T).items()})
    k = eval_cfg.rerank_k
    m.update({f"itm_i2t_{key}": v for key, v in recall_at_k(rerank(model, sim, tokens, texts, k, True)).items()})
    m.update({f"itm_t2i_{key}": v for key, v in recall_at_k(rerank(model, sim.T, tokens, texts, k, False)).items()})

    captions = {}
    for i in range(0, n, eval_cfg.batch_size):
        ids = model.generate_from_tokens(tokens[i : i + eval_cfg.batch_size], tok.eot)
        for it, c in zip(items[i : i + eval_cfg.batch_size], ids):
            captions[it["key"]] = tok.decode(c)
    refs = {it["key"]: [it["caption"]] + list(it["meta"].get("alt_captions") or []) for it in items}
    m.update(caption_scores(refs, captions))
    rows = [
        {"key": it["key"], "generated": captions[it["key"]], "reference": it["caption"]}
        for it in items[: eval_cfg.caption_samples]
    ]
    return m, rows
