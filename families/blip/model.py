"""BLIP (Li et al., "Bootstrapping Language-Image Pre-training", 2022) on the shared ViT.

- image encoder: the shared ViT; its class token gives the image embedding.
- text transformer: per layer a bidirectional self-attention (encoder), a causal self-attention
  (decoder), and a cross-attention to the image tokens and an MLP that encoder and decoder share
  (BLIP shares all but the self-attention). Three modes:
  `text` (unimodal encoder: ITC), `match` (image-grounded encoder: ITM, first token [ENC]),
  `caption` (image-grounded decoder: LM, first token [DEC]).
- ITC with momentum encoders and feature queues (momentum distillation, ALBEF), ITM with hard
  negatives drawn from the contrastive similarities, LM with label smoothing.
The language-model head is tied to the token embeddings and, by default, covers only the tokens
of the training captions (`lm_vocab`, set by the pipeline): CLIP's BPE has 49,408 tokens and a
full softmax would dominate a small model's cost.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from families.blip.loss import blip_losses
from models.transformer import Attention, attention, init_weights
from models.vit import VisionTransformer


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(image).view(b, image.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class PaddedAttention(Attention):
    def forward(self, x: torch.Tensor, causal: bool = False, pad: torch.Tensor | None = None):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None
        if pad is not None and not causal:  # keys that are padding are never attended to
            mask = ~pad[:, None, None, :]
        y = attention(q, k, v, causal, mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class TextLayer(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_enc, self.sa_enc = nn.LayerNorm(width), PaddedAttention(width, heads)
        self.ln_dec, self.sa_dec = nn.LayerNorm(width), PaddedAttention(width, heads)
        self.ln_ca, self.ca = nn.LayerNorm(width), CrossAttention(width, heads)
        self.ln_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, mode: str, pad=None, image=None):
        if mode == "caption":
            x = x + self.sa_dec(self.ln_dec(x), causal=True)
        else:
            x = x + self.sa_enc(self.ln_enc(x), pad=pad)
        if mode != "text":
            x = x + self.ca(self.ln_ca(x), image)
        return x + self.mlp(self.ln_mlp(x))


class TextTransformer(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size + 2, width)  # + [ENC], [DEC]
        self.enc_token, self.dec_token = vocab_size, vocab_size + 1
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.layers = nn.ModuleList(TextLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.grad_checkpointing = False

    def forward(self, text: torch.Tensor, mode: str, image: torch.Tensor | None = None) -> torch.Tensor:
        """Token features [B, L, width]; `text` is `<start> tokens <end>` padded with 0."""
        # padding: the positions after the end token (the largest id of the tokenizer)
        pad = torch.arange(text.shape[1], device=text.device) > text.argmax(dim=1, keepdim=True)
        if mode == "match":
            text = torch.cat([torch.full_like(text[:, :1], self.enc_token), text[:, 1:]], dim=1)
        elif mode == "caption":
            text = torch.cat([torch.full_like(text[:, :1], self.dec_token), text[:, 1:]], dim=1)
        x = self.token_embed(text) + self.pos_embed[:, : text.shape[1]]
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, mode, pad, image, use_reentrant=False)
            else:
                x = layer(x, mode, pad, image)
        return self.ln_final(x)


class BLIP(nn.Module):
    # buffers (register_buffer in __init__)
    lm_vocab: torch.Tensor
    lm_index: torch.Tensor
    image_queue: torch.Tensor
    text_queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, cfg, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(
            cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio
        )
        self.text = TextTransformer(
            vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio
        )
        self.image_to_text = nn.Linear(cfg.vision_width, cfg.text_width)  # image tokens for cross-attention
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.itm_head = nn.Linear(cfg.text_width, 2)
        self.apply(init_weights)
        nn.init.normal_(self.text.token_embed.weight, std=0.02)
        nn.init.normal_(self.text.pos_embed, std=0.01)
        self.temp = nn.Parameter(torch.full((1,), cfg.init_temperature))
        vocab = torch.tensor(cfg.lm_vocab or range(vocab_size), dtype=torch.long)
        self.register_buffer("lm_vocab", vocab, persistent=False)
        index = torch.full((vocab_size + 2,), -100, dtype=torch.long)  # token id -> LM class
        index[vocab] = torch.arange(len(vocab))
        self.register_buffer("lm_index", index, persistent=False)
        # momentum (EMA) copies of the unimodal encoders and projections, and the feature queues
        self.momentum_parts = ["visual", "image_proj", "text", "text_proj"]
        for name in self.momentum_parts:
            m = copy.deepcopy(getattr(self, name))
            for p in m.parameters():
                p.requires_grad_(False)
            setattr(self, f"m_{name}", m)
        q = cfg.queue_size
        self.register_buffer("image_queue", F.normalize(torch.randn(cfg.embed_dim, q), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.embed_dim, q), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enabled
        self.text.grad_checkpointing = enabled

    # --- encoders -------------------------------------------------------------------------
    def image_tokens(self, images):
        return self.visual(images)

    def image_embed(self, tokens, proj=None):
        return F.normalize((proj or self.image_proj)(tokens[:, 0]), dim=-1)

    def text_embed(self, text, text_model=None, proj=None):
        h = (text_model or self.text)(text, "text")
        return F.normalize((proj or self.text_proj)(h[:, 0]), dim=-1)

    def encode_image(self, images):
        return self.image_embed(self.image_tokens(images))

    def encode_text(self, text):
        return self.text_embed(text)

    def itm_logits(self, image_tokens, text) -> torch.Tensor:
        h = self.text(text, "match", self.image_to_text(image_tokens))
        return self.itm_head(h[:, 0])

    def lm_logits(self, image_tokens, text) -> torch.Tensor:
        """Logits over `lm_vocab` for the next token at every position: [B, L, |lm_vocab|]."""
        h = self.text(text, "caption", self.image_to_text(image_tokens))
        w = self.text.token_embed.weight[self.lm_vocab]
        return h @ w.T

    @torch.no_grad()
    def generate(
        self, images: torch.Tensor, eot: int, max_len: int | None = None, top_p: float | None = None, generator=None
    ) -> list[list[int]]:
        """Captions as token ids (without start/end): greedy, or nucleus sampling with `top_p`."""
        return self.generate_from_tokens(self.image_tokens(images), eot, max_len, top_p, generator)

    @torch.no_grad()
    def generate_from_tokens(
        self,
        image_tokens: torch.Tensor,
        eot: int,
        max_len: int | None = None,
        top_p: float | None = None,
        generator=None,
    ) -> list[list[int]]:
        img = self.image_to_text(image_tokens)
        b = image_tokens.shape[0]
        steps = (max_len or self.cfg.context_length) - 1
        seq = torch.zeros(b, 1, dtype=torch.long, device=img.device)  # becomes [DEC]
        done = torch.zeros(b, dtype=torch.bool, device=img.device)
        w = self.text.token_embed.weight[self.lm_vocab]
        for _ in range(steps):
            logits = (self.text(seq, "caption", img)[:, -1] @ w.T).float()
            if top_p is None:
                cls = logits.argmax(dim=1)
            else:
                probs = F.softmax(logits, dim=1)
                sorted_p, order = probs.sort(dim=1, descending=True)
                keep = sorted_p.cumsum(dim=1) - sorted_p < top_p  # the smallest nucleus >= top_p
                sorted_p = sorted_p * keep
                cls = order.gather(1, torch.multinomial(sorted_p, 1, generator=generator)).squeeze(1)
            tok = torch.where(done, torch.zeros_like(cls), self.lm_vocab[cls])
            seq = torch.cat([seq, tok[:, None]], dim=1)
            done |= tok == eot
            if done.all():
                break
        out = []
        for row in seq[:, 1:].tolist():
            out.append(row[: row.index(eot)] if eot in row else [t for t in row if t])
        return out

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.cfg.momentum
        for name in self.momentum_parts:
            for p, mp in zip(getattr(self, name).parameters(), getattr(self, f"m_{name}").parameters()):
                mp.mul_(m).add_(p.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> None:
        """Put the (globally gathered) momentum features of a batch into the queues."""
        n, q = image_feats.shape[0], self.image_queue.shape[1]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(n, device=image_feats.device) + ptr) % q
        self.image_queue[:, idx] = image_feats.T.to(self.image_queue.dtype)
        self.text_queue[:, idx] = text_feats.T.to(self.text_queue.dtype)
        self.queue_ptr[0] = (ptr + n) % q

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict:
        """The three losses of a batch (see families/clip/loss.py for the formulas)."""

        return blip_losses(self, images, text)


def init_momentum(model: BLIP) -> None:
    """Momentum copies start equal to the online encoders."""
    for name in model.momentum_parts:
        getattr(model, f"m_{name}").load_state_dict(getattr(model, name).state_dict())
