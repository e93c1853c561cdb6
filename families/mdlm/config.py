"""The masked-diffusion language model's section (LLaDA; or its autoregressive baseline)."""

from __future__ import annotations

from typing import Literal

from config.shapes import divisible
from config.typed import Float, bounded, config_class
from families.mdlm.model import MDLM
from families.mdlm.task import MDLMTask


@config_class
class MDLMModelConfig:
    """A transformer language model over BPE tokens: `diffusion` is a masked-diffusion model
    (LLaDA: bidirectional, predicts masked tokens), `autoregressive` the same network with a causal
    mask predicting the next token (the baseline). `vocab_size`/`mask_id` come from the tokenizer."""

    kind: Literal["mdlm"] = "mdlm"
    objective: Literal["diffusion", "autoregressive"] = "diffusion"
    vocab_size: int = bounded(0, ge=0)  # 0: the shard step's tokenizer
    mask_id: int = bounded(-1, ge=-1)  # -1: the tokenizer's <|mask|>
    context_length: int = bounded(128, ge=2)  # longest sequence (pretraining seq_len, SFT sft_seq_len)
    width: int = bounded(256, ge=2)
    layers: int = bounded(4, ge=1)
    heads: int = bounded(4, ge=1)
    mlp_ratio: Float = bounded(4.0, gt=0.0)
    eps: Float = bounded(1e-3, gt=0.0, lt=1.0)  # diffusion: p_mask = (1 - eps) t + eps, t ~ U(0, 1)
    random_length_prob: Float = bounded(0.01, ge=0.0, le=1.0)  # diffusion: share of batches cut to a random length

    def problems(self):
        yield from divisible("width", self.width, "heads", self.heads)
        if not self.width % self.heads and (self.width // self.heads) % 2:
            yield (
                "width",
                (
                    f"{self.width} / model.heads {self.heads} = {self.width // self.heads} channels per "
                    f"head: rotary position embeddings need an even number"
                ),
                "heads",
            )
        if self.vocab_size and self.mask_id >= self.vocab_size:
            yield (
                "mask_id",
                f"{self.mask_id} is outside the vocabulary (model.vocab_size {self.vocab_size})",
                "vocab_size",
            )

    def build(self):
        """The model (what a training task and `load_model` build)."""

        return MDLM(self)

    def task_class(self):
        """The training task (what training/tasks.make_task calls)."""

        return MDLMTask
