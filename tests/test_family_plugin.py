"""A model family defined entirely here, in a test module: its recipe (model section and an `eval`
section), its model, training task and one evaluation, registered with one `register` call. It runs
shard -> pretrain -> evaluate through the generic workflow (the CLI's build_workflow, Ray Train,
MLflow) with no edit anywhere else; its recipe refuses another family's section, and the parent
MLflow run holds exactly its recipe's parameters. (No `from __future__ import annotations`: the classes travel to
Ray's workers by value, where string annotations could not be resolved.)"""

import json
import sys
from dataclasses import field
from typing import Literal

import pytest
import torch
from torch import nn

from config.typed import ConfigError, bounded, config_class
from data.loading.shard_reading import eval_batches
from data.reading.source_fingerprint import source_fingerprint
from data.writing.sharder import shard_urls
from pipelines.common import save_metrics, train_step
from pipelines.data_configs import DataConfig
from pipelines.family import Family, register, unregister
from pipelines.recipe import Recipe
from pipelines.shard_step import shard_step
from pipelines.workflow import Step, StepContext
from training.checkpoint.model_file import load_model
from training.tasks import Task


class MeanColour(nn.Module):
    """Predicts an image's mean colour (per channel) from 8x8-pooled pixels."""

    def __init__(self, cfg: "MeanColourConfig"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(8)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 3))

    def forward(self, images):
        return self.net(self.pool(images))


def colour_loss(model, images):
    return nn.functional.mse_loss(model(images), images.mean(dim=(2, 3)))


class MeanColourTask(Task):
    def loss(self, strategy, batch, device):
        images = batch["image"].to(device)
        loss = nn.functional.mse_loss(strategy.forward(images).float(), images.mean(dim=(2, 3)).float())
        return loss, {}


@config_class
class MeanColourConfig:
    kind: Literal["mean_colour"] = "mean_colour"
    image_size: int = bounded(32, ge=8)
    hidden: int = bounded(16, ge=1)

    def build(self):
        return MeanColour(self)

    def task_class(self):
        return MeanColourTask


@config_class
class MeanColourEval:
    batch_size: int = bounded(64, ge=1)


@config_class
class MeanColourRecipe(Recipe):
    model: MeanColourConfig = field(default_factory=MeanColourConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: MeanColourEval = field(default_factory=MeanColourEval)


def evaluate_step(recipe: MeanColourRecipe):
    def run(ctx: StepContext) -> dict:
        model, mcfg = load_model(ctx.inputs["pretrain"]["model"], MeanColourConfig)
        torch.manual_seed(recipe.train.seed)
        untrained = mcfg.build().eval()
        sums, n = {"mse": 0.0, "mse_untrained": 0.0}, 0
        with torch.no_grad():
            for images, _ in eval_batches(
                shard_urls(ctx.inputs["shard"]["manifest"], "eval"), recipe.eval.batch_size, mcfg.image_size
            ):
                sums["mse"] += float(colour_loss(model, images)) * len(images)
                sums["mse_untrained"] += float(colour_loss(untrained, images)) * len(images)
                n += len(images)
        return save_metrics(ctx, {**{k: v / n for k, v in sums.items()}, "eval_samples": n})

    return run


def steps(recipe: MeanColourRecipe, tracking_uri: str, callbacks: tuple = ()) -> list[Step]:
    return [
        Step(
            "shard", shard_step(recipe), config={"data": recipe.data, "source": source_fingerprint(recipe.data.source)}
        ),
        Step(
            "pretrain",
            train_step(recipe, tracking_uri, callbacks),
            config={"model": recipe.model, "train": recipe.train},
            deps=["shard"],
        ),
        Step("evaluate", evaluate_step(recipe), config=recipe.eval, deps=["shard", "pretrain"], remote=True),
    ]


def summary(outputs: dict) -> list[str]:
    m = outputs["evaluate"]["metrics"]
    return [f"held-out mean-colour MSE {m['mse']:.4f} (untrained {m['mse_untrained']:.4f})"]


FAMILY = Family(MeanColourRecipe, steps, summary)


@pytest.fixture
def registered():
    # pytest imports this file by its bare name, which Ray's workers cannot import: its classes and
    # functions travel by value, as those of a notebook or a script would
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register(FAMILY)  # the one registry call
    yield FAMILY
    unregister(FAMILY.kind)


def test_the_family_recipe_has_its_own_sections_only(registered):
    from pipelines.config import load_recipe

    recipe = load_recipe(None, ["model.kind=mean_colour", "model.hidden=8", "eval.batch_size=4"])
    assert type(recipe) is MeanColourRecipe and recipe.model.hidden == 8 and recipe.eval.batch_size == 4
    assert recipe.family is FAMILY
    with pytest.raises(ConfigError, match=r"'finetune' is a section of the mae recipe, not of a mean_colour recipe"):
        load_recipe(None, ["model.kind=mean_colour", "finetune.epochs=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'eval.templates'"):  # CLIP's eval key, not this family's
        load_recipe(None, ["model.kind=mean_colour", "eval.templates=['{}']"])
    with pytest.raises(ConfigError, match=r"model.kind: 'mean_color' is not one of .*did you mean 'mean_colour'"):
        load_recipe(None, ["model.kind=mean_color"])
    with pytest.raises(ConfigError, match=r"train.init_from: .*a mean_colour model starts from a model.pt"):
        load_recipe(None, ["model.kind=mean_colour", "train.init_from=hf:/nowhere"])


@pytest.mark.slow
def test_a_family_defined_in_a_test_module_runs_the_generic_workflow(registered, ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipelines.cli import build_workflow
    from pipelines.config import load_recipe

    recipe = load_recipe(
        None,
        [
            "model.kind=mean_colour",
            f"runs_dir={tmp_path / 'runs'}",
            "data.limit=300",
            "data.shard_samples=100",
            "train.batch_size=16",
            "train.epochs=3",
            "train.lr=0.01",
            "train.warmup_steps=2",
            "train.log_every=5",
            "train.checkpoint_every=10",
            "train.max_failures=0",
        ],
    )
    wf, uri = build_workflow(recipe, "colour")
    assert [s.name for s in wf.steps] == ["shard", "pretrain", "evaluate"]  # no pyfunc: nothing to register
    out = wf.run()
    m = out["evaluate"]["metrics"]
    assert m["eval_samples"] > 0 and m["mse"] < 0.5 * m["mse_untrained"], m
    assert (
        out["pretrain"]["steps"] > 0 and torch.load(out["pretrain"]["model"])["model_config"]["kind"] == "mean_colour"
    )

    run_id = json.loads((tmp_path / "runs/colour/workflow.json").read_text())["mlflow_run_id"]
    params = MlflowClient(uri).get_run(run_id).data.params
    assert set(params) == set(recipe.flat()), set(params) ^ set(recipe.flat())
    assert not any(k.startswith(("finetune.", "capfilt.", "sft.", "text.")) for k in params)
    assert summary(out)[0].startswith("held-out mean-colour MSE")
