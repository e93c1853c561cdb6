"""Held-out evaluation of the masked-diffusion LM next to an autoregressive baseline and a unigram.

- Likelihood bound (LLaDA's estimator): for a sequence of L tokens, draw l ~ U{1..L}, mask l
  positions uniformly at random; -log p(x) <= E[(L / l) * sum over masked of -log p(x_i | x_masked)].
  Averaged over `mc` draws per sequence; `bound_perplexity` = exp(bound per token).
- Masked-token accuracy: argmax predictions at the masked positions of those draws, and at 15%.
- AR baseline: exact perplexity (next-token, positions 2..L); unigram: add-one train counts.
- SFT: the same bound on each held-out response given its prompt (only the response is masked),
  per pair, for the pretrained and the fine-tuned model.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from data.loading.shard_reading import token_batches
from families.mdlm.loss import response_mask


def _limited(urls: list[str], batch_size: int, limit: int):
    seen = 0
    for batch in token_batches(urls, batch_size):
        if limit and seen >= limit:
            return
        if limit and seen + len(batch["tokens"]) > limit:
            keep = limit - seen
            batch = {k: v[:keep] for k, v in batch.items()}
        seen += len(batch["tokens"])
        yield batch


@torch.no_grad()
def bound_draws(
    model,
    tokens: torch.Tensor,
    mask_id: int,
    mc: int,
    generator: torch.Generator,
    maskable: Optional[torch.Tensor] = None,
):
    """Per sequence: the NLL bound (nats, mean over `mc` draws), masked hits and masked count.
    `maskable` [B, L] restricts masking to those positions (SFT: the response)."""
    b, n = tokens.shape
    allowed = torch.ones_like(tokens, dtype=torch.bool) if maskable is None else maskable
    size = allowed.sum(1)  # positions that may be masked
    nll = torch.zeros(b, dtype=torch.float64)
    hits = count = 0
    for _ in range(mc):
        n_masked = (torch.rand(b, generator=generator) * size).long().clamp(max=size - 1) + 1  # U{1..size}
        keys = torch.rand(b, n, generator=generator).masked_fill(~allowed, 2.0)
        ranks = keys.argsort(1).argsort(1)  # a random order of the allowed
        masked = ranks < n_masked[:, None]
        logits = model(torch.where(masked, torch.full_like(tokens, mask_id), tokens)).float()
        logp = F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
        nll += (-(logp * masked).sum(1) * size / n_masked).double()
        hits += int((logits.argmax(-1) == tokens)[masked].sum())
        count += int(masked.sum())
    return nll / mc, hits, count


@torch.no_grad()
def masked_accuracy_at(model, tokens: torch.Tensor, mask_id: int, ratio: float, generator) -> tuple[int, int]:
    masked = torch.rand(tokens.shape, generator=generator) < ratio
    logits = model(torch.where(masked, torch.full_like(tokens, mask_id), tokens))
    return int((logits.argmax(-1) == tokens)[masked].sum()), int(masked.sum())


def diffusion_metrics(
    model, urls: list[str], mask_id: int, mc: int, limit: int, batch_size: int = 64, seed: int = 0
) -> dict:
    g = torch.Generator().manual_seed(seed)
    nll: float = 0
    tokens = hits = count = hits15 = count15 = 0
    for batch in _limited(urls, batch_size, limit):
        x = batch["tokens"]
        b_nll, h, c = bound_draws(model, x, mask_id, mc, g)
        nll += float(b_nll.sum())
        tokens += x.numel()
        hits, count = hits + h, count + c
        h, c = masked_accuracy_at(model, x, mask_id, 0.15, g)
        hits15, count15 = hits15 + h, count15 + c
    per_token = nll / tokens
    return {
        "bound_nll_per_token": per_token,
        "bound_perplexity": math.exp(per_token),
        "masked_accuracy": hits / max(count, 1),
        "masked_accuracy_15": hits15 / max(count15, 1),
        "eval_tokens": tokens,
    }


@torch.no_grad()
def ar_perplexity(model, urls: list[str], limit: int, batch_size: int = 64) -> dict:
    nll: float = 0
    n = 0
    for batch in _limited(urls, batch_size, limit):
        x = batch["tokens"]
        logits = model(x).float()
        nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        n += x[:, 1:].numel()
    return {"ar_nll_per_token": nll / n, "ar_perplexity": math.exp(nll / n)}


def unigram_perplexity(counts: list[int], urls: list[str], limit: int) -> dict:
    c = np.asarray(counts, dtype=np.float64) + 1.0  # add-one smoothing
    logp = np.log(c / c.sum())
    nll: float = 0
    n = 0
    for batch in _limited(urls, 256, limit):
        x = batch["tokens"].numpy()
        nll -= float(logp[x].sum())
        n += x.size
    return {"unigram_nll_per_token": nll / n, "unigram_perplexity": math.exp(nll / n)}


def sft_response_bound(
    model, urls: list[str], mask_id: int, mc: int, limit: int, batch_size: int = 64, seed: int = 0
) -> float:
    """Mean over held-out pairs of the NLL bound (nats) of the response (EOS padding included)
    given the prompt."""

    g = torch.Generator().manual_seed(seed)
    total = pairs = 0.0
    for batch in _limited(urls, batch_size, limit):
        x = batch["tokens"]
        nll, _, _ = bound_draws(model, x, mask_id, mc, g, response_mask(batch["prompt_len"], x.shape[1]))
        total += float(nll.sum())
        pairs += len(x)
    return total / max(pairs, 1)
