"""MDLM's sharding steps: the text corpus (a byte-level BPE tokenizer, packed sequences) and the SFT
pairs; a module of their own, so their code fingerprint is the text sharder's (pipelines/code_version.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from data.text.text_sharder import shard_pairs, shard_text
from pipelines.shard_step import empty_split_reason

if TYPE_CHECKING:
    from families.mdlm.recipe import MDLMRecipe
    from pipelines.workflow import StepContext

CORPUS_FIELDS = (
    "source",
    "text_column",
    "vocab_size",
    "seq_len",
    "holdout_fraction",
    "shard_chars",
    "tokenizer_chars",
    "min_chars",
    "limit",
)
SFT_FIELDS = (
    "sft_source",
    "prompt_column",
    "response_column",
    "sft_seq_len",
    "holdout_fraction",
    "shard_sequences",
    "sft_limit",
)


def shard_step(recipe: MDLMRecipe):
    text = recipe.text  # the step captures its section only (its code: the text sharder's)

    def run(ctx: StepContext) -> dict:
        uri = f"{ctx.uri}/shards"
        m = shard_text(text, uri)
        (ctx.dir / "manifest.json").write_text(json.dumps(m, indent=1))
        tr, ev = m["splits"]["train"], m["splits"].get("eval", {"samples": 0, "tokens": 0, "documents": 0})
        if ctx.tracker:
            ctx.tracker.log_params({f"text.{k}": getattr(text, k) for k in CORPUS_FIELDS})
            ctx.tracker.log_metrics(
                {
                    "documents": m["input_documents"],
                    "rejected_total": m["rejected_total"],
                    "train_tokens": tr["tokens"],
                    "eval_tokens": ev["tokens"],
                    "train_sequences": tr["samples"],
                    "eval_sequences": ev["samples"],
                    "vocab_size": m["vocab_size"],
                    "chars_per_token": m["stats"]["chars_per_token"],
                    "tokens_per_s": (tr["tokens"] + ev["tokens"]) / max(m["seconds"], 1e-6),
                }
            )
            ctx.tracker.log_artifact(ctx.dir / "manifest.json")
        print(
            f"[shard] {m['input_documents']} documents -> {tr['samples']} train sequences "
            f"({tr['tokens']} tokens, {tr['documents']} documents), {ev['samples']} held out "
            f"({ev['tokens']} tokens, {ev['documents']} documents); vocabulary {m['vocab_size']}; "
            f"rejected {m['rejected']}; {m['seconds']:.1f}s",
            flush=True,
        )
        return {
            "manifest": f"{uri}/manifest.json",
            "tokenizer": f"{uri}/{m['tokenizer']}",
            "train_samples": tr["samples"],
            "eval_samples": ev["samples"],
            "stop": empty_split_reason(m, "text.holdout_fraction", text.holdout_fraction, "text.source"),
        }

    return run


def shard_sft_step(recipe: MDLMRecipe):
    text = recipe.text  # the step captures its section only (its code: the text sharder's)

    def run(ctx: StepContext) -> dict:
        uri = f"{ctx.uri}/shards"
        m = shard_pairs(text, uri, ctx.inputs["shard"]["tokenizer"])
        (ctx.dir / "manifest.json").write_text(json.dumps(m, indent=1))
        n = {s: sp["samples"] for s, sp in m["splits"].items()}
        if ctx.tracker:
            ctx.tracker.log_params({f"text.{k}": getattr(text, k) for k in SFT_FIELDS})
            ctx.tracker.log_metrics(
                {
                    "input_pairs": m["input_pairs"],
                    "rejected_total": m["rejected_total"],
                    **{f"rejected_{k}": v for k, v in m["rejected"].items()},
                    **{f"{s}_pairs": v for s, v in n.items()},
                }
            )
            ctx.tracker.log_artifact(ctx.dir / "manifest.json")
        print(f"[shard_sft] {m['input_pairs']} pairs -> {n}, rejected {m['rejected']}", flush=True)
        return {
            "manifest": f"{uri}/manifest.json",
            "train_samples": n.get("train", 0),
            "eval_samples": n.get("eval", 0),
            "stop": empty_split_reason(m, "text.holdout_fraction", text.holdout_fraction, "text.sft_source"),
        }

    return run
