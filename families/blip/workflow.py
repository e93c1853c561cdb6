"""BLIP's workflow: shard -> pretrain -> capfilt -> pretrain_boot (on the bootstrapped shards)
-> evaluate, as durable workflow steps."""

from __future__ import annotations

import dataclasses
import json

import torch

from config.typed import build
from data.loading.tokenizer import get_tokenizer
from data.reading.source_fingerprint import source_fingerprint
from data.writing.sharder import read_manifest, shard_urls
from families.blip.capfilt import capfilt
from families.blip.evaluate import evaluate_blip
from families.blip.recipe import BlipRecipe
from infra.storage import Store
from pipelines.common import save_metrics, train_step
from pipelines.shard_step import shard_step
from pipelines.workflow import Step, StepContext
from training.checkpoint.model_file import load_model, read_model_file
from training.config import TaskOptions

CURVE_KEYS = ("loss", "itc", "itm", "lm")


def caption_vocabulary(urls: list[str], context_length: int) -> tuple[int, ...]:
    """Token ids of every caption and alt caption of the shards, plus the end token: the LM head's
    output classes."""
    import webdataset as wds

    tok = get_tokenizer(context_length)
    texts = []
    for s in wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples()):
        if "txt" in s:
            texts.append(s["txt"].decode("utf-8"))
        if "json" in s:
            texts += json.loads(s["json"]).get("alt_captions") or []
    ids = set(tok(texts).flatten().tolist()) if texts else set()
    return tuple(sorted((ids | {tok.eot}) - {0, tok.sot}))


def with_vocabulary(recipe: BlipRecipe, manifest: str):
    if recipe.model.lm_vocab:
        return recipe.model
    vocab = caption_vocabulary(shard_urls(manifest, "train"), recipe.model.context_length)
    return dataclasses.replace(recipe.model, lm_vocab=vocab)


def prepare_pretrain(recipe: BlipRecipe):
    def prepare(ctx: StepContext) -> dict:
        return {"model_cfg": with_vocabulary(recipe, ctx.inputs["shard"]["manifest"])}

    return prepare


def prepare_boot(recipe: BlipRecipe):
    """Continue from the first model on the bootstrapped shards (the same LM vocabulary)."""

    def prepare(ctx: StepContext) -> dict:
        model = ctx.inputs["pretrain"]["model"]
        stored = read_model_file(model)["model_config"]
        return {
            "model_cfg": build(type(recipe.model), stored, "model"),
            "manifest_path": ctx.inputs["capfilt"]["manifest"],
            "tcfg": dataclasses.replace(recipe.train, epochs=recipe.capfilt.epochs),
            "task": TaskOptions(init_from=model),
        }

    return prepare


def capfilt_step(recipe: BlipRecipe):
    def run(ctx: StepContext) -> dict:
        torch.set_num_threads(2)
        src = ctx.inputs["shard"]["manifest"]
        model, _ = load_model(ctx.inputs["pretrain"]["model"], type(recipe.model))
        out = capfilt(model, shard_urls(src, "train"), f"{ctx.uri}/shards", recipe.capfilt, recipe.train.seed)
        source = read_manifest(src)
        eval_split = source["splits"]["eval"]
        parent = src.rpartition("/")[0]
        manifest = {
            "source": f"capfilt of {src}",
            "capfilt": out["counts"],
            "samples": out["counts"]["images_kept"] + eval_split["samples"],
            "splits": {
                "train": {"shards": out["shards"], "samples": out["counts"]["images_kept"]},
                "eval": {
                    "samples": eval_split["samples"],  # the original held-out shards
                    "shards": [dict(s, name=f"{parent}/{s['name']}") for s in eval_split["shards"]],
                },
            },
        }
        store = Store(f"{ctx.uri}/shards")
        store.write_text("manifest.json", json.dumps(manifest, indent=1))
        (ctx.dir / "capfilt_examples.json").write_text(json.dumps(out["examples"], indent=1))
        c = out["counts"]
        if ctx.tracker:
            ctx.tracker.log_metrics({k: float(v) for k, v in c.items()})
            ctx.tracker.log_params({f"capfilt.{k}": v for k, v in dataclasses.asdict(recipe.capfilt).items()})
            ctx.tracker.log_artifact(ctx.dir / "capfilt_examples.json")
        print(
            f"[capfilt] {c['images']} images: original captions kept {c['original_kept']} / dropped "
            f"{c['original_dropped']}, synthetic kept {c['synthetic_kept']} / dropped {c['synthetic_dropped']}; "
            f"{c['images_kept']} images with a kept caption",
            flush=True,
        )
        stop = None
        if recipe.capfilt.second_pretrain and not c["images_kept"]:
            stop = (
                f"CapFilt kept no caption of the {c['images']} training images (capfilt.threshold "
                f"{recipe.capfilt.threshold}): lower it, or set capfilt.second_pretrain false"
            )
        return {"manifest": store.uri("manifest.json"), **c, "stop": stop}

    return run


