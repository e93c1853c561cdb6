"""Masked-diffusion LM objectives (LLaDA, Nie et al. 2025, and its guidelines) and the AR baseline.

Forward process: per sequence t ~ U(0, 1), each token is masked independently with probability
p_mask = (1 - eps) t + eps. Pretraining loss: cross-entropy on the masked positions, each weighted
by 1 / p_mask, summed and divided by the number of tokens in the batch (B x L): an upper bound on
the negative log-likelihood per token. SFT: the prompt is never masked; each sequence's loss is
divided by its response length (everything after the prompt, EOS padding included), then averaged
over the batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def forward_process(
    tokens: torch.Tensor,
    mask_id: int,
    eps: float = 1e-3,
    maskable: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
):
    """(noisy tokens, masked [B, L] bool, p_mask [B, L])."""
    b, n = tokens.shape
    t = torch.rand(b, device=tokens.device, generator=generator)
    p_mask = ((1 - eps) * t + eps)[:, None].expand(b, n)
    masked = torch.rand(b, n, device=tokens.device, generator=generator) < p_mask
    if maskable is not None:
        masked = masked & maskable
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked, p_mask


def diffusion_loss(
    logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor
) -> torch.Tensor:
    ce = F.cross_entropy(logits[masked].float(), tokens[masked], reduction="none")
    return (ce / p_mask[masked]).sum() / tokens.numel()


def sft_loss(
    logits: torch.Tensor, tokens: torch.Tensor, masked: torch.Tensor, p_mask: torch.Tensor, prompt_len: torch.Tensor
) -> torch.Tensor:
    answer_len = (tokens.shape[1] - prompt_len).clamp(min=1).float()[:, None].expand_as(p_mask)
    ce = F.cross_entropy(logits[masked].float(), tokens[masked], reduction="none")
    return (ce / p_mask[masked] / answer_len[masked]).sum() / tokens.shape[0]


def ar_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (positions 2..L predicted from their prefix)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())


def response_mask(prompt_len: torch.Tensor, length: int) -> torch.Tensor:
    """[B, L] True after each sequence's prompt."""
    return torch.arange(length, device=prompt_len.device)[None] >= prompt_len[:, None]
