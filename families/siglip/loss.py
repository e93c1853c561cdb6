"""SigLIP's pairwise sigmoid loss, exact at any world size.

Every (image, text) pair of the global batch is a binary problem: label +1 on the diagonal, -1
elsewhere, logit `scale * <image, text> + bias`. A rank scores its local images against the
gathered texts of all ranks (all_gather with gradient) and divides by its local batch, as
open_clip's `SigLipLoss` does; the mean over ranks is then the single-process loss on the
concatenated batch (summed over pairs, divided by the global batch), and DDP's gradient average
its gradient (the gather's backward sums each rank's share into the texts' owner).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from families.clip.loss import gather_with_grad


def siglip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """image_emb, text_emb: [b, E] normalised (this rank's); logit_scale: the scale itself (exp of
    the parameter); logit_bias: the bias."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    texts = gather_with_grad(text_emb)
    n = image_emb.shape[0]
    logits = logit_scale * image_emb @ texts.T + logit_bias  # [b, B]
    labels = -torch.ones_like(logits)
    labels[torch.arange(n, device=logits.device), torch.arange(n, device=logits.device) + rank * n] = 1.0
    return -F.logsigmoid(labels * logits).sum() / n
