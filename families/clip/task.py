"""CLIP's training task: the symmetric InfoNCE of a batch, exact across ranks, and the logit scale
clamped in place to [0, ln 100] after every optimizer step (temperature >= 1/100, as open_clip)."""
from __future__ import annotations

import math

from families.clip.loss import clip_loss
from training.tasks import Task

LOGIT_SCALE_MAX = math.log(100.0)


class ClipTask(Task):
    def loader_fields(self) -> dict:
        return {"context_length": self.mcfg.context_length}

    def loss(self, strategy, batch, device):
        img_emb, txt_emb, scale = strategy.forward(batch["image"].to(device), batch["text"].to(device))
        loss = clip_loss(img_emb.float(), txt_emb.float(), scale.float())
        return loss, {"temperature": 1.0 / float(scale.detach())}

    def after_step(self, strategy):
        strategy.clamp_("logit_scale", 0.0, LOGIT_SCALE_MAX)   # temperature >= 1/100, as open_clip
