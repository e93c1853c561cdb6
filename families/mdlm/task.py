"""The masked-diffusion language model's task: pretraining, SFT, or the autoregressive baseline."""

from __future__ import annotations

import torch

from families.mdlm.loss import ar_loss, diffusion_loss, forward_process, response_mask, sft_loss
from training.tasks import Task


class MDLMTask(Task):
    """Masked-diffusion pretraining (LLaDA), its SFT (`task.sft`: batches carry `prompt_len`;
    the prompt is never masked), or the autoregressive baseline (`model.objective`); a model
    may start from an exported one (`task.init_from`)."""

    def __init__(self, config):
        super().__init__(config)
        self.sft = bool(self.options.sft)
        self.sample_tokens = self.options.seq_len or self.mcfg.context_length
        if self.sft and self.mcfg.objective != "diffusion":
            raise ValueError("task.sft: SFT is for the masked-diffusion objective (model.objective diffusion)")

    def loader_fields(self):
        return {"tokens": True, "prompt_len": self.sft}

    def loss(self, strategy, batch, device):
        m = self.mcfg
        tokens = batch["tokens"].to(device)
        if m.objective == "autoregressive":
            loss = ar_loss(strategy.forward(tokens), tokens)
            return loss, {"perplexity": torch.exp(loss.detach())}
        maskable = None
        if self.sft:
            maskable = response_mask(batch["prompt_len"].to(device), tokens.shape[1])
        elif m.random_length_prob and torch.rand(()).item() < m.random_length_prob:
            tokens = tokens[:, : int(torch.randint(1, tokens.shape[1] + 1, ()))]  # LLaDA: some random lengths
        noisy, masked, p_mask = forward_process(tokens, m.mask_id, m.eps, maskable)
        logits = strategy.forward(noisy)
        if self.sft:
            loss = sft_loss(logits, tokens, masked, p_mask, batch["prompt_len"].to(device))
        else:
            loss = diffusion_loss(logits, tokens, masked, p_mask)
        with torch.no_grad():  # tensors: read on the host only at a log step
            hits = ((logits.argmax(-1) == tokens) & masked).sum()
            return loss, {"masked_accuracy": hits / masked.sum().clamp(min=1), "mask_ratio": masked.float().mean()}
