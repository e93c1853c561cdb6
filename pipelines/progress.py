"""What `make status` knows of a training step beyond its record: how often Ray Train restarted its
worker group (training/starts.py, beside its checkpoints) and, while it runs, where it is (step of
total, the newest of its latest checkpoint and its MLflow run's latest logged step), how fast it goes
and when it ends. Every source is optional: a step without MLflow still shows its checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from infra.storage import Store, is_s3, join
from infra.tracking import default_tracking_uri, missing_store
from training import starts
from training.checkpoint.writes import EXPERIMENT


def existing_store(uri: str) -> Optional[Store]:
    """A Store on `uri`, or None for a local folder that is not there (a Store would create it)."""
    return Store(uri) if is_s3(uri) or Path(uri).is_dir() else None


def step_store(root: str, workflow_id: str, rec: dict) -> Optional[Store]:
    """The results folder of the step's current fingerprint (`<root>/<workflow>/<step>-<fp>`)."""
    if not rec.get("fingerprint"):
        return None
    return existing_store(join(join(str(root), workflow_id), f"{rec['name']}-{rec['fingerprint']}"))


def latest_checkpoint(store: Store) -> Optional[int]:
    """The step of the newest checkpoint Ray Train wrote under the step's storage."""
    ray_dir = existing_store(store.uri(EXPERIMENT))
    if ray_dir is None:
        return None
    steps = [starts.step_of(n) for n in ray_dir.list_dirs()]
    return max((s for s in steps if s is not None), default=None)


def tracking_uri(explicit: str, recorded: str, runs_dir: str) -> Optional[str]:
    """The MLflow store to read: --tracking-uri, else the one the run recorded, else the embedded
    default under the runs folder; a sqlite file that is not there is skipped (never created)."""
    for uri in (explicit, recorded, default_tracking_uri(runs_dir)):
        if uri and not missing_store(uri):
            return uri
    return None


def mlflow_progress(uri: str, run_id: str) -> dict:
    """The run's latest logged step, loss and samples/s, its plan params, and (step, time) of each
    logged loss; {} when the store cannot be read."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        loss = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        speed = sorted(client.get_metric_history(run_id, "samples_per_s"), key=lambda m: m.step)
        params = client.get_run(run_id).data.params
    except Exception:  # a server away or a run deleted: status shows what the storage says
        return {}
    out: dict = {"points": [(m.step, m.timestamp / 1000) for m in loss]}
    if loss:
        out.update(step=loss[-1].step, loss=loss[-1].value)
    if speed:
        out["samples_per_s"] = speed[-1].value
    for key in ("total_steps", "global_batch"):
        if params.get(f"plan.{key}", "").isdigit():
            out[key] = int(params[f"plan.{key}"])
    return out


def steps_per_s(logged: dict, plan: dict, ckpt: Optional[int], now: float) -> Optional[float]:
    """The run's speed: its latest samples/s over its global batch; else the logged steps since the
    worker group's last start over their time; else checkpoints since that start over the time since."""
    batch = plan.get("global_batch") or logged.get("global_batch")
    if logged.get("samples_per_s") and batch:
        return logged["samples_per_s"] / batch
    start = plan.get("last_start") or {}
    recent = [(s, t) for s, t in logged.get("points", []) if t >= start.get("at", 0)]
    if len(recent) >= 2 and recent[-1][1] > recent[0][1]:
        return (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])
    done = (ckpt or 0) - (start.get("from_step") or 0)
    if start.get("at") and done > 0 and now > start["at"]:
        return done / (now - start["at"])
    return None


def training_progress(store: Store, plan: dict, explicit_uri: str, runs_dir: str, rec: dict) -> dict:
    """A running training step: {step, total, loss, eta_s}, each where known."""
    now = time.time()
    ckpt = latest_checkpoint(store)
    run_id = rec.get("mlflow_run_id") or plan.get("mlflow_run_id")
    uri = tracking_uri(explicit_uri, plan.get("tracking_uri", ""), runs_dir) if run_id else None
    logged = mlflow_progress(uri, run_id) if uri and run_id else {}
    step = max(ckpt or 0, logged.get("step") or 0)
    out = {"step": step, "total": plan.get("total_steps") or logged.get("total_steps"), "loss": logged.get("loss")}
    rate = steps_per_s(logged, plan, ckpt, now)
    if out["total"] and rate:
        out["eta_s"] = max(0.0, (out["total"] - step) / rate)
    return out


def train_summary(store: Optional[Store]) -> dict:
    """The step's worker-group starts and plan (training/starts.py), {} for a step that trains nothing."""
    try:
        return (starts.summary(store) if store else None) or {}
    except Exception:  # an unreadable record: the line goes without restarts
        return {}
