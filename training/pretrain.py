"""Driver side of training (pretraining and fine-tuning): run the engine under Ray Train's
TorchTrainer, export the model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from training.checkpoint import writes as checkpointing
from training.checkpoint.model_file import MODEL_FILE, export_model, read_model_file
from training.divergence import DIVERGED, DivergedError
from training.engine import train_loop_per_worker
from training.tasks import TaskOptions

__all__ = ["run_pretrain", "run_training", "read_model_file", "MODEL_FILE"]


def run_pretrain(recipe, manifest_path, out_dir: Path, **kwargs) -> dict:
    """Pretrain `recipe.model` with `recipe.train` (see run_training)."""
    return run_training(recipe.train, recipe.model, manifest_path, out_dir, **kwargs)


def run_training(tcfg, model_cfg, manifest_path, out_dir: Path, task: Optional[TaskOptions] = None,
                 mlflow_run_id: Optional[str] = None, tracking_uri: str = "",
                 storage_uri: Optional[str] = None, callbacks: tuple = ()) -> dict:
    """Train `model_cfg` (its config names its task, training/tasks.py; `task`: the task's
    options, a TaskOptions) on the `train` split of `manifest_path`; checkpoints live under `<storage_uri>/ray`
    (default: `out_dir`; an s3:// URI works too), the final model (weights + model config, no
    optimizer) in `out_dir/model.pt`, uploaded to `<storage_uri>/model.pt` when that is remote.
    Resumes when the storage holds an earlier, unfinished run. `callbacks`: more training.callbacks
    objects for every worker's loop, after the built-in ones (pickled to the workers)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from data.writing.sharder import read_manifest, shard_urls

    manifest = read_manifest(manifest_path)
    train_samples = manifest["splits"].get("train", {}).get("samples", 0)
    if not train_samples:
        raise ValueError(f"{manifest_path}: no training samples (rejected: {manifest.get('rejected', {})})")
    if train_samples < tcfg.batch_size * tcfg.num_workers:
        raise ValueError(f"{manifest_path}: {train_samples} training samples, fewer than one global "
                         f"batch (train.batch_size {tcfg.batch_size} x train.num_workers {tcfg.num_workers})")
    config = {
        "train": tcfg,
        "model": model_cfg,
        "task": task or TaskOptions(),
        "urls": shard_urls(manifest_path, "train"),
        "train_samples": train_samples,
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "callbacks": list(callbacks),
    }
    from infra.storage import Store, is_s3
    from training.tasks import make_task
    make_task(config)   # the task's own checks (e.g. BLIP and ZeRO-3) fail here, before any worker starts

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    remote = storage_uri if storage_uri and is_s3(storage_uri) else None
    config["storage"] = remote or str(out_dir)
    checkpointing.check_writable(config["storage"])
    Store(config["storage"]).delete(DIVERGED)   # from an earlier attempt
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
                                     resources_per_worker={"CPU": tcfg.cpus_per_worker},
                                     placement_strategy=tcfg.placement),
        run_config=RunConfig(name=checkpointing.EXPERIMENT, storage_path=config["storage"],
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=tcfg.max_failures),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    try:
        result = trainer.fit()
    except Exception as e:   # a checkpoint that could not be written: say so plainly
        clear = checkpointing.clear_error(e)
        if clear is None:
            raise
        raise clear from None
    if Store(config["storage"]).exists(DIVERGED):
        raise DivergedError(Store(config["storage"]).read_text(DIVERGED))
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = export_model(Path(d), out_dir / MODEL_FILE)
    model_path = out_dir / MODEL_FILE
    (out_dir / "loss_history.json").write_text(json.dumps(state["loss_history"]))
    if remote:
        store = Store(remote)
        store.put_file(model_path, MODEL_FILE, keep=True)
        model_path = store.uri(MODEL_FILE)
        store.write_text("loss_history.json", json.dumps(state["loss_history"]))
    return {"model": str(model_path), "checkpoint": result.checkpoint.path, "steps": state["step"],
            "final_loss": (result.metrics or {}).get("loss"), "loss_history": str(out_dir / "loss_history.json"), "resumed_from": state.get("resumed_from"),
            **throughput(result.metrics or {})}


def throughput(metrics: dict) -> dict:
    """Steady-state samples/s, MFU, model TFLOP/s, FLOPs per sample and compile time of a finished
    run (rank 0's last report; None where not measured)."""
    out = {"samples_per_s": metrics.get("run_samples_per_s")}
    for k in ("mfu", "model_tflops_per_s", "flops_per_sample", "compile_s"):
        out[k] = metrics.get(k)
    return out
