"""A real MLflow tracking server (`mlflow server` on 127.0.0.1) that goes down in the middle of a run
and comes back: logging never raises and never blocks for long, a warning says metrics are being
buffered, and once the server is back every value is there, in order."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import infra.tracking as tracking
from infra.tracking import Tracker
from tests.servers import ClosingListener, free_port, wait_for

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def start_server(port: int, tmp: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [
            BIN / "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp / "artifacts"),
        ],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the mlflow server", lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok, every=0.5)
    except Exception:
        p.kill()
        raise
    return p


def stop_server(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(timeout=30)


def test_metrics_survive_a_tracking_server_outage(tmp_path, monkeypatch, caplog):
    # the interval must outlast one failed write (MLflow's own retries back off 0 s, then 2-3 s),
    # else "retried every RETRY_AFTER_S" and "retried on every call" look the same
    monkeypatch.setattr(tracking, "RETRY_AFTER_S", 10.0)
    # While the server is down, its port is held by a listener that accepts and at once closes
    # each connection, counting them: the client's real network attempts, seen from outside it
    # (a wrapper around `log_batch` would not see the retries MLflow's HTTP client makes inside one
    # call, nor catch a write that bypassed it). One write = 1 + MLFLOW_HTTP_REQUEST_MAX_RETRIES
    # connections (urllib3 retries a dropped connection for every method, as MLflow sets it up).
    per_write = 1 + int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    port = free_port()
    server = start_server(port, tmp_path)
    listener = None
    try:
        t = Tracker(f"http://127.0.0.1:{port}").start("outage", "pretrain")
        for step in range(1, 4):
            t.log_metrics({"loss": 10.0 - step}, step)
        stop_server(server)
        listener = ClosingListener(port)

        caplog.set_level(logging.WARNING, logger="infra.tracking")
        start = time.time()
        for step in range(4, 10):  # "training" goes on while the server is down
            t.log_metrics({"loss": 10.0 - step}, step)
        assert time.time() - start < 60  # a failed write is retried every RETRY_AFTER_S, not per call
        assert len(t.pending) == 6
        assert sum("buffering metrics" in r.getMessage() for r in caplog.records) == 1
        # only the first of the 6 calls tried the server, and all 6 fell within one interval
        assert len(listener.times) == per_write, listener.times
        assert time.time() - start < tracking.RETRY_AFTER_S

        # once the interval has passed, the next call tries again (once), and buffers again
        first_try = listener.times[0]
        wait_for("the retry interval", lambda: time.time() - first_try > tracking.RETRY_AFTER_S, every=0.1)
        t.log_metrics({"loss": 0.0}, 10)
        assert len(listener.times) == 2 * per_write, listener.times
        assert listener.times[per_write] - first_try > tracking.RETRY_AFTER_S
        assert len(t.pending) == 7
        assert sum("buffering metrics" in r.getMessage() for r in caplog.records) == 1
        second_try = listener.times[per_write]
        listener.close()
        listener = None

        server = start_server(port, tmp_path)
        wait_for("the retry interval", lambda: time.time() - second_try > tracking.RETRY_AFTER_S, every=0.1)
        t.log_metrics({"loss": -1.0}, 11)  # the next call after the retry interval writes everything
        assert t.pending == []
        assert any("buffered metrics written" in r.getMessage() for r in caplog.records)
        t.end()
        assert [(s, v) for s, v in t.metric_history("loss")] == [(s, 10.0 - s) for s in range(1, 12)]
    finally:
        if listener is not None:
            listener.close()
        stop_server(server)
