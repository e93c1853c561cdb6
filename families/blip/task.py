"""BLIP's training task (ITC + ITM + LM; the momentum encoders and the temperature after each
step)."""

from __future__ import annotations

from families.blip.model import init_momentum
from training.tasks import Task


class BlipTask(Task):
    """ITC + ITM + LM; after each optimizer step the momentum encoders follow (EMA) and the
    temperature is kept in [0.001, 0.5], as in BLIP."""

    def __init__(self, config):
        super().__init__(config)
        for key, message, *_ in self.mcfg.train_problems(config.train):  # checked at load time too
            raise ValueError(f"{key}: {message}")

    def build(self):
        model = self.mcfg.build()
        init_momentum(model)
        # continued pretraining (CapFilt's second round)
        return self.start(model)

    def loader_fields(self):
        return {"context_length": self.mcfg.context_length}

    def loss(self, strategy, batch, device):
        out = strategy.forward(batch["image"].to(device), batch["text"].to(device))
        return out["loss"], {k: out[k].detach() for k in ("itc", "itm", "lm")}

    def after_step(self, strategy):
        strategy.module.momentum_update()
        strategy.clamp_("temp", 0.001, 0.5)
