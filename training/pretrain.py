"""Driver side of training (pretraining and fine-tuning): run the engine under Ray Train's
TorchTrainer, export the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from infra.storage import Store, is_s3
from infra.tracking import Tracker
from training import starts
from training.checkpoint import writes as checkpointing
from training.checkpoint.model_file import MODEL_FILE, export_model, read_model_file
from training.config import RunConfig
from training.divergence import DIVERGED, DivergedError
from training.engine import train_loop_per_worker
from training.schedule import plan
from training.tasks import TaskOptions, make_task

__all__ = ["run_pretrain", "run_training", "read_model_file", "MODEL_FILE"]


def run_pretrain(recipe, manifest_path, out_dir: Path, **kwargs) -> dict:
    """Pretrain `recipe.model` with `recipe.train` (see run_training)."""
    return run_training(recipe.train, recipe.model, manifest_path, out_dir, **kwargs)


def run_training(
    tcfg,
    model_cfg,
    manifest_path,
    out_dir: Path,
    task: Optional[TaskOptions] = None,
    mlflow_run_id: Optional[str] = None,
    tracking_uri: str = "",
    storage_uri: Optional[str] = None,
    callbacks: tuple = (),
) -> dict:
    """Train `model_cfg` (its config names its task, training/tasks.py; `task`: the task's
    options, a TaskOptions) on the `train` split of `manifest_path`; checkpoints live under `<storage_uri>/ray`
    (default: `out_dir`; an s3:// URI works too), the final model (weights + model config, no
    optimizer) in `out_dir/model.pt`, uploaded to `<storage_uri>/model.pt` when that is remote.
    Resumes when the storage holds an earlier, unfinished run. `callbacks`: more training.callbacks
    objects for every worker's loop, after the built-in ones (pickled to the workers)."""

    out_dir = Path(out_dir).resolve()
    remote = storage_uri if storage_uri and is_s3(storage_uri) else None
    config = run_config(
        tcfg,
        model_cfg,
        manifest_path,
        task or TaskOptions(),
        remote or str(out_dir),
        mlflow_run_id,
        tracking_uri,
        tuple(callbacks),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpointing.check_writable(config.storage)
    Store(config.storage).delete(DIVERGED)  # from an earlier attempt
    result = fit(config)
    with result.checkpoint.as_directory() as d:
        state = export_model(Path(d), out_dir / MODEL_FILE)
    model_path: str | Path = out_dir / MODEL_FILE
    (out_dir / "loss_history.json").write_text(json.dumps(state["loss_history"]))
    if remote:
        store = Store(remote)
        store.put_file(model_path, MODEL_FILE, keep=True)
        model_path = store.uri(MODEL_FILE)
        store.write_text("loss_history.json", json.dumps(state["loss_history"]))
    return {
        "model": str(model_path),
        "checkpoint": result.checkpoint.path,
        "steps": state["step"],
        "final_loss": (result.metrics or {}).get("loss"),
        "loss_history": str(out_dir / "loss_history.json"),
        "resumed_from": state.get("resumed_from"),
        **throughput(result.metrics or {}),
    }


def run_config(
    tcfg, model_cfg, manifest_path, task: TaskOptions, storage: str, mlflow_run_id, tracking_uri, callbacks: tuple
) -> RunConfig:
    """The workers' frozen configuration, checked on the driver: a train split with at least one
    global micro-batch, and the task's own rules (e.g. BLIP and ZeRO-3) before any worker starts."""
    from data.writing.sharder import read_manifest, shard_urls

    manifest = read_manifest(manifest_path)
    train_samples = manifest["splits"].get("train", {}).get("samples", 0)
    if not train_samples:
        raise ValueError(f"{manifest_path}: no training samples (rejected: {manifest.get('rejected', {})})")
    micro = plan(tcfg, train_samples).global_micro_batch
    if train_samples < micro:
        raise ValueError(
            f"{manifest_path}: {train_samples} training samples, fewer than one global "
            f"batch (train.batch_size {tcfg.batch_size} x train.num_workers {tcfg.num_workers})"
        )
    config = RunConfig(
        model=model_cfg,
        train=tcfg,
        task=task,
        urls=tuple(shard_urls(manifest_path, "train")),
        train_samples=train_samples,
        storage=storage,
        mlflow_run_id=mlflow_run_id,
        tracking_uri=tracking_uri,
        callbacks=callbacks,
    )
    make_task(config)
    return config


def fit(config: RunConfig):
    """Ray Train's TorchTrainer over `config.train.num_workers` workers; its result, with a checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    tcfg = config.train
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"run": config, "fit": record_plan(config)},
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers,
            use_gpu=tcfg.use_gpu,
            resources_per_worker={"CPU": tcfg.cpus_per_worker},
            placement_strategy=tcfg.placement,
        ),
        run_config=RayRunConfig(  # type: ignore[call-arg]  # ray.train's is v2's (with logging_config); mypy sees v1's
            name=checkpointing.EXPERIMENT,
            storage_path=config.storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # a checkpoint that could not be written: say so plainly
        clear = checkpointing.clear_error(e)
        if clear is None:
            raise
        raise clear from None
    if Store(config.storage).exists(DIVERGED):
        raise DivergedError(Store(config.storage).read_text(DIVERGED))
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    return result


def record_plan(config: RunConfig) -> str:
    """The run's length where `make status` reads it while it runs: beside its checkpoints
    (training/starts.py; the fit's id is returned) and as params of its MLflow run."""
    p = plan(config.train, config.train_samples)
    if config.mlflow_run_id:
        Tracker(config.tracking_uri, config.mlflow_run_id).log_params(
            {
                "plan.total_steps": p.total,
                "plan.global_batch": p.global_batch,
                "plan.steps_per_epoch": p.steps_per_epoch,
            }
        )
    return starts.record_fit(config.storage, p.total, p.global_batch, config.mlflow_run_id, config.tracking_uri)


def train_loop(loop_config: dict) -> None:
    """Every worker's entry point: rank 0 records that its worker group started (a restart after
    a failure, when the fit has started one before: training/starts.py), then the engine's loop."""
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        ckpt = ray.train.get_checkpoint()
        starts.record_start(loop_config["run"].storage, loop_config.get("fit"), ckpt.path if ckpt else None)
    train_loop_per_worker(loop_config)


def throughput(metrics: dict) -> dict:
    """Steady-state samples/s, MFU, model TFLOP/s, FLOPs per sample and compile time of a finished
    run (rank 0's last report; None where not measured)."""
    out = {"samples_per_s": metrics.get("run_samples_per_s")}
    for k in ("mfu", "model_tflops_per_s", "flops_per_sample", "compile_s"):
        out[k] = metrics.get(k)
    return out
