"""A transformer over BPE tokens, as a masked-diffusion LM (LLaDA) or an autoregressive baseline.

One network for both objectives: token embeddings, pre-norm blocks with rotary position
embeddings in attention as in LLaDA (models/transformer.py), a final norm and an output head. `objective: diffusion` attends
both ways and is trained to predict masked tokens (families/mdlm/loss.py); `autoregressive`
adds the causal mask and predicts the next token. The `<|mask|>` token is part of the vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from models.transformer import Transformer, init_weights, rotary_tables


class MDLM(nn.Module):
    rope_cos: torch.Tensor  # buffers (register_buffer in __init__)
    rope_sin: torch.Tensor

    def __init__(self, cfg):
        super().__init__()
        if cfg.vocab_size <= 0 or not 0 <= cfg.mask_id < cfg.vocab_size:
            raise ValueError(
                f"model.vocab_size {cfg.vocab_size} / model.mask_id {cfg.mask_id}: set them "
                f"from the tokenizer (the MDLM recipe does this from the shard step)"
            )
        self.cfg = cfg
        self.causal = cfg.objective == "autoregressive"
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.apply(init_weights)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        cos, sin = rotary_tables(cfg.context_length, cfg.width // cfg.heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.grad_checkpointing = enabled

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, L, vocab] for token ids [B, L] (L <= context_length)."""
        n = tokens.shape[1]
        if n > self.cfg.context_length:
            raise ValueError(f"sequence of {n} tokens, longer than model.context_length {self.cfg.context_length}")
        rope = (self.rope_cos[:n], self.rope_sin[:n])
        x = self.transformer(self.tok_embed(tokens), causal=self.causal, rope=rope)
        return self.head(self.ln_f(x))
