"""The masked-diffusion LM's workflow (LLaDA-style):
shard (tokenizer + packed sequences) -> shard_sft (prompt/response pairs) -> pretrain (diffusion)
-> pretrain_ar (the same network, autoregressive, same token budget) -> sft -> evaluate.

Evaluation reports the held-out likelihood bound of the diffusion model next to the AR baseline's
perplexity and a unigram model's, masked-token accuracy, the SFT effect on held-out responses, and
sample tables (continuations of held-out text; answers to held-out prompts) in MLflow.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from data.loading.shard_reading import token_batches
from data.text.bpe import load_tokenizer
from data.text.text_sources import text_fingerprint
from data.writing.sharder import read_manifest, shard_urls
from families.mdlm import evaluate as ev
from families.mdlm.config import MDLMModelConfig
from families.mdlm.recipe import MDLMRecipe
from families.mdlm.sample import generate, generate_ar
from families.mdlm.text_steps import CORPUS_FIELDS, SFT_FIELDS, shard_sft_step, shard_step
from infra.storage import Store
from pipelines.common import save_metrics, train_step
from pipelines.workflow import Step, StepContext
from training.checkpoint.model_file import load_model
from training.config import TaskOptions, with_budget

CURVE_KEYS = ("loss", "masked_accuracy", "lr", "tokens_per_s")
AR_CURVE_KEYS = ("loss", "perplexity", "lr", "tokens_per_s")


def with_tokenizer(model, manifest_uri: str, **changes):
    man = read_manifest(manifest_uri)
    return dataclasses.replace(model, vocab_size=man["vocab_size"], mask_id=man["mask_id"], **changes)


def prepare_pretrain(recipe: MDLMRecipe, objective: str):
    def prepare(ctx: StepContext) -> dict:
        model = with_tokenizer(recipe.model, ctx.inputs["shard"]["manifest"], objective=objective)
        return {"model_cfg": model, "task": TaskOptions(seq_len=recipe.text.seq_len)}

    return prepare


def sft_train_config(recipe: MDLMRecipe):
    return with_budget(recipe.train, recipe.sft, epoch_samples=0, picture_every=0)


def prepare_sft(recipe: MDLMRecipe):
    def prepare(ctx: StepContext) -> dict:
        return {
            "model_cfg": with_tokenizer(recipe.model, ctx.inputs["shard"]["manifest"]),
            "tcfg": sft_train_config(recipe),
            "manifest_path": ctx.inputs["shard_sft"]["manifest"],
            "task": TaskOptions(sft=True, init_from=ctx.inputs["pretrain"]["model"], seq_len=recipe.text.sft_seq_len),
        }

    return prepare


def evaluate_step(recipe: MDLMRecipe):
    def run(ctx: StepContext) -> dict:
        torch.set_num_threads(2)
        e, seed = recipe.eval, recipe.train.seed
        manifest_uri = ctx.inputs["shard"]["manifest"]
        man = read_manifest(manifest_uri)
        urls = shard_urls(manifest_uri, "eval")
        if not urls:
            raise ValueError(f"{manifest_uri}: no held-out sequences (text.holdout_fraction)")
        tok = load_tokenizer(ctx.inputs["shard"]["tokenizer"])
        mdlm, mcfg = load_model(ctx.inputs["pretrain"]["model"], MDLMModelConfig)
        metrics = ev.diffusion_metrics(mdlm, urls, mcfg.mask_id, e.mc_samples, e.lm_sequences, seed=seed)
        counts = json.loads(Store(manifest_uri.rpartition("/")[0]).read_text(man["train_token_counts"]))
        metrics.update(ev.unigram_perplexity(counts, urls, e.lm_sequences))
        ar = None
        if "pretrain_ar" in ctx.inputs:
            ar, _ = load_model(ctx.inputs["pretrain_ar"]["model"], MDLMModelConfig)
            metrics.update(ev.ar_perplexity(ar, urls, e.lm_sequences))
        tables = {"continuations": continuation_rows(mdlm, ar, tok, urls, e, seed)}
        if "sft" in ctx.inputs:
            sft_urls = shard_urls(ctx.inputs["shard_sft"]["manifest"], "eval")
            tuned, _ = load_model(ctx.inputs["sft"]["model"], MDLMModelConfig)
            for name, model in (("pretrained", mdlm), ("sft", tuned)):
                metrics[f"response_nll_{name}"] = ev.sft_response_bound(
                    model, sft_urls, mcfg.mask_id, e.mc_samples, e.lm_sequences, seed=seed
                )
            tables["answers"] = answer_rows(mdlm, tuned, tok, sft_urls, e, seed)
        for name, rows in tables.items():
            (ctx.dir / f"samples_{name}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
            if ctx.tracker:
                ctx.tracker.log_table(rows, f"samples_{name}.json")
            for r in rows[:3]:
                print(f"[evaluate] {name}: " + " | ".join(f"{k}: {v!r}" for k, v in r.items()), flush=True)
        return save_metrics(ctx, metrics)

    return run


def continuation_rows(mdlm, ar, tok, urls, e, seed) -> list[dict]:

    batch = next(iter(token_batches(urls, e.gen_samples)))
    prompts = batch["tokens"][:, : e.prompt_tokens]
    g = torch.Generator().manual_seed(seed)
    out = generate(mdlm, prompts, e.gen_length, e.block_length, e.gen_steps, mdlm.cfg.mask_id, e.temperature, g)
    rows = [
        {
            "prompt": tok.decode(p),
            "diffusion": tok.decode(o[e.prompt_tokens :]),
            "reference": tok.decode(t[e.prompt_tokens : e.prompt_tokens + e.gen_length]),
        }
        for p, o, t in zip(prompts, out, batch["tokens"])
    ]
    if ar is not None:
        for r, o in zip(rows, generate_ar(ar, prompts, e.gen_length)):
            r["autoregressive"] = tok.decode(o[e.prompt_tokens :])
    return rows


def answer_rows(pretrained, tuned, tok, urls, e, seed) -> list[dict]:

    batch = next(iter(token_batches(urls, e.gen_samples)))
    rows = []
    for x, plen in zip(batch["tokens"], batch["prompt_len"]):
        prompt = x[None, : int(plen)]
        row = {"prompt": tok.decode(prompt[0]), "reference": tok.decode(x[int(plen) :], stop_at_eos=True)}
        for name, model in (("pretrained", pretrained), ("sft", tuned)):
            out = generate(
                model,
                prompt,
                e.gen_length,
                e.block_length,
                e.gen_steps,
                model.cfg.mask_id,
                e.temperature,
                torch.Generator().manual_seed(seed),
            )
            row[name] = tok.decode(out[0, int(plen) :], stop_at_eos=True)
        rows.append(row)
    return rows


def steps(recipe: MDLMRecipe, tracking_uri: str, callbacks: tuple = ()) -> list[Step]:
    t = recipe.text
    corpus = {k: getattr(t, k) for k in CORPUS_FIELDS}
    out = [
        Step("shard", shard_step(recipe), config={"text": corpus, "source": text_fingerprint(t.source)}),
        Step(
            "pretrain",
            train_step(recipe, tracking_uri, callbacks, CURVE_KEYS, prepare_pretrain(recipe, "diffusion")),
            config={"model": recipe.model, "train": recipe.train},
            deps=["shard"],
        ),
        Step(
            "pretrain_ar",
            train_step(recipe, tracking_uri, (), AR_CURVE_KEYS, prepare_pretrain(recipe, "autoregressive")),
            config={"model": recipe.model, "train": recipe.train, "objective": "autoregressive"},
            deps=["shard"],
        ),
    ]
    if t.sft_source:
        out.insert(
            1,
            Step(
                "shard_sft",
                shard_sft_step(recipe),
                config={
                    "text": {k: getattr(t, k) for k in SFT_FIELDS},
                    "source": text_fingerprint(t.sft_source, "text.sft_source"),
                },
                deps=["shard"],
            ),
        )
        out.append(
            Step(
                "sft",
                train_step(recipe, tracking_uri, (), CURVE_KEYS, prepare_sft(recipe)),
                config={"sft": recipe.sft, "train": sft_train_config(recipe)},
                deps=["shard", "shard_sft", "pretrain"],
            )
        )
    out.append(
        Step("evaluate", evaluate_step(recipe), config={"eval": recipe.eval}, deps=[s.name for s in out], remote=True)
    )
    return out


# what a user compares first: the MLflow view's columns, the numbers `make status` shows
HEADLINE = (
    "evaluate/bound_perplexity",
    "evaluate/ar_perplexity",
    "evaluate/masked_accuracy",
    "evaluate/response_nll_sft",
    "pretrain/final_loss",
    "pretrain/mfu",
)


def summary(outputs: dict) -> list[str]:
    m = outputs["evaluate"]["metrics"]
    lines = [
        f"model:    {outputs['pretrain']['model']}",
        f"metrics:  {outputs['evaluate']['metrics_file']}",
        f"held-out perplexity: diffusion bound {m['bound_perplexity']:.1f}, unigram {m['unigram_perplexity']:.1f}"
        + (f", autoregressive {m['ar_perplexity']:.1f}" if "ar_perplexity" in m else ""),
        f"masked-token accuracy {m['masked_accuracy']:.3f} (uniform mask ratio), "
        f"{m['masked_accuracy_15']:.3f} (15% masked)",
    ]
    if "response_nll_sft" in m:
        lines.append(
            f"held-out answers, NLL bound per pair: {m['response_nll_pretrained']:.1f} before SFT, "
            f"{m['response_nll_sft']:.1f} after"
        )
    return lines
