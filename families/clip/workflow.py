"""CLIP's workflow: shard -> pretrain -> evaluate (zero-shot and retrieval on the held-out split); with
`curate.enabled`: shard -> teacher -> curate -> pretrain on the curated shards -> evaluate. SigLIP runs it
too (`steps`, `summary`): the same towers and embedding space."""

from __future__ import annotations

import dataclasses

import torch

from data.reading.source_fingerprint import source_fingerprint
from data.writing.shard_io import split_samples
from data.writing.sharder import shard_urls
from families.clip.curate import ClipScorerFactory, ScorerFactory
from families.clip.evaluate import evaluate_clip
from families.clip.recipe import ClipRecipe
from families.clip.scorer_source import resolve_scorer
from families.clip.uncurated import summary_lines as uncurated_summary
from families.clip.uncurated import uncurated_steps
from pipelines.common import save_metrics, train_step
from pipelines.curate_step import curate_step
from pipelines.family import model_classes
from pipelines.shard_step import shard_step
from pipelines.workflow import Step, StepContext
from training.checkpoint.model_file import load_model

LOSS_CURVE_KEYS = ("loss", "lr", "temperature", "samples_per_s")
# what a user compares first (the MLflow view's columns, `make status`): held-out zero-shot and
# retrieval, then the training's last loss and its efficiency
HEADLINE = (
    "evaluate/zeroshot_top1",
    "evaluate/i2t_R5",
    "evaluate/t2i_R5",
    "pretrain/final_loss",
    "pretrain/mfu",
    "pretrain/samples_per_s",
)


def evaluate_step(recipe: ClipRecipe, trained: str = "pretrain"):
    """Zero-shot and retrieval of step `trained`'s model on the shard step's held-out split."""

    def run(ctx: StepContext) -> dict:
        torch.set_num_threads(2)
        model, mcfg = load_model(ctx.inputs[trained]["model"], type(recipe.model))
        manifest = ctx.inputs["shard"]["manifest"]
        total = split_samples(manifest, "eval")
        return save_metrics(ctx, evaluate_clip(model, mcfg, recipe.eval, shard_urls(manifest, "eval"), total))

    return run


def steps(recipe: ClipRecipe, tracking_uri: str, callbacks: tuple = ()) -> list[Step]:
    shard = Step(
        "shard", shard_step(recipe), config={"data": recipe.data, "source": source_fingerprint(recipe.data.source)}
    )
    pretrain_deps, prepare = ["shard"], None
    curated: list[Step] = []
    if recipe.curate.enabled:  # a teacher scores the shards; the model trains on what it kept
        curated = curate_steps(recipe, tracking_uri, callbacks)
        pretrain_deps, prepare = ["shard", "curate"], _on_curated
    return [
        shard,
        *curated,
        Step(
            "pretrain",
            train_step(recipe, tracking_uri, callbacks, LOSS_CURVE_KEYS, prepare=prepare),
            config={"model": recipe.model, "train": recipe.train},
            deps=pretrain_deps,
        ),
        Step("evaluate", evaluate_step(recipe), config=recipe.eval, deps=["shard", "pretrain"], remote=True),
        *(_uncurated(recipe, tracking_uri, callbacks) if recipe.curate.enabled and recipe.curate.compare else []),
    ]


def _uncurated(recipe: ClipRecipe, tracking_uri: str, callbacks: tuple) -> list[Step]:
    return uncurated_steps(recipe, tracking_uri, callbacks, evaluate_step, LOSS_CURVE_KEYS)


def _on_curated(ctx: StepContext) -> dict:
    return {"manifest_path": ctx.inputs["curate"]["manifest"]}


def curate_steps(recipe: ClipRecipe, tracking_uri: str, callbacks: tuple = ()) -> list[Step]:
    """The curate step and, when `curate.scorer` is "teacher", the teacher it scores with (this
    recipe's model, `curate.teacher_epochs` on the uncurated shards). Any other scorer (a registered
    model, an hf or open_clip folder) is found and checked here, before any step runs, and recorded
    in the curate step's config (another scorer reruns curate) and its MLflow parameters."""
    c = recipe.curate

    teacher_train = dataclasses.replace(recipe.train, epochs=c.teacher_epochs)

    def teacher_budget(ctx: StepContext) -> dict:
        return {"tcfg": teacher_train}

    factory: ScorerFactory | None = None
    if c.scorer == "teacher":
        record: dict = {"scorer": "teacher"}
        teacher = [
            Step(
                "teacher",
                train_step(recipe, tracking_uri, callbacks, LOSS_CURVE_KEYS, prepare=teacher_budget),
                config={"model": recipe.model, "train": teacher_train},  # train.epochs is the pretrain's alone
                deps=["shard"],
            )
        ]
    else:
        source, record = resolve_scorer(c.scorer, tracking_uri, recipe.storage or recipe.runs_dir, model_classes())
        factory, teacher = ScorerFactory(source, tuple(model_classes().values())), []

    def scorer(ctx: StepContext):
        if ctx.tracker:
            ctx.tracker.log_params({f"scorer.{k}": v for k, v in record.items()})
        return ClipScorerFactory(ctx.inputs["teacher"]["model"], type(recipe.model)) if teacher else factory

    run = curate_step(c, scorer, recipe.train.seed)

    def curate(ctx: StepContext) -> dict:
        return {**run(ctx), "scorer": record}

    chosen = dataclasses.replace(c, compare=False)  # the comparison after it is not curation's business
    config = chosen if teacher else {"curate": chosen, "scorer": record}  # the teacher's own fingerprint names it
    deps = ["shard", "teacher"] if teacher else ["shard"]
    return [*teacher, Step("curate", curate, config=config, deps=deps, remote=True)]


def summary(outputs: dict) -> list[str]:
    m = outputs["evaluate"]["metrics"]
    lines = [f"model:    {outputs['pretrain']['model']}", f"metrics:  {outputs['evaluate']['metrics_file']}"]
    if "zeroshot_top1" in m:
        lines.append(
            f"zero-shot top-1 {m['zeroshot_top1']:.3f} over {m['zeroshot_classes']} classes "
            f"(chance {m['zeroshot_chance']:.3f}, {m['zeroshot_top1'] / m['zeroshot_chance']:.1f}x)"
        )
    lines.append(
        f"retrieval on {m['eval_samples']} held-out pairs: image->text R@1 {m['i2t_R1']:.3f} "
        f"R@5 {m['i2t_R5']:.3f} R@10 {m['i2t_R10']:.3f}; text->image R@1 {m['t2i_R1']:.3f} "
        f"R@5 {m['t2i_R5']:.3f} R@10 {m['t2i_R10']:.3f} "
        f"(chance R@5 {m['retrieval_chance_R5']:.3f})"
    )
    return lines + uncurated_summary(outputs)
