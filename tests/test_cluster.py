"""A two-node Ray cluster on 127.0.0.1 (a head and a second node, each started by `ray start` as its
own process tree), and the workflow submitted to it the way users do: `make submit`. The job is
stopped with `make cancel` in the middle of training, then submitted again with the same workflow
id: it finishes without redoing the shard step, training resumes from its checkpoint, and the two
Ray Train workers ran on different nodes."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def two_nodes(tmp_path):
    from ray.util.state import list_nodes

    port, dash = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONPATH": "",
    }
    # two more Ray nodes on a host where this process may run one already: infra.ray_cluster keeps
    # that one on loopback with this switch, which also forbids joining a cluster, so the nodes must
    # not inherit it
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    # nor may their dashboard agents take the default HTTP port (52365) that the tests' own local
    # Ray (conftest's ray_local) may hold already: each node's agent gets a free one
    agent = [f"--dashboard-agent-listen-port={free_port()}" for _ in range(2)]
    # one host, two nodes: each needs its own temp dir (runtime_env packages live there, per node);
    # short paths, as Ray's unix sockets live under them
    temp = [tempfile.mkdtemp(prefix="rn", dir="/tmp") for _ in range(2)]
    procs = [
        subprocess.Popen(
            [
                BIN / "ray",
                "start",
                "--head",
                f"--temp-dir={temp[0]}",
                f"--port={port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={free_port()}",
                agent[0],
                *common,
            ],
            env=env,
            stdout=open(tmp_path / "head.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]
    address = f"http://127.0.0.1:{dash}"
    try:
        wait_for("the head", lambda: len(list_nodes(address=address)) == 1)
        procs.append(
            subprocess.Popen(
                [BIN / "ray", "start", f"--address=127.0.0.1:{port}", f"--temp-dir={temp[1]}", agent[1], *common],
                env=env,
                stdout=open(tmp_path / "node2.log", "w"),
                stderr=subprocess.STDOUT,
            )
        )
        try:
            wait_for("the second node", lambda: sum(n.state == "ALIVE" for n in list_nodes(address=address)) == 2)
        except TimeoutError:
            raise TimeoutError((tmp_path / "node2.log").read_text()[-3000:]) from None
        yield address
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        for t in temp:
            shutil.rmtree(t, ignore_errors=True)


def make(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_submit_cancel_resubmit_on_two_nodes(two_nodes, tmp_path, monkeypatch):
    from ray.job_submission import JobSubmissionClient

    # a variable the job ships (infra.jobs.SHIPPED_ENV) that the workflow's driver passes to its
    # workers too: the two runtime envs must merge
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    runs = tmp_path / "runs"
    sets = " ".join(
        f"--set {s}"
        for s in [
            f"runs_dir={runs}",
            "data.limit=600",
            "data.shard_samples=200",
            "train.batch_size=32",
            "train.epochs=4",
            "train.checkpoint_every=3",
            "train.log_every=1",
            "train.warmup_steps=2",
            "train.placement=SPREAD",
            "model.vision_layers=2",
            "model.text_layers=2",
        ]
    )
    common = [f"ADDRESS={two_nodes}", "RECIPE=configs/clip_small.yaml", "WORKFLOW=two-nodes", f"ARGS={sets}"]

    first = make("submit", *common, "DETACH=1")
    assert first.returncode == 0, first.stdout + first.stderr
    job = re.search(r"submitted job (\S+)", first.stdout).group(1)
    client = JobSubmissionClient(two_nodes)

    def past_first_checkpoint():  # checkpoints every 3 steps: once step 4 is logged there is one
        logs = client.get_job_logs(job)
        status = str(client.get_job_status(job))
        assert not status.endswith(("FAILED", "SUCCEEDED", "STOPPED")), f"job ended early: {status}\n{logs[-3000:]}"
        return re.search(r"\[train\] \d\d:\d\d:\d\d step [4-9]/", logs)

    wait_for("training past its first checkpoint", past_first_checkpoint, timeout=600, every=1)
    status = make("status", f"ADDRESS={two_nodes}")
    assert job in status.stdout and "RUNNING" in status.stdout, status.stdout + status.stderr

    cancel = make("cancel", f"ADDRESS={two_nodes}", f"JOB={job}")
    assert cancel.returncode == 0 and "STOPPED" in cancel.stdout, cancel.stdout + cancel.stderr
    record = json.loads((runs / "two-nodes/steps/pretrain.json").read_text())
    assert record["status"] != "done"
    assert json.loads((runs / "two-nodes/steps/shard.json").read_text())["status"] == "done"

    second = make("submit", *common)
    log = second.stdout
    assert second.returncode == 0 and "SUCCEEDED" in log, log[-3000:] + second.stderr
    assert "step shard: already done, skipped" in log, log[-3000:]
    assert re.search(r"resuming from checkpoint at step [1-9]", log), log[-3000:]
    nodes = set(re.findall(r"\[train\] rank \d/2 on node (\w+)", log))
    assert len(nodes) == 2, f"training workers on {nodes}: SPREAD should use both nodes"
    recs = {p.stem: json.loads(p.read_text()) for p in (runs / "two-nodes/steps").glob("*.json")}
    assert {k: r["status"] for k, r in recs.items()} == {
        "shard": "done",
        "pretrain": "done",
        "evaluate": "done",
        "register": "done",
    }
    assert recs["shard"]["attempts"] == 1 and recs["pretrain"]["attempts"] == 2
