"""The soak's training callback (pickled to the workers by value): each rank records the step it
has reached; on its first step it turns on faulthandler for every thread and applies the soak's
switches (MLflow's system-metrics thread off; MLflow writes on the training thread)."""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

from training.callbacks import Callback, MetricsLog, SystemMetrics


class Inline:
    """MetricsLog's writer, without a thread: each MLflow write happens where it is submitted."""

    def submit(self, fn, *args) -> None:
        fn(*args)

    def close(self) -> None:
        pass


class Probe(Callback):
    def __init__(self, out_dir: str, system_metrics: bool, mlflow_thread: bool, sample_s: float = 0.0):
        self.out_dir, self.system_metrics, self.mlflow_thread = out_dir, system_metrics, mlflow_thread
        self.sample_s = sample_s  # > 0: MLflow's system metrics sampled this often (not every 10 s)
        self.started = False

    def _start(self, run) -> None:
        self.started = True
        faulthandler.enable(file=sys.stderr, all_threads=True)
        for c in run.callbacks:
            if isinstance(c, SystemMetrics) and c.monitor and (self.sample_s or not self.system_metrics):
                c.monitor.finish()
                c.monitor = None
                if self.sample_s and self.system_metrics:
                    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                    c.monitor = SystemMetricsMonitor(
                        run.tracker.run_id,
                        sampling_interval=self.sample_s,
                        resume_logging=True,
                        tracking_uri=run.tracker.uri,
                    )
                    c.monitor.start()
            if isinstance(c, MetricsLog) and not self.mlflow_thread:
                c.writer = Inline()

    def after_step(self, run, out) -> bool:
        if not self.started:
            self._start(run)
        Path(self.out_dir, f"rank{run.rank}").write_text(str(run.step))
        return False
