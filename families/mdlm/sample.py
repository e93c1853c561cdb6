"""Sampling from a masked-diffusion LM as in LLaDA: semi-autoregressive blocks, low-confidence
remasking; and greedy decoding of the autoregressive baseline.

The answer starts fully masked. Blocks of `block_length` tokens are generated left to right; each
gets `steps / blocks` denoising steps. At each step the model predicts every masked token; of the
current block's masked positions, the `k` whose predictions are most confident are fixed (k spreads
the block's tokens evenly over its steps), the rest stay masked ("low-confidence remasking").
Positions after the current block are never fixed early, so blocks finish in order.
"""

from __future__ import annotations

from typing import Optional

import torch


def transfer_schedule(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] tokens to fix at each step: n // steps each, the remainder on the first steps."""
    base = n_masked[:, None] // steps
    extra = (torch.arange(steps, device=n_masked.device)[None] < (n_masked % steps)[:, None]).long()
    return base + extra


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,
    gen_length: int,
    block_length: int,
    steps: int,
    mask_id: int,
    temperature: float = 0.0,
    generator: Optional[torch.Generator] = None,
    trace: Optional[list] = None,
) -> torch.Tensor:
    """[B, P + gen_length] token ids: `prompt` [B, P] followed by the generated tokens; `trace`
    (a list) receives the sequence after every step."""
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    blocks = gen_length // block_length
    if steps % blocks:
        raise ValueError(f"steps {steps} is not a multiple of the {blocks} blocks")
    per_block = steps // blocks
    b, p = prompt.shape
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :p] = prompt
    rows = torch.arange(b, device=x.device)
    for blk in range(blocks):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length
        schedule = transfer_schedule((x[:, lo:hi] == mask_id).sum(1), per_block)
        for i in range(per_block):
            masked = x == mask_id
            logits = model(x).float()
            logits[..., mask_id] = -torch.inf  # never predict the mask itself
            if temperature > 0:  # Gumbel-max: a sample of softmax(logits / T)
                u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1)
                pred = (logits / temperature - torch.log(-torch.log(u))).argmax(-1)
            else:
                pred = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, pred[..., None]).squeeze(-1)
            eligible = masked.clone()
            eligible[:, hi:] = False  # later blocks wait their turn
            conf = torch.where(eligible, conf, torch.full_like(conf, -torch.inf))
            k_max = int(schedule[:, i].max())
            if k_max:
                top = conf.topk(k_max, dim=1).indices  # most confident first
                take = torch.arange(k_max, device=x.device)[None] < schedule[:, i][:, None]
                r, c = rows[:, None].expand_as(top)[take], top[take]
                x[r, c] = pred[r, c]
            if trace is not None:
                trace.append(x.clone())
    return x


@torch.no_grad()
def generate_ar(model, prompt: torch.Tensor, gen_length: int) -> torch.Tensor:
    """Greedy continuation by the autoregressive baseline."""
    x = prompt.clone()
    for _ in range(gen_length):
        nxt = model(x[:, -model.cfg.context_length :]).float()[:, -1]
        nxt[:, model.cfg.mask_id] = -torch.inf
        x = torch.cat([x, nxt.argmax(-1, keepdim=True)], 1)
    return x
