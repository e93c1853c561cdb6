"""MAE's workflow: shard -> pretrain -> finetune (and the same ViT from scratch) -> evaluate.

Pretraining needs no labels (image-only sources are fine); fine-tuning, the linear probe and the
evaluation use the class in each image's metadata field `data.label_field` (e.g. `folder` for an
ImageFolder layout), with the classes counted by the sharder in the train split.
"""

from __future__ import annotations

import torch

from config.typed import ConfigError
from data.reading.source_fingerprint import source_fingerprint
from data.writing.sharder import read_manifest, shard_urls
from families.mae.config import ViTClassifierConfig
from families.mae.evaluate import classifier_accuracy, linear_probe, reconstruction
from families.mae.recipe import MAERecipe
from pipelines.common import save_metrics, train_step
from pipelines.shard_step import shard_step
from pipelines.workflow import Step, StepContext
from training.checkpoint.model_file import load_model
from training.config import TaskOptions, with_budget

CURVE_KEYS = ("loss", "lr", "samples_per_s")
FT_CURVE_KEYS = ("loss", "train_accuracy", "lr")


ENCODER_FIELDS = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "mlp_ratio")


def classifier_config(recipe: MAERecipe, classes: list[str]) -> ViTClassifierConfig:
    return ViTClassifierConfig(
        **{k: getattr(recipe.model, k) for k in ENCODER_FIELDS},
        num_classes=len(classes),
        classes=tuple(classes),
    )


def finetune_train_config(recipe: MAERecipe):
    """The pretraining TrainConfig with the fine-tuning budget and optimiser settings."""
    return with_budget(recipe.train, recipe.finetune, picture_every=0)


def train_classes(manifest_uri: str, label_field: str) -> list[str]:
    labels = read_manifest(manifest_uri)["splits"]["train"].get("labels") or {}
    if len(labels) < 2:
        raise ValueError(
            f"{manifest_uri}: the train split has {len(labels)} classes in "
            f"'{label_field}' (data.label_field); fine-tuning needs at least 2"
        )
    return sorted(labels)


def prepare_finetune(recipe: MAERecipe, pretrained: bool):
    """The classifier, the fine-tuning budget and, for `finetune`, the pretrained encoder."""

    def prepare(ctx: StepContext) -> dict:
        classes = train_classes(ctx.inputs["shard"]["manifest"], recipe.data.label_field)
        ft = recipe.finetune
        return {
            "model_cfg": classifier_config(recipe, classes),
            "tcfg": finetune_train_config(recipe),
            "task": TaskOptions(
                label_field=recipe.data.label_field,
                label_smoothing=ft.label_smoothing,
                layer_decay=ft.layer_decay if pretrained else 1.0,
                init_from=ctx.inputs["pretrain"]["model"] if pretrained else "",
            ),
        }

    return prepare


def evaluate_step(recipe: MAERecipe):
    def run(ctx: StepContext) -> dict:
        torch.set_num_threads(2)
        manifest = ctx.inputs["shard"]["manifest"]
        train_urls, eval_urls = shard_urls(manifest, "train"), shard_urls(manifest, "eval")
        field, ft = recipe.data.label_field, recipe.finetune
        classes = train_classes(manifest, field)
        mae, _ = load_model(ctx.inputs["pretrain"]["model"], type(recipe.model))
        picture = ctx.dir / "reconstruction-heldout.png"
        metrics = reconstruction(mae, eval_urls, picture, seed=recipe.train.seed)
        metrics.update(linear_probe(mae, train_urls, eval_urls, field, classes, ft.probe_epochs, ft.probe_weight_decay))
        for step in ("finetune", "scratch"):
            if step in ctx.inputs:
                model, _ = load_model(ctx.inputs[step]["model"], ViTClassifierConfig)
                metrics[f"{step}_accuracy"] = classifier_accuracy(model, eval_urls, field, classes)
        metrics["classes"] = len(classes)
        metrics["chance_accuracy"] = 1 / len(classes)
        if ctx.tracker:
            ctx.tracker.log_artifact(picture, "pictures")
        return save_metrics(ctx, metrics)

    return run


def steps(recipe: MAERecipe, tracking_uri: str, callbacks: tuple = ()) -> list[Step]:
    if not recipe.data.label_field:  # here, not in the recipe: an MAE recipe of defaults still loads
        raise ConfigError(
            "data.label_field: the MAE recipe fine-tunes and probes on labelled images; "
            "name the metadata field holding the class (e.g. 'folder' for <class>/<image> folders)"
        )
    ft_cfg = {
        "finetune": recipe.finetune,
        "train": finetune_train_config(recipe),
        "encoder": {k: getattr(recipe.model, k) for k in ENCODER_FIELDS},  # the classes: the shard step's
    }
    out = [
        Step(
            "shard", shard_step(recipe), config={"data": recipe.data, "source": source_fingerprint(recipe.data.source)}
        ),
        Step(
            "pretrain",
            train_step(recipe, tracking_uri, callbacks, CURVE_KEYS),
            config={"model": recipe.model, "train": recipe.train},
            deps=["shard"],
        ),
        Step(
            "finetune",
            train_step(recipe, tracking_uri, (), FT_CURVE_KEYS, prepare_finetune(recipe, True)),
            config=ft_cfg,
            deps=["shard", "pretrain"],
        ),
    ]
    if recipe.finetune.scratch_baseline:  # independent of pretraining: kept when only MAE changes
        out.append(
            Step(
                "scratch",
                train_step(recipe, tracking_uri, (), FT_CURVE_KEYS, prepare_finetune(recipe, False)),
                config=ft_cfg,
                deps=["shard"],
            )
        )
    out.append(
        Step(
            "evaluate",
            evaluate_step(recipe),
            config={"finetune": recipe.finetune, "label_field": recipe.data.label_field},
            deps=[s.name for s in out],
            remote=True,
        )
    )
    return out


# what a user compares first: the MLflow view's columns, the numbers `make status` shows
HEADLINE = (
    "evaluate/finetune_accuracy",
    "evaluate/scratch_accuracy",
    "evaluate/probe_accuracy",
    "evaluate/eval_reconstruction_loss",
    "pretrain/final_loss",
    "pretrain/mfu",
)


def summary(outputs: dict) -> list[str]:
    m = outputs["evaluate"]["metrics"]
    lines = [
        f"model:    {outputs['pretrain']['model']}",
        f"metrics:  {outputs['evaluate']['metrics_file']}",
        f"held-out reconstruction loss (masked patches) {m['eval_reconstruction_loss']:.4f}",
        f"linear probe {m['probe_accuracy']:.3f} vs raw pixels {m['pixels_accuracy']:.3f} "
        f"({m['classes']} classes, chance {m['chance_accuracy']:.3f})",
        f"fine-tuned from MAE {m['finetune_accuracy']:.3f}",
    ]
    if "scratch_accuracy" in m:
        lines[-1] += f" vs from scratch {m['scratch_accuracy']:.3f} (same budget)"
    return lines
