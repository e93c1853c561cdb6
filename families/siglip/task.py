"""Training SigLIP: CLIP's task (batches, the logit-scale clamp after each step) with the sigmoid
loss. Zero-shot and retrieval evaluation are CLIP's: the same encoders and embedding space."""

from __future__ import annotations

from families.clip.task import ClipTask
from families.siglip.loss import siglip_loss


class SigLipTask(ClipTask):
    def build(self):
        return self.mcfg.build()

    def loss(self, strategy, batch, device):
        img, txt, scale, bias = strategy.forward(batch["image"].to(device), batch["text"].to(device))
        loss = siglip_loss(img.float(), txt.float(), scale.float(), bias.float())
        return loss, {"temperature": 1.0 / scale.detach(), "bias": bias.detach()}
