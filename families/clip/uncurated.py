"""What curation bought, measured in the same workflow (`curate.compare`): the same pretrain on the
shard step's uncurated shards for exactly as many optimizer steps as the curated pretrain took, its
evaluation on the same held-out split, and a `compare` step with the gains (curated minus uncurated).

Equal steps: the curated pretrain's epoch is its kept samples (or `train.epoch_samples`), so the
uncurated one is given that epoch length too; same batch, seed, schedule and epochs, hence the same
steps. The `compare` step checks that it is so before it reports a gain."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

from pipelines.common import save_metrics, train_step
from pipelines.workflow import Step, StepContext

COMPARED = ("zeroshot_top1", "i2t_R1", "i2t_R5", "t2i_R1", "t2i_R5")


def uncurated_steps(recipe, tracking_uri: str, callbacks: tuple, evaluate_step: Callable, curve_keys) -> list[Step]:
    def same_steps(ctx: StepContext) -> dict:
        epoch = recipe.train.epoch_samples or int(ctx.inputs["curate"]["kept"])
        return {"tcfg": dataclasses.replace(recipe.train, epoch_samples=epoch)}

    return [
        Step(
            "pretrain_uncurated",
            train_step(recipe, tracking_uri, callbacks, curve_keys, prepare=same_steps),
            config={"model": recipe.model, "train": recipe.train},
            deps=["shard", "curate"],
        ),
        Step(
            "evaluate_uncurated",
            evaluate_step(recipe, "pretrain_uncurated"),
            config=recipe.eval,
            deps=["shard", "pretrain_uncurated"],
            remote=True,
        ),
        Step("compare", compare, config={}, deps=["pretrain", "evaluate", "pretrain_uncurated", "evaluate_uncurated"]),
    ]


def compare(ctx: StepContext) -> dict:
    curated, uncurated = ctx.inputs["evaluate"]["metrics"], ctx.inputs["evaluate_uncurated"]["metrics"]
    steps = {k: int(ctx.inputs[k]["steps"]) for k in ("pretrain", "pretrain_uncurated")}
    if steps["pretrain"] != steps["pretrain_uncurated"]:
        raise RuntimeError(f"compare: the curated and uncurated pretrains took different steps {steps}")
    gains = {f"{k}_gain": curated[k] - uncurated[k] for k in COMPARED if k in curated and k in uncurated}
    metrics = {"steps": float(steps["pretrain"]), **gains}
    (ctx.dir / "comparison.json").write_text(
        json.dumps({"steps": steps, "curated": curated, "uncurated": uncurated, "gains": gains}, indent=1)
    )
    return save_metrics(ctx, metrics)


def summary_lines(outputs: dict) -> list[str]:
    """The console's lines on the comparison (none without one)."""
    if "compare" not in outputs:
        return []
    u, g = outputs["evaluate_uncurated"]["metrics"], outputs["compare"]["metrics"]
    line = f"uncurated at equal steps ({int(g['steps'])}):"
    if "zeroshot_top1" in u:
        line += f" zero-shot top-1 {u['zeroshot_top1']:.3f} (curation {g['zeroshot_top1_gain']:+.3f}),"
    line += f" i2t R@5 {u['i2t_R5']:.3f} ({g['i2t_R5_gain']:+.3f}), t2i R@5 {u['t2i_R5']:.3f} ({g['t2i_R5_gain']:+.3f})"
    return [line]
