"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022) and the
classifier its encoder is fine-tuned into.

MAE: each image is cut into patches; a random 75% (per sample, `argsort` of uniform noise) are
dropped, the shared ViT encodes only the visible 25% (so its cost scales with the visible patches),
a light decoder of its own width and depth fills mask tokens back in at their positions and
predicts every patch's pixels; the loss is the mean squared error on the masked patches only,
optionally against per-patch normalised pixels (`norm_pix_loss`). Position embeddings are fixed
2-D sine-cosine in encoder and decoder.
"""

from __future__ import annotations

import torch
from torch import nn

from models.transformer import Transformer, init_weights
from models.vit import VisionTransformer, sincos_2d

MAE_EPS = 1e-6  # every LayerNorm of MAE's code (and of timm's ViTs), where CLIP's use 1e-5


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order, pixels (row, col, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    b, n, _ = patches.shape
    g = int(n**0.5)
    x = patches.reshape(b, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, g * p, g * p)


def random_masking(b: int, n: int, mask_ratio: float, device, generator=None):
    """(ids_keep [B, n_keep], mask [B, N] with 1 = masked, ids_restore [B, N]): a uniformly random
    subset of n_keep = round(N * (1 - ratio)) patches per sample, kept in shuffled order."""
    n_keep = max(1, int(round(n * (1 - mask_ratio))))
    noise = torch.rand(b, n, device=device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(b, n, device=device)
    mask[:, :n_keep] = 0
    return ids_shuffle[:, :n_keep], mask.gather(1, ids_restore), ids_restore


class MAE(nn.Module):
    decoder_pos_embed: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(
            cfg.image_size,
            cfg.patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            cfg.mlp_ratio,
            pos_embed="sincos",
            ln_pre=False,
            eps=MAE_EPS,
        )
        n = self.encoder.num_patches
        self.decoder_embed = nn.Linear(cfg.vision_width, cfg.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_width))
        pos = torch.cat([torch.zeros(1, cfg.decoder_width), sincos_2d(cfg.decoder_width, self.encoder.grid)])
        self.register_buffer("decoder_pos_embed", pos[None], persistent=False)
        self.decoder = Transformer(cfg.decoder_width, cfg.decoder_layers, cfg.decoder_heads, cfg.mlp_ratio, MAE_EPS)
        self.decoder_norm = nn.LayerNorm(cfg.decoder_width, eps=MAE_EPS)
        self.decoder_pred = nn.Linear(cfg.decoder_width, cfg.patch_size**2 * 3)
        self.num_patches = n
        self.apply(_init_mae)
        w = self.encoder.patch_embed.weight.data  # as a linear layer, as MAE does
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.transformer.grad_checkpointing = enabled
        self.decoder.grad_checkpointing = enabled

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float, generator=None):
        x = self.encoder.tokens(images)
        ids_keep, mask, ids_restore = random_masking(x.shape[0], x.shape[1], mask_ratio, x.device, generator)
        x = x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.encoder.encode(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        masked = self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)  # visible first, then mask tokens
        patches = patches.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed.to(x.dtype)
        x = self.decoder_norm(self.decoder(x))
        return self.decoder_pred(x)[:, 1:]  # drop the class token

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.cfg.patch_size)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None, generator=None):
        """(loss on masked patches, predicted patches [B, N, p*p*3], mask [B, N], 1 = masked)."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(images, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(images, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction) as images: visible patches are the original ones,
        masked patches the prediction (de-normalised with the original patch's statistics when
        the model predicts normalised pixels); masked patches of the input are zero."""
        _, pred, mask = self(images, generator=generator)
        target = patchify(images, self.cfg.patch_size)
        pred = pred.float()
        if self.cfg.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = mask.unsqueeze(-1)
        p = self.cfg.patch_size
        return unpatchify(target * (1 - m), p), unpatchify(target * (1 - m) + pred * m, p)


def _init_mae(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init_weights(module)


class ViTClassifier(nn.Module):
    """The ViT (same parameter names as MAE's `encoder`) with a head on the mean of its patch
    tokens, as MAE fine-tunes with `global_pool`."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = VisionTransformer(
            cfg.image_size,
            cfg.patch_size,
            cfg.vision_width,
            cfg.vision_layers,
            cfg.vision_heads,
            cfg.mlp_ratio,
            pos_embed=cfg.pos_embed,
            ln_pre=cfg.ln_pre,
            eps=MAE_EPS,
        )
        self.fc_norm = nn.LayerNorm(cfg.vision_width, eps=MAE_EPS)
        self.head = nn.Linear(cfg.vision_width, cfg.num_classes)
        self.apply(_init_mae)
        w = self.encoder.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # a near-zero head, as MAE fine-tuning

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.transformer.grad_checkpointing = enabled

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(self.encoder(images)[:, 1:].mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def load_encoder(self, state: dict) -> None:
        """Copy `encoder.*` weights of a pretrained MAE (its decoder is dropped)."""
        enc = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        missing, unexpected = self.encoder.load_state_dict(enc, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"pretrained encoder does not fit the classifier: missing {missing}, unexpected {unexpected}"
            )

    def param_groups(self, weight_decay: float, layer_decay: float, lr: float) -> list[dict]:
        """Layer-wise lr decay: depth d of L+1 gets lr * layer_decay^(L+1-d); no weight decay on
        biases, norms and tokens."""
        top = len(self.encoder.transformer.blocks) + 1
        groups: dict[tuple, dict] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            depth = self.encoder.layer_id(name[len("encoder.") :]) if name.startswith("encoder.") else top
            wd = 0.0 if p.ndim < 2 or "token" in name else weight_decay
            g = groups.setdefault(
                (depth, wd), {"params": [], "weight_decay": wd, "lr": lr * layer_decay ** (top - depth)}
            )
            g["params"].append(p)
        return list(groups.values())
