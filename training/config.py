"""The `train` section of a recipe: how the engine trains (Ray Train workers, batch, optimiser,
schedule, precision, checkpoints, augmentation, DeepSpeed). The workers read these objects, not
dicts: `tcfg.lr` on the driver and in the loop alike."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, Field

from config.typed import Float, bounded, config_class, scientific

BUDGET_FIELDS = ("epochs", "batch_size", "lr", "min_lr", "warmup_steps", "weight_decay")


def with_budget(train: "TrainConfig", budget, **more) -> "TrainConfig":
    """`train` with the budget of a section that sets its own (finetune, sft): its epochs, batch
    size, learning rates, warmup and weight decay; `more`: other train fields to change."""
    return dataclasses.replace(train, **{k: getattr(budget, k) for k in BUDGET_FIELDS}, **more)


def schedule_problems(budget, section: str):
    """The learning-rate schedule's rule, for every section with an `lr` and a `min_lr` (train,
    finetune, sft): the cosine decays from lr down to min_lr."""
    if budget.min_lr > budget.lr:
        yield "min_lr", f"{budget.min_lr} is above {section}.lr {budget.lr}", "lr"


Beta = Annotated[float, Field(ge=0.0, lt=1.0), BeforeValidator(scientific)]  # each of AdamW's betas


@config_class
class AugmentConfig:
    scale_min: Float = bounded(0.6, gt=0.0, le=1.0)  # random-resized-crop area range
    scale_max: Float = bounded(1.0, gt=0.0, le=1.0)
    ratio_min: Float = bounded(0.8, gt=0.0)
    ratio_max: Float = bounded(1.25, gt=0.0)
    color_jitter: Float = bounded(0.2, ge=0.0, lt=1.0)
    alt_caption_prob: Float = bounded(0.0, ge=0.0, le=1.0)  # train on one of a sample's `alt_captions` this often
    hflip: bool = False  # random horizontal flips (not for text-bearing images)

    def problems(self):
        if self.scale_min > self.scale_max:
            yield "scale_min", f"{self.scale_min} is above train.augment.scale_max {self.scale_max}", "scale_max"
        if self.ratio_min > self.ratio_max:
            yield "ratio_min", f"{self.ratio_min} is above train.augment.ratio_max {self.ratio_max}", "ratio_max"


@config_class
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False  # optimizer state in CPU memory (ZeRO-Offload)
    offload_params: bool = False  # parameters in CPU memory (ZeRO-3 only)

    def problems(self):
        if self.offload_params and self.zero_stage != 3:
            yield "offload_params", f"needs zero_stage 3 (zero_stage is {self.zero_stage})", "zero_stage"


@config_class
class TrainConfig:
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    num_workers: int = bounded(2, ge=1)  # Ray Train workers
    use_gpu: bool = False
    cpus_per_worker: int = bounded(1, ge=1)
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"  # workers on as few / as many nodes
    batch_size: int = bounded(128, ge=1)  # per worker, per micro-batch
    grad_accum: int = bounded(1, ge=1)
    epoch_samples: int = bounded(0, ge=0)  # samples per epoch (0: the train split's size)
    epochs: int = bounded(20, ge=1)
    lr: Float = bounded(1e-3, gt=0.0)
    min_lr: Float = bounded(1e-5, ge=0.0)
    weight_decay: Float = bounded(0.1, ge=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.98)
    warmup_steps: int = bounded(50, ge=0)
    clip_grad: Float = bounded(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the processor has bf16 units
    compile: bool = False  # torch.compile the model (DDP); its compile time is reported apart
    # AdamW's kernel; auto: fused on a GPU, for-each on a CPU
    optimizer_kernel: Literal["auto", "fused", "foreach"] = "auto"
    prefetch: int = bounded(2, ge=0)  # batches a background thread reads ahead of the step (0: none)
    peak_flops: Float = bounded(0.0, ge=0.0)  # one worker's peak FLOP/s for MFU (0: GPU table / measured CPU)
    activation_checkpointing: bool = False  # recompute transformer blocks in backward (both strategies)
    checkpoint_every: int = bounded(50, ge=1)  # optimizer steps
    log_every: int = bounded(10, ge=1)
    picture_every: int = bounded(0, ge=0)  # MLflow picture of progress every N steps (MAE: reconstructions)
    loader_workers: int = bounded(1, ge=0)  # DataLoader worker processes per Ray Train worker
    shuffle_buffer: int = bounded(1000, ge=1)
    seed: int = bounded(0, ge=0)
    max_failures: int = bounded(1, ge=-1)  # Ray Train restarts of the worker group (-1: no limit)
    max_bad_steps: int = bounded(3, ge=1)  # stop after this many steps in a row with a NaN/inf loss
    resume_from: str = ""  # a checkpoint folder of an earlier run: its weights, optimizer and step
    init_from: str = ""  # the starting weights: a model.pt (local or s3://), or hf:<dir> (CLIP)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def problems(self):
        yield from schedule_problems(self, "train")
        if self.compile and self.strategy == "deepspeed":
            yield "compile", "torch.compile runs under train.strategy ddp only (it is deepspeed)", "strategy"


@dataclass(frozen=True)
class TaskOptions:
    """What a training run starts from and the task's switches (the steps of a recipe set them;
    an unknown one is a TypeError where it is made, never ignored)."""

    init_from: str = ""  # an exported model.pt (local or s3://) to start from
    label_field: str = ""  # classifier fine-tuning: the metadata field holding the class
    label_smoothing: float = 0.0
    layer_decay: float = 1.0  # classifier fine-tuning: lr x layer_decay^(depth from the top)
    sft: bool = False  # MDLM: batches are (prompt, response) pairs; the prompt is never masked
    seq_len: int = 0  # MDLM: tokens per sample (0: the model's context length)


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run's workers are given, frozen: built once on the driver
    (training/pretrain.py `run_training`), read by every worker's loop, never changed there."""

    model: Any  # the model section (a family's config: builds the model, names its task)
    train: TrainConfig = field(default_factory=TrainConfig)  # with `precision` resolved when the run starts
    task: TaskOptions = field(default_factory=TaskOptions)
    urls: tuple[str, ...] = ()  # the train split's shards
    train_samples: int = 0
    storage: str = ""  # checkpoints (local folder or s3://)
    mlflow_run_id: Optional[str] = None
    tracking_uri: str = ""
    callbacks: tuple = ()  # more training.callbacks objects, after the built-in ones
