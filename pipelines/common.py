"""Steps every recipe shares: train a model (pretraining or fine-tuning), save a step's metrics
(the shard step: pipelines/shard_step.py)."""

from __future__ import annotations

import dataclasses
import json

from infra.storage import Store
from infra.tracking import plot_curves
from pipelines.recipe import Recipe, flatten
from pipelines.workflow import StepContext
from training.config import TaskOptions


def train_step(
    recipe: Recipe, tracking_uri: str, callbacks: tuple = (), curve_keys=("loss", "lr", "samples_per_s"), prepare=None
):
    """Train `recipe.model` with `recipe.train` on the shard step's train split; `prepare(ctx)` may
    return other arguments of run_training (model_cfg, tcfg, manifest_path, task): fine-tuning,
    continued pretraining. MLflow gets the configs actually trained with; `callbacks` go to every
    worker's training loop (run_training)."""

    def run(ctx: StepContext) -> dict:
        from training.pretrain import run_training

        args = {
            "tcfg": recipe.train,
            "model_cfg": recipe.model,
            "manifest_path": ctx.inputs["shard"]["manifest"],
            "task": TaskOptions(init_from=recipe.train.init_from),
            **(prepare(ctx) if prepare else {}),
        }
        cfg_path = _save_recipe(ctx, recipe)
        t = ctx.tracker
        if t:
            t.log_params(
                {
                    **trained_params(args["model_cfg"], args["tcfg"], args["task"]),
                    "data.manifest": args["manifest_path"],
                }
            )
            t.log_artifact(cfg_path)
        out = run_training(
            out_dir=ctx.dir,
            mlflow_run_id=t.run_id if t else None,
            tracking_uri=tracking_uri,
            callbacks=callbacks,
            storage_uri=ctx.uri,
            **args,
        )
        out["recipe"] = f"{ctx.uri}/recipe.json"
        _log_training(ctx, out, curve_keys)
        return out

    return run


def _save_recipe(ctx: StepContext, recipe: Recipe):
    """recipe.json in the step folder and its storage: what the model was trained with."""

    path = ctx.dir / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict(), indent=1))
    if ctx.uri != str(ctx.dir):
        Store(ctx.uri).write_text("recipe.json", path.read_text())
    return path


def trained_params(model_cfg, tcfg, task) -> dict:
    """The model, train and task configs a step trained with, flat for MLflow; a long list (a
    vocabulary, class names) by its length."""
    model = dataclasses.asdict(model_cfg)
    for k, v in model.items():
        if isinstance(v, (list, tuple)) and len(v) > 16:
            model[k] = f"<{len(v)} items>"
    return flatten({"model": model, "train": dataclasses.asdict(tcfg), "task": dataclasses.asdict(task)})


def _log_training(ctx: StepContext, out: dict, curve_keys) -> None:
    """The step's curves and model in its MLflow run; its headline numbers and curves in the workflow's."""

    t = ctx.tracker
    if t:
        plot = plot_curves(t, list(curve_keys), ctx.dir / "loss_curve.png")
        if plot:
            t.log_artifact(plot)
            if ctx.parent:  # the workflow's run shows each training step's curves
                ctx.parent.log_artifact(plot, ctx.name)
        t.log_artifact(ctx.dir / "model.pt", "model")
    if ctx.parent:
        ctx.parent.log_metrics(
            {
                f"{ctx.name}/{k}": out[k]
                for k in ("final_loss", "samples_per_s", "mfu", "steps")
                if isinstance(out.get(k), (int, float))
            }
        )


def save_metrics(ctx: StepContext, metrics: dict) -> dict:
    """metrics.json in the step folder (and its storage), the metrics in MLflow; the step output."""

    text = json.dumps(metrics, indent=1)
    (ctx.dir / "metrics.json").write_text(text)
    if ctx.uri != str(ctx.dir):
        Store(ctx.uri).write_text("metrics.json", text)
    if ctx.tracker:
        ctx.tracker.log_metrics(metrics)
        ctx.tracker.log_artifact(ctx.dir / "metrics.json")
    if ctx.parent:  # the workflow's run: every step's metrics, named <step>/<metric>
        ctx.parent.log_metrics(
            {
                f"{ctx.name}/{k}": v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
    return {"metrics": metrics, "metrics_file": f"{ctx.uri}/metrics.json"}
