"""What the project's MLflow servers (`make serve`, `make mlflow-ui`) share: loopback only, and this
interpreter's environment whether or not its venv is activated.

MLflow starts its servers as `exec uvicorn ...` through bash: uvicorn must be on PATH, which it is
not when the venv is not activated (`.venv/bin/mlflow models serve` fails with `exec: uvicorn: not
found`). The environment below puts this interpreter's bin folder first."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HOST = "127.0.0.1"


def server_env(tracking_uri: str, environ: dict | None = None) -> dict[str, str]:
    """The environment: this interpreter's bin folder (its uvicorn) first on PATH, the tracking
    store MLflow reads (and resolves models:/ in)."""
    env = dict(os.environ if environ is None else environ)
    bin_dir = str(Path(sys.executable).parent)  # not resolved: a venv's python is a link out of it
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env
