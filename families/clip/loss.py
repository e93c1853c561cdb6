"""Symmetric InfoNCE that is exact at any world size.

Each rank scores its local image/text embeddings against the *gathered* embeddings of all ranks
(all_gather with gradient), with targets offset by rank * local_batch. The mean of the per-rank
losses is the single-process loss on the concatenated batch, and because the gather's backward
sums every rank's gradient into the owner of each embedding, DDP's gradient average equals the
single-process gradient (tests/test_clip_loss.py checks both on 2 gloo ranks). Memory is linear in
the global batch: [local, global] logits per rank, never [global, global].
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.collectives import gather_with_grad


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    all_images, all_texts = gather_with_grad(image_emb), gather_with_grad(text_emb)
    n = image_emb.shape[0]
    targets = torch.arange(n, device=image_emb.device) + rank * n
    logits_img = logit_scale * image_emb @ all_texts.T
    logits_txt = logit_scale * text_emb @ all_images.T
    return 0.5 * (F.cross_entropy(logits_img, targets) + F.cross_entropy(logits_txt, targets))
