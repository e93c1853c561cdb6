"""The shard step of image-text recipes (a `data` section): the source sharded into WebDataset
tars with a manifest, logged to MLflow; and why sharded data cannot feed training (any family's)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Protocol

from data.writing.sharder import shard_dataset

if TYPE_CHECKING:  # annotations only: the step's code is the sharder's (pipelines/code_version.py)
    from pipelines.data_configs import DataConfig
    from pipelines.workflow import StepContext


class _ImageTextRecipe(Protocol):
    """A family's recipe (a pipelines.recipe.Recipe) with an image-text `data` section."""

    @property
    def data(self) -> DataConfig: ...


def _rejects(manifest: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in manifest["rejected"].items()) or "none"
    examples = "; ".join(
        f"{r.get('src', r.get('key'))}: {r['reason']} {r.get('detail', '')}".strip()
        for r in manifest["rejected_samples"][:3]
    )
    return f"rejected by reason: {counts}" + (f" (e.g. {examples})" if examples else "")


def empty_split_reason(manifest: dict, holdout_key: str, holdout: float, source_key: str) -> str | None:
    """Why the sharded data cannot feed training and evaluation (no train or no held-out samples),
    or None when both splits have samples."""
    n = {s: v["samples"] for s, v in manifest["splits"].items()}
    kept = sum(n.values())
    records = next((manifest[k] for k in ("input_records", "input_documents", "input_pairs") if k in manifest), 0)
    if not records:
        return f"the source lists no records ({source_key} {manifest['source']!r}): nothing to train on"
    if not kept:
        return (
            f"no training samples: none of the {records} input records was kept; {_rejects(manifest)}; "
            f"fix {source_key} and rerun"
        )
    if not n.get("train"):
        return (
            f"no training samples: all {kept} kept samples went to the held-out split "
            f"({holdout_key} {holdout}); lower it and rerun"
        )
    if not n.get("eval"):
        return (
            f"no held-out samples for the evaluation ({holdout_key} {holdout}, {n['train']} training samples); "
            f"raise it and rerun"
        )
    return None


def shard_step(recipe: _ImageTextRecipe):
    """The step sharding `recipe.data` (it captures that section only: its code fingerprint is the
    sharder's, not the family's)."""
    data = recipe.data

    def run(ctx: StepContext) -> dict:
        shards_uri = f"{ctx.uri}/shards"
        manifest = shard_dataset(data, shards_uri)
        path = ctx.dir / "manifest.json"  # a local copy for MLflow
        path.write_text(json.dumps(manifest, indent=1))
        if ctx.tracker:
            t = ctx.tracker
            t.log_params({f"data.{k}": v for k, v in dataclasses.asdict(data).items()})
            t.log_metrics(
                {
                    "input_records": manifest["input_records"],
                    "samples": manifest["samples"],
                    "rejected_total": manifest["rejected_total"],
                    **{f"rejected_{k}": v for k, v in manifest["rejected"].items()},
                    **{f"{s}_samples": v["samples"] for s, v in manifest["splits"].items()},
                    "images_per_s": manifest["input_records"] / max(manifest["seconds"], 1e-6),
                }
            )
            t.log_artifact(path)
        per_split = ", ".join(f"{s}: {v['samples']}" for s, v in manifest["splits"].items())
        # a few rejected samples by name (a bad input is a fact about the data, not a warning: the
        # manifest lists them all)
        examples = "; ".join(
            f"{r['key']} {r['reason']} {r['detail']}".strip() for r in manifest["rejected_samples"][:3]
        )
        print(
            f"[shard] {manifest['samples']} samples ({per_split}), "
            f"{manifest['rejected_total']} rejected {manifest['rejected']}"
            + (f" (e.g. {examples}: all in manifest.json)" if examples else "")
            + f", {manifest['shards_written']} shards written, {manifest['shards_skipped']} skipped, "
            f"{manifest['seconds']:.1f}s",
            flush=True,
        )
        return {
            "manifest": f"{shards_uri}/manifest.json",
            "samples": manifest["samples"],
            "train_samples": manifest["splits"].get("train", {}).get("samples", 0),
            "eval_samples": manifest["splits"].get("eval", {}).get("samples", 0),
            "stop": empty_split_reason(manifest, "data.holdout_fraction", data.holdout_fraction, "data.source"),
        }

    return run
