"""A BLIP recipe: the shared sections, BLIP's model section, the image-text `data`, CapFilt's
`capfilt` and the `eval` of retrieval (ITC, ITM re-ranked) and captioning."""

from __future__ import annotations

from dataclasses import field

from config.typed import Float, bounded, config_class
from families.blip.config import BlipModelConfig
from pipelines.data_configs import DataConfig
from pipelines.recipe import Recipe


@config_class
class CapfiltConfig:
    """BLIP's caption bootstrapping: a synthetic caption per training image, the ITM filter."""

    top_p: Float = bounded(0.9, gt=0.0, le=1.0)  # nucleus sampling of the synthetic captions
    threshold: Float = bounded(0.5, ge=0.0, le=1.0)  # keep a text when its ITM match probability reaches this
    batch_size: int = bounded(256, ge=1)
    shard_samples: int = bounded(500, ge=1)
    second_pretrain: bool = True  # continue pretraining on the bootstrapped shards
    epochs: int = bounded(5, ge=1)  # of that second pretraining


@config_class
class BlipEvalConfig:
    batch_size: int = bounded(256, ge=1)
    rerank_k: int = bounded(16, ge=1)  # ITM re-ranks the top k of each retrieval query
    caption_samples: int = bounded(25, ge=0)  # rows of the sample-caption table in MLflow


@config_class
class BlipRecipe(Recipe):
    model: BlipModelConfig = field(default_factory=BlipModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    capfilt: CapfiltConfig = field(default_factory=CapfiltConfig)
    eval: BlipEvalConfig = field(default_factory=BlipEvalConfig)
