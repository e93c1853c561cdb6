"""Steps every recipe shares: shard a source, train a model (pretraining or fine-tuning)."""
from __future__ import annotations

import dataclasses
import json

from pipelines.recipe import Recipe, flatten
from pipelines.workflow import StepContext
from training.config import TaskOptions


def _rejects(manifest: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in manifest["rejected"].items()) or "none"
    examples = "; ".join(f"{r.get('src', r.get('key'))}: {r['reason']} {r.get('detail', '')}".strip()
                         for r in manifest["rejected_samples"][:3])
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
        return (f"no training samples: none of the {records} input records was kept; {_rejects(manifest)}; "
                f"fix {source_key} and rerun")
    if not n.get("train"):
        return (f"no training samples: all {kept} kept samples went to the held-out split "
                f"({holdout_key} {holdout}); lower it and rerun")
    if not n.get("eval"):
        return (f"no held-out samples for the evaluation ({holdout_key} {holdout}, {n['train']} training samples); "
                f"raise it and rerun")
    return None


def shard_step(recipe: Recipe):
    def run(ctx: StepContext) -> dict:
        from data.writing.sharder import shard_dataset

        shards_uri = f"{ctx.uri}/shards"
        manifest = shard_dataset(recipe.data, shards_uri)
        path = ctx.dir / "manifest.json"      # a local copy for MLflow
        path.write_text(json.dumps(manifest, indent=1))
        if ctx.tracker:
            t = ctx.tracker
            t.log_params({f"data.{k}": v for k, v in recipe.to_dict()["data"].items()})
            t.log_metrics({"input_records": manifest["input_records"], "samples": manifest["samples"],
                           "rejected_total": manifest["rejected_total"],
                           **{f"rejected_{k}": v for k, v in manifest["rejected"].items()},
                           **{f"{s}_samples": v["samples"] for s, v in manifest["splits"].items()},
                           "images_per_s": manifest["input_records"] / max(manifest["seconds"], 1e-6)})
            t.log_artifact(path)
        per_split = ", ".join(f"{s}: {v['samples']}" for s, v in manifest["splits"].items())
        print(f"[shard] {manifest['samples']} samples ({per_split}), "
              f"{manifest['rejected_total']} rejected {manifest['rejected']}, "
              f"{manifest['shards_written']} shards written, {manifest['shards_skipped']} skipped, "
              f"{manifest['seconds']:.1f}s", flush=True)
        return {"manifest": f"{shards_uri}/manifest.json", "samples": manifest["samples"],
                "train_samples": manifest["splits"].get("train", {}).get("samples", 0),
                "eval_samples": manifest["splits"].get("eval", {}).get("samples", 0),
                "stop": empty_split_reason(manifest, "data.holdout_fraction", recipe.data.holdout_fraction,
                                           "data.source")}
    return run


def train_step(recipe: Recipe, tracking_uri: str, callbacks: tuple = (), curve_keys=("loss", "lr", "samples_per_s"),
               prepare=None):
    """Train `recipe.model` with `recipe.train` on the shard step's train split; `prepare(ctx)` may
    return other arguments of run_training (model_cfg, tcfg, manifest_path, task): fine-tuning,
    continued pretraining. MLflow gets the configs actually trained with; `callbacks` go to every
    worker's training loop (run_training)."""
    def run(ctx: StepContext) -> dict:
        from infra.storage import Store
        from infra.tracking import plot_curves
        from training.pretrain import run_training

        args = {"tcfg": recipe.train, "model_cfg": recipe.model, "manifest_path": ctx.inputs["shard"]["manifest"],
                "task": TaskOptions(init_from=recipe.train.init_from), **(prepare(ctx) if prepare else {})}
        cfg_path = ctx.dir / "recipe.json"
        cfg_path.write_text(json.dumps(recipe.to_dict(), indent=1))
        if ctx.uri != str(ctx.dir):
            Store(ctx.uri).write_text("recipe.json", cfg_path.read_text())
        t = ctx.tracker
        if t:
            model = dataclasses.asdict(args["model_cfg"])
            for k, v in model.items():   # long lists (a vocabulary, class names) by their length
                if isinstance(v, (list, tuple)) and len(v) > 16:
                    model[k] = f"<{len(v)} items>"
            t.log_params(flatten({"model": model, "train": dataclasses.asdict(args["tcfg"]), "task": dataclasses.asdict(args["task"])}))
            t.log_artifact(cfg_path)
        out = run_training(out_dir=ctx.dir, mlflow_run_id=t.run_id if t else None, tracking_uri=tracking_uri,
                           callbacks=callbacks, storage_uri=ctx.uri, **args)
        out["recipe"] = f"{ctx.uri}/recipe.json"
        if t:
            plot = plot_curves(t, list(curve_keys), ctx.dir / "loss_curve.png")
            if plot:
                t.log_artifact(plot)
                if ctx.parent:   # the workflow's run shows each training step's curves
                    ctx.parent.log_artifact(plot, ctx.name)
            t.log_artifact(ctx.dir / "model.pt", "model")
        if ctx.parent:
            ctx.parent.log_metrics({f"{ctx.name}/{k}": out[k] for k in ("final_loss", "samples_per_s", "mfu", "steps")
                                    if isinstance(out.get(k), (int, float))})
        return out
    return run


def save_metrics(ctx: StepContext, metrics: dict) -> dict:
    """metrics.json in the step folder (and its storage), the metrics in MLflow; the step output."""
    from infra.storage import Store

    text = json.dumps(metrics, indent=1)
    (ctx.dir / "metrics.json").write_text(text)
    if ctx.uri != str(ctx.dir):
        Store(ctx.uri).write_text("metrics.json", text)
    if ctx.tracker:
        ctx.tracker.log_metrics(metrics)
        ctx.tracker.log_artifact(ctx.dir / "metrics.json")
    if ctx.parent:   # the workflow's run: every step's metrics, named <step>/<metric>
        ctx.parent.log_metrics({f"{ctx.name}/{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {"metrics": metrics, "metrics_file": f"{ctx.uri}/metrics.json"}
