"""Submit workflows to a running Ray cluster through the Ray Jobs API; list and stop them.

A job's entrypoint is the same CLI a local run uses (`python -m pipelines.cli run <recipe> ...`);
the project folder is shipped as the job's working_dir (without .venv, runs, pulled, .git), and the
project's requirements go along as a `pip` runtime environment when asked (`requirements=True`;
a cluster built from the project's image has them already). Inside the job, RAY_ADDRESS (set by Ray
Jobs) makes `init_ray` join the cluster. Credentials are never shipped: nodes use their own.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", "runs", "pulled", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache"]
# configuration a job needs to find the same services; secrets stay on the nodes
SHIPPED_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def entrypoint(
    recipe: str, workflow_id: str | None = None, overrides: list[str] | None = None, rerun: list[str] | None = None
) -> str:
    """The command a job runs: exactly what `make pretrain-*` runs locally."""
    args = ["python", "-m", "pipelines.cli", "run", recipe]
    if workflow_id:
        args += ["--workflow-id", workflow_id]
    for o in overrides or []:
        args += ["--set", o]
    for step in rerun or []:
        args += ["--rerun", step]
    return " ".join(shlex.quote(a) for a in args)


def requirements() -> list[str]:

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def runtime_env(with_requirements: bool = False) -> dict:
    env: dict[str, Any] = {
        "working_dir": str(ROOT),
        "excludes": EXCLUDES,
        "env_vars": {k: os.environ[k] for k in SHIPPED_ENV if k in os.environ},
    }
    env["env_vars"]["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    if with_requirements:
        env["pip"] = {"packages": requirements(), "pip_check": False}
    return env


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return JobSubmissionClient(address)


def submit(
    address: str,
    recipe: str,
    workflow_id: str | None = None,
    overrides: list[str] | None = None,
    with_requirements: bool = False,
    follow: bool = True,
    rerun: list[str] | None = None,
) -> tuple[str, str]:
    """Submit; with `follow`, stream the job's logs until it ends. Returns (job id, status)."""
    c = client(address)
    name = workflow_id or Path(recipe).stem
    job_id = c.submit_job(
        entrypoint=entrypoint(recipe, workflow_id, overrides, rerun),
        runtime_env=runtime_env(with_requirements),
        metadata={"recipe": recipe, "workflow_id": name, "submitted_by": "pretrain-pipeline"},
    )
    print(f"submitted job {job_id} to {address}", flush=True)
    if not follow:
        return job_id, str(c.get_job_status(job_id))

    async def stream():
        async for lines in c.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(stream())
    return job_id, wait(c, job_id)


def wait(c, job_id: str, timeout_s: float = 60) -> str:
    end = time.time() + timeout_s
    while True:
        status = str(c.get_job_status(job_id)).rpartition(".")[2]
        if status in TERMINAL or time.time() > end:
            return status
        time.sleep(0.5)


def jobs(address: str) -> list[dict]:
    rows = []
    for j in client(address).list_jobs():
        rows.append(
            {
                "job_id": j.submission_id or j.job_id,
                "status": str(j.status).rpartition(".")[2],
                "entrypoint": j.entrypoint,
                "start_time": j.start_time,
                "metadata": j.metadata or {},
            }
        )
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def cancel(address: str, job_id: str, timeout_s: float = 60) -> str:
    """Stop a job (Ray sends SIGINT, then SIGKILL after a grace period); its final status."""
    c = client(address)
    c.stop_job(job_id)
    return wait(c, job_id, timeout_s)