def evaluate_step(recipe: BlipRecipe, model_step: str):
    def run(ctx: StepContext) -> dict:
        torch.set_num_threads(2)
        model, mcfg = load_model(ctx.inputs[model_step]["model"], type(recipe.model))
        metrics, rows = evaluate_blip(model, mcfg, recipe.eval, shard_urls(ctx.inputs["shard"]["manifest"], "eval"))
        table = ctx.dir / "captions.json"
        table.write_text(json.dumps(rows, indent=1))
        md = ["| key | generated | reference |", "|---|---|---|"] + [
            f"| {r['key']} | {r['generated']} | {r['reference']} |" for r in rows
        ]
        (ctx.dir / "captions.md").write_text("\n".join(md) + "\n")
        if ctx.tracker:
            ctx.tracker.log_table(rows, "captions_table.json")
            ctx.tracker.log_artifact(ctx.dir / "captions.md")
        out = save_metrics(ctx, metrics)
        out["captions"] = str(table)
        out["model"] = ctx.inputs[model_step]["model"]
        return out

    return run


def final_model_step(recipe: BlipRecipe) -> str:
    """The step whose model is the workflow's model (evaluated, pulled): the bootstrapped one when
    CapFilt's second pretraining runs."""
    return "pretrain_boot" if recipe.capfilt.second_pretrain else "pretrain"


def steps(recipe: BlipRecipe, tracking_uri: str, callbacks: tuple = ()) -> list[Step]:
    out = [
        Step(
            "shard", shard_step(recipe), config={"data": recipe.data, "source": source_fingerprint(recipe.data.source)}
        ),
        Step(
            "pretrain",
            train_step(recipe, tracking_uri, callbacks, CURVE_KEYS, prepare_pretrain(recipe)),
            config={"model": recipe.model, "train": recipe.train},
            deps=["shard"],
        ),
        Step(
            "capfilt",
            capfilt_step(recipe),
            deps=["shard", "pretrain"],
            remote=True,
            config={k: getattr(recipe.capfilt, k) for k in ("top_p", "threshold", "batch_size", "shard_samples")},
        ),
    ]
    if recipe.capfilt.second_pretrain:
        out.append(
            Step(
                "pretrain_boot",
                train_step(recipe, tracking_uri, (), CURVE_KEYS, prepare_boot(recipe)),
                config={"train": recipe.train, "epochs": recipe.capfilt.epochs},
                deps=["shard", "pretrain", "capfilt"],
            )
        )
    out.append(
        Step(
            "evaluate",
            evaluate_step(recipe, final_model_step(recipe)),
            config=recipe.eval,
            deps=[s.name for s in out],
            remote=True,
        )
    )
    return out


# what a user compares first: the MLflow view's columns, the numbers `make status` shows
HEADLINE = (
    "evaluate/itm_i2t_R5",
    "evaluate/itm_t2i_R5",
    "evaluate/itc_i2t_R5",
    "evaluate/cider",
    "evaluate/bleu4",
    "pretrain_boot/final_loss",
    "pretrain/mfu",
)


def summary(outputs: dict) -> list[str]:
    m = outputs["evaluate"]["metrics"]
    c = outputs["capfilt"]
    return [
        f"model:    {outputs['evaluate']['model']}",
        f"metrics:  {outputs['evaluate']['metrics_file']}",
        f"capfilt:  original captions kept {c['original_kept']}/{c['images']}, synthetic kept "
        f"{c['synthetic_kept']}/{c['images']}",
        f"retrieval on {m['eval_samples']} held-out pairs, R@1/5/10 image->text: ITC "
        f"{m['itc_i2t_R1']:.3f}/{m['itc_i2t_R5']:.3f}/{m['itc_i2t_R10']:.3f}, ITM re-ranked "
        f"{m['itm_i2t_R1']:.3f}/{m['itm_i2t_R5']:.3f}/{m['itm_i2t_R10']:.3f}; text->image: ITC "
        f"{m['itc_t2i_R1']:.3f}/{m['itc_t2i_R5']:.3f}/{m['itc_t2i_R10']:.3f}, ITM re-ranked "
        f"{m['itm_t2i_R1']:.3f}/{m['itm_t2i_R5']:.3f}/{m['itm_t2i_R10']:.3f} (chance R@1 {m['retrieval_chance_R1']:.3f})",
        f"captioning: BLEU-4 {m['bleu4']:.3f}, CIDEr {m['cider']:.3f}; samples: {outputs['evaluate']['captions']}",
    ]
