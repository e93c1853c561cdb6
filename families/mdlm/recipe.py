"""An MDLM recipe: the shared sections, the masked-diffusion model section, the `text` corpus (and
SFT pairs), the `sft` budget and the `eval` of the likelihood bound and samples."""

from __future__ import annotations

from dataclasses import field

from config.typed import Float, bounded, config_class
from families.mdlm.config import MDLMModelConfig
from pipelines.data_configs import TextDataConfig
from pipelines.recipe import Recipe
from training.config import schedule_problems


@config_class
class SFTConfig:
    """Supervised fine-tuning of the masked-diffusion LM on prompt/response pairs."""

    epochs: int = bounded(2, ge=1)
    batch_size: int = bounded(64, ge=1)  # per worker
    lr: Float = bounded(3e-4, gt=0.0)
    min_lr: Float = bounded(1e-5, ge=0.0)
    warmup_steps: int = bounded(20, ge=0)
    weight_decay: Float = bounded(0.1, ge=0.0)

    def problems(self):
        yield from schedule_problems(self, "sft")


@config_class
class MDLMEvalConfig:
    lm_sequences: int = bounded(256, ge=0)  # held-out sequences for the likelihood (0: all)
    mc_samples: int = bounded(16, ge=1)  # Monte Carlo draws of the masking per sequence
    gen_samples: int = bounded(12, ge=1)  # samples in MLflow (held-out prompts, SFT prompts)
    prompt_tokens: int = bounded(16, ge=1)  # continuation prompts: the first tokens of held-out text
    gen_length: int = bounded(48, ge=1)  # generated tokens
    block_length: int = bounded(16, ge=1)  # semi-autoregressive blocks (gen_length / block_length)
    gen_steps: int = bounded(48, ge=1)  # denoising steps in all (a multiple of the blocks)
    temperature: Float = bounded(0.0, ge=0.0)  # Gumbel noise on the logits (0: greedy)


@config_class
class MDLMRecipe(Recipe):
    model: MDLMModelConfig = field(default_factory=MDLMModelConfig)
    text: TextDataConfig = field(default_factory=TextDataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: MDLMEvalConfig = field(default_factory=MDLMEvalConfig)

    def problems(self):
        yield from super().problems()
        m, t, e = self.model, self.text, self.eval
        need = max(t.seq_len, t.sft_seq_len if t.sft_source else 0, e.prompt_tokens + e.gen_length)
        if m.context_length < need:
            yield (
                "model.context_length",
                (f"{m.context_length} < {need} (text.seq_len, text.sft_seq_len, eval.prompt_tokens + eval.gen_length)"),
                "text.seq_len",
                "text.sft_seq_len",
                "eval.prompt_tokens",
                "eval.gen_length",
            )
        if e.gen_length % e.block_length or e.gen_steps % (e.gen_length // e.block_length):
            yield (
                "eval.gen_length",
                (
                    f"{e.gen_length} must be a multiple of eval.block_length {e.block_length}, and eval.gen_steps "
                    f"{e.gen_steps} of the number of blocks"
                ),
                "eval.block_length",
                "eval.gen_steps",
            )
