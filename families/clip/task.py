"""CLIP's training task: the symmetric InfoNCE of a batch, exact across ranks, and the logit scale
clamped in place to [0, ln 100] after every optimizer step (temperature >= 1/100, as open_clip)."""

from __future__ import annotations

import math

from families.clip import hf, openclip
from families.clip.loss import clip_loss
from training.checkpoint.model_file import split_init_from
from training.tasks import Task

LOGIT_SCALE_MAX = math.log(100.0)


class ClipTask(Task):
    def __init__(self, config):
        super().__init__(config)
        io = self._library()
        for key, message in io.checkpoint_problems(self._path(), self.mcfg) if io else []:
            raise ValueError(f"{key}: {message}")  # on the driver, before any worker starts

    def _library(self):
        """The module that reads `init_from`'s format: hf:<dir> or open_clip:<dir> (None: a model.pt)."""
        prefix = split_init_from(self.init_from)[0]
        if prefix == "hf":
            return hf
        if prefix == "open_clip":
            return openclip
        return None

    def _path(self) -> str:
        return split_init_from(self.init_from)[1]

    def start(self, model, encoder_only=False):
        """`init_from` may also be `hf:<dir>` (a transformers CLIPModel folder, families/clip/hf.py) or
        `open_clip:<dir>` (an open_clip local-dir folder, families/clip/openclip.py)."""
        io = self._library()
        if io is None:
            return super().start(model, encoder_only)
        _, weights = io.import_checkpoint(self._path(), self.mcfg)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        extra = set(missing) - {
            "logit_bias"
        }  # a logit bias (a sigmoid loss's) no CLIP checkpoint has: it starts at init_bias
        if extra or unexpected:
            raise ValueError(
                f"train.init_from {self.init_from}: weights missing {sorted(extra)}, "
                f"not in this model {sorted(unexpected)}"
            )
        return model

    def loader_fields(self) -> dict:
        return {"context_length": self.mcfg.context_length}

    def loss(self, strategy, batch, device):
        img_emb, txt_emb, scale = strategy.forward(batch["image"].to(device), batch["text"].to(device))
        loss = clip_loss(img_emb.float(), txt_emb.float(), scale.float())
        return loss, {"temperature": 1.0 / scale.detach()}

    def after_step(self, strategy):
        strategy.clamp_("logit_scale", 0.0, LOGIT_SCALE_MAX)  # temperature >= 1/100, as open_clip
