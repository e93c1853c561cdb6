"""Each start of a training run's Ray Train worker group, recorded beside its checkpoints
(`<storage>/worker_starts.json`), so `make status` can say how often Ray Train restarted the
workers after a failure (train.max_failures) and how long the run is while it runs.

The driver adds a fit (one `trainer.fit()`, i.e. one attempt of the workflow step, with the run's
plan and MLflow run) before any worker starts; rank 0 of every worker group adds a start. The two
never write at the same time: a worker group starts after the driver's write, and Ray Train starts a
new group only once the old one is gone. A failed write costs a warning, never the training."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Optional

from infra.storage import Store
from infra.tracking import public_uri

STARTS = "worker_starts.json"


def _read(store: Store) -> dict:
    return json.loads(store.read_text(STARTS)) if store.exists(STARTS) else {"fits": [], "starts": []}


def _append(storage: str, kind: str, item: dict) -> None:
    store = Store(storage)
    data = _read(store)
    data.setdefault(kind, []).append(item)
    store.write_text(STARTS, json.dumps(data, indent=1))


def record_fit(storage: str, total_steps: int, global_batch: int, mlflow_run_id, tracking_uri: str) -> str:
    """Before `trainer.fit()`: the fit's id (handed to the workers), its plan and MLflow run."""
    fit = uuid.uuid4().hex[:12]
    item = {
        "fit": fit,
        "at": time.time(),
        "total_steps": total_steps,
        "global_batch": global_batch,
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": public_uri(tracking_uri) if mlflow_run_id else "",
    }
    try:
        _append(storage, "fits", item)
    except Exception as e:  # the record is for `make status`: never a reason to stop training
        print(f"[train] the run's plan was not recorded in {storage}: {e}", flush=True)
    return fit


def record_start(storage: str, fit: Optional[str], checkpoint_path: Optional[str]) -> None:
    """Rank 0, as its worker group starts: the fit and the checkpoint step it resumes from."""
    item = {"fit": fit, "at": time.time(), "from_step": step_of(checkpoint_path or "")}
    try:
        _append(storage, "starts", item)
    except Exception as e:
        print(f"[train] the worker group's start was not recorded in {storage}: {e}", flush=True)


def step_of(name: str) -> Optional[int]:
    """The step of a checkpoint folder's name or path (`.../checkpoint_00000520`), else None."""
    m = re.search(r"checkpoint_(\d+)/?$", name)
    return int(m.group(1)) if m else None


def summary(store: Store) -> Optional[dict]:
    """What `make status` shows of a training run in `store`: worker-group starts, the restarts of
    the latest fit (the step's latest attempt: every start after its first), its plan and MLflow run,
    the last start."""
    if not store.exists(STARTS):
        return None
    data = _read(store)
    fits, starts = data.get("fits", []), data.get("starts", [])
    per_fit: dict = {}
    for s in starts:
        per_fit[s.get("fit")] = per_fit.get(s.get("fit"), 0) + 1
    last = fits[-1] if fits else {}
    return {
        "starts": len(starts),
        "restarts": max(0, per_fit.get(last.get("fit"), 0) - 1),
        "total_steps": last.get("total_steps"),
        "global_batch": last.get("global_batch"),
        "mlflow_run_id": last.get("mlflow_run_id"),
        "tracking_uri": last.get("tracking_uri", ""),
        "last_start": starts[-1] if starts else None,
    }
