"""An MAE recipe: the shared sections, MAE's model section, the labelled image `data` and the
`finetune` budget (fine-tuning, the scratch baseline and the linear probe)."""

from __future__ import annotations

from dataclasses import field

from config.typed import Float, bounded, config_class
from families.mae.config import MAEModelConfig
from pipelines.data_configs import DataConfig
from pipelines.recipe import Recipe
from training.config import schedule_problems


@config_class
class FinetuneConfig:
    """Fine-tuning and linear probing of a pretrained image encoder on labelled images (MAE)."""

    label_field: str = "label"  # metadata field with each image's class
    epochs: int = bounded(10, ge=1)
    batch_size: int = bounded(128, ge=1)  # per worker
    lr: Float = bounded(1e-3, gt=0.0)  # peak lr of the head; block i gets lr * layer_decay^(L+1-i)
    min_lr: Float = bounded(1e-5, ge=0.0)
    warmup_steps: int = bounded(20, ge=0)
    weight_decay: Float = bounded(0.05, ge=0.0)
    layer_decay: Float = bounded(0.75, gt=0.0, le=1.0)
    label_smoothing: Float = bounded(0.1, ge=0.0, lt=1.0)
    scratch_baseline: bool = True  # also train the same ViT from random weights, same budget
    probe_epochs: int = bounded(100, ge=1)  # linear probe: full-batch logistic regression on features
    probe_weight_decay: Float = bounded(1e-4, ge=0.0)

    def problems(self):
        yield from schedule_problems(self, "finetune")


@config_class
class MAERecipe(Recipe):
    model: MAEModelConfig = field(default_factory=MAEModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
