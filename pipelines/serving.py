"""`make serve RUN=models:/<name>/<version> [PORT=5001] [TRACKING=...]`: a registered model behind
MLflow's scoring server (`mlflow models serve`, REST on 127.0.0.1 only) in this project's virtual
environment, the tracking store the workflows write by default (runs/mlflow.db) or the one named.

MLflow starts its server as `exec uvicorn ...` through bash: uvicorn must be on PATH, which it is
not when the venv is not activated (`.venv/bin/mlflow models serve` fails with `exec: uvicorn: not
found`). The command below runs this interpreter's mlflow with this interpreter's bin folder first
on PATH, so the server runs in the same environment whether or not it is activated."""

from __future__ import annotations

import os
import sys

from infra.local_server import HOST, server_env
from infra.tracking import public_uri
from pipelines.register import workflow_of_version

DEFAULT_PORT = 5001  # make mlflow-server takes 5000


def serve_command(model_uri: str, port: int) -> list[str]:
    """`mlflow models serve` of `model_uri` with this interpreter, in its own environment (no
    virtualenv or conda built from the model's requirements), one worker, loopback only."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "--model-uri",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def check_model_uri(model_uri: str, tracking_uri: str) -> str:
    """The workflow the registered version `model_uri` comes from; a ValueError naming what is
    wrong (not a models:/ URI, no such version) before a server starts."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri}: expected models:/<name>/<version> (a registered model version)")
    return workflow_of_version(model_uri, tracking_uri)


def usage(model_uri: str, port: int, columns: list[tuple[str, str]]) -> str:
    """How to call it: MLflow's JSON, a record per row with the model's input `columns` (name,
    type); a binary column (images) as base64 text, "" where a row has none (the server refuses null)."""
    url = f"http://{HOST}:{port}"
    values = {"binary": "\"'$(base64 -w0 FILE)'\"", "string": '"..."'}
    row = ", ".join(f'"{n}": {values.get(t, "...")}' for n, t in columns)
    lines = [
        f"serving {model_uri} on {url}/invocations (health: {url}/ping; Ctrl-C stops it), e.g.",
        f"  curl -s {url}/invocations -H 'Content-Type: application/json' -d '{{\"dataframe_records\": [{{{row}}}]}}'",
    ]
    if "binary" in dict(columns).values():
        lines.append('  a binary column: base64 text, "" where a row has none (not null)')
    return "\n".join(lines)


def input_columns(model_uri: str) -> list[tuple[str, str]]:
    """(name, MLflow type) of each input column of the model's signature."""
    from mlflow.models import get_model_info

    signature = get_model_info(model_uri).signature
    return [(c.name, c.type.name) for c in signature.inputs.inputs] if signature else []


def serve(model_uri: str, tracking_uri: str, port: int = DEFAULT_PORT) -> None:
    """Check the version, say how to call it, then become the server (exec: Ctrl-C and a kill of
    this process reach MLflow's, which stops its uvicorn)."""
    workflow = check_model_uri(model_uri, tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    print(f"{model_uri}: registered from workflow {workflow} ({public_uri(tracking_uri)})", flush=True)
    print(usage(model_uri, port, input_columns(model_uri)), flush=True)
    os.execve(sys.executable, serve_command(model_uri, port), server_env(tracking_uri))
