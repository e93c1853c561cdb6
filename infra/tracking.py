"""MLflow tracking: one parent run per workflow, one nested run per step.

Runs are addressed by id through `MlflowClient`, never through mlflow's global "active run", so the
driver and a Ray Train worker (rank 0 only) can log into the same step run from different processes.
Metrics go in batches (`log_batch`). A tracking server that is down or failing costs a warning,
never the training: metrics are kept in memory and written, in order, once the server answers again
(the next log call after `RETRY_AFTER_S`, and at the end of the run).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, cast
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's HTTP client retries for minutes by default; a training step must not wait that long
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
RETRY_AFTER_S = 30.0  # after a failed write, buffer without calling the server for this long
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def default_tracking_uri(runs_dir: str | Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def public_uri(uri: str) -> str:
    """A tracking URI without a user name or password in it: what a record keeps and a console prints."""
    parts = urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def missing_store(uri: str) -> bool:
    """An embedded (sqlite) store whose file is not there: opening it would create an empty one."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file()


def default_artifact_location(runs_dir: str | Path) -> str:
    """Artifacts of the embedded store live beside its database (MLflow's own default is ./mlruns
    under whatever the current directory happens to be)."""
    return (Path(runs_dir).resolve() / "mlartifacts").as_uri()


class Tracker:
    def __init__(self, tracking_uri: str, run_id: Optional[str] = None):
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.experiment_id: Optional[str] = None  # known once start() opened the run
        self.pending: list = []  # metrics not yet written (server unavailable)
        self.down_since: Optional[float] = None
        self.last_try = 0.0

    def __getstate__(self):  # travels to Ray tasks as (uri, run id); the client is rebuilt there
        return {"uri": self.uri, "run_id": self.run_id}

    def __setstate__(self, state):
        self.__init__(state["uri"], state["run_id"])

    # -- runs -----------------------------------------------------------------------------------
    def start(
        self,
        experiment: str,
        run_name: str,
        parent_id: Optional[str] = None,
        tags: Optional[dict] = None,
        resume_id: Optional[str] = None,
        artifact_location: Optional[str] = None,
    ) -> "Tracker":
        """Open (or re-open, when `resume_id` names an existing run) a run; returns self."""
        if resume_id:
            try:
                self.experiment_id = self.client.get_run(resume_id).info.experiment_id
                self.client.update_run(resume_id, status="RUNNING")
                self.run_id = resume_id
                return self
            except Exception:
                log.warning("MLflow run %s not found: starting a new one", resume_id)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(
                experiment, artifact_location=artifact_location, tags={EXPERIMENT_KIND: MODEL_TRAINING}
            )
        )
        if exp and EXPERIMENT_KIND not in exp.tags:  # opened in MLflow's model-training view, not GenAI's
            self._safe(self.client.set_experiment_tag, exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
        all_tags = {"mlflow.runName": run_name, **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=all_tags).info.run_id
        self.experiment_id = exp_id
        return self

    def end(self, status: str = "FINISHED") -> None:
        self.flush(force=True)
        if self.pending:
            log.warning(
                "MLflow at %s still unavailable: %d metric values of run %s were not written",
                self.uri,
                len(self.pending),
                self.run_id,
            )
        self._safe(self.client.set_terminated, self.run_id, status=status)

    # -- logging --------------------------------------------------------------------------------
    def _safe(self, fn, *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tracking must never stop a training run
            log.warning("MLflow call %s failed: %s", getattr(fn, "__name__", fn), e)
            return None

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        existing = {}
        run = self._safe(self.client.get_run, self.run_id)
        if run is not None:
            existing = run.data.params
        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items()) if k not in existing]
        for i in range(0, len(items), 100):
            self._safe(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Write buffered metrics; False (and they stay buffered) while the server is unavailable."""
        if not self.pending:
            return True
        now = time.time()
        if self.down_since is not None and not force and now - self.last_try < RETRY_AFTER_S:
            return False
        self.last_try = now
        while self.pending:
            try:
                # a metric is only logged on an open run (start(), or its id given); no check that could
                # raise here: tracking must never stop a training run
                self.client.log_batch(cast(str, self.run_id), metrics=self.pending[:500])
            except Exception as e:  # noqa: BLE001  (tracking must never stop a training run)
                if self.down_since is None:
                    self.down_since = now
                    log.warning(
                        "MLflow at %s unavailable (%s): buffering metrics, retrying every %.0fs",
                        self.uri,
                        str(e).splitlines()[0][:200],
                        RETRY_AFTER_S,
                    )
                return False
            del self.pending[:500]
        if self.down_since is not None:
            log.warning("MLflow at %s back after %.0fs: buffered metrics written", self.uri, now - self.down_since)
            self.down_since = None
        return True

    def set_experiment_tag(self, key: str, value: str) -> None:
        """A tag of the run's experiment (the saved views of the UI: infra/mlflow_views.py)."""
        self._safe(self.client.set_experiment_tag, self.experiment_id, key, value)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self._safe(self.client.set_tag, self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._safe(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        elif path.exists():
            self._safe(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict], name: str) -> None:
        """A table (MLflow's table artifact, shown in the UI's evaluation view) from a list of rows."""
        if rows:
            self._safe(self.client.log_table, self.run_id, {k: [r[k] for r in rows] for k in rows[0]}, name)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        hist = self._safe(self.client.get_metric_history, self.run_id, key) or []
        return sorted((m.step, m.value) for m in hist)


def plot_curves(tracker: Tracker, keys: list[str], out: Path) -> Optional[Path]:
    """A PNG of the metric histories `keys` (one panel each), for the run's artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: tracker.metric_history(k) for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.4), squeeze=False)
    for ax, (k, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
