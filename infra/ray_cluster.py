"""Start or join a Ray cluster: a local one on loopback by default, `address` when given."""

from __future__ import annotations

import os

from infra import worker_crashes
from infra.cache import cache_dir

# Ray 2.60 turns token auth on by default; a local single-user cluster on loopback does not need it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Settings workers need, passed in the runtime env: Ray workers inherit the environment of the node
# they run on (for a local cluster: this process's), not the shell's. Never secrets: Ray writes a
# runtime env's variables in plain text into its session logs (runtime_env_agent.log). Credentials
# reach workers the way Ray deployments pass them: inherited from the environment the nodes were
# started in (a local cluster is started by this process, so it has the shell's AWS_* variables),
# or the nodes' own AWS config / instance role / Kubernetes secret.
FORWARDED_ENV = (
    "PRETRAIN_CACHE",
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "MLFLOW_S3_ENDPOINT_URL",
    "CI",
)


def worker_env() -> dict[str, str]:

    if "AWS_ENDPOINT_URL" in os.environ:  # MLflow's S3 artifact store reads its own variable
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["PRETRAIN_CACHE"] = str(cache_dir())
    env.setdefault("OMP_NUM_THREADS", "1")
    env["LIBC_FATAL_STDERR_"] = "1"  # glibc's "malloc(): ..." into the worker's log, not a terminal
    env["RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS"] = "0"
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # worker prints reach the driver once, unchanged
    return env


def pin_cluster_address() -> None:
    """Run at every worker's start (the runtime env's setup hook): RAY_ADDRESS names the worker's
    own cluster. Ray's state API, which Ray Train's placement-group cleaner asks every second
    whether the training controller lives, finds its cluster by RAY_ADDRESS, else by looking for
    one on the machine; beside a second local cluster (a user's other run, a test's) it found two,
    and the cleaner's thread died with a `Found multiple active Ray instances` traceback."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": worker_env(), "worker_process_setup_hook": "infra.ray_cluster.pin_cluster_address"}
    if address:
        # inside a Ray job (make submit) the job's runtime env already sets some of these variables,
        # to the same values: Ray refuses the repeat unless told to merge
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # no node of a local cluster is ever preempted: Ray Train's watcher of preemption notices
        # (an actor per training run) would only cost a process and print an error line each run
        # (its restartable actor's arguments sit in the object store); a cluster keeps it
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Ray Train's controller takes in one worker report (a checkpoint) per poll, every 2 s by
        # default: a run that checkpointed at its last steps waited seconds for its own end (5.3 s
        # from the last step of a 20-step run to its return; at 0.5 s, 1.7 s). A poll costs the
        # controller a health check of each worker: nothing on one machine.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        # the dashboard (on loopback) serves the state API that Ray Train's cleanup relies on
        # address="local": always a new local instance (never a stale one from an earlier session)
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=True,
            configure_logging=True,
            logging_level="WARNING",  # type: ignore[arg-type]  # Ray takes a level name too (its default is "info")
        )

    worker_crashes.install()  # a dead worker: one line on this console, its dump in its log file
