"""One workflow id runs once at a time (a lease in its storage, local or S3, renewed by a
heartbeat): two runs started together -> one runs, the other is refused naming the holder; a run
started later while the first is alive is refused too (the heartbeat keeps the lease fresh); a
driver killed with SIGKILL leaves a lease that a rerun on the same host takes over at once, and one
from another host is taken over once it is older than its TTL; a run whose lease was taken over
writes nothing more. Real processes throughout."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.lease import LeaseHeld
from tests.servers import wait_for

ROOT = Path(__file__).resolve().parents[1]
TTL = 3.0

# a driver: a two-step workflow; step "a" waits for the file `finish` (or steals the lease first)
DRIVER = r"""
import json, os, sys, time
from pathlib import Path
from pipelines.lease import LeaseHeld, LeaseLost
from pipelines.workflow import Step, Workflow
runs, storage, control = sys.argv[1], sys.argv[2], Path(sys.argv[3])
while not (control / "go").exists():
    time.sleep(0.01)

def a(ctx):
    print("holder", os.getpid(), flush=True)
    if (control / "steal").exists():   # as if another run had taken the lease over
        from infra.storage import Store
        Store(storage + "/wf" if storage else runs + "/wf").write_text(
            "lease.json", json.dumps({"token": "other", "host": "elsewhere", "pid": 1, "started": 0, "ttl_s": 600}))
    while not (control / "finish").exists():
        time.sleep(0.05)
    return {"pid": os.getpid()}

wf = Workflow("wf", runs, [Step("a", a, {}), Step("b", lambda ctx: {"ok": True}, {}, deps=["a"])], storage=storage)
try:
    print(json.dumps(wf.run()), flush=True)
except (LeaseHeld, LeaseLost) as e:
    print(f"REFUSED {e}", flush=True)
    sys.exit(75)
"""


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(runs folder, storage URI or "", a reader of the workflow's records)."""
    runs = tmp_path / "runs"
    if request.param == "local":
        return runs, "", lambda name: json.loads((runs / "wf" / name).read_text())
    request.getfixturevalue("s3_server")
    from infra.storage import Store, s3_client

    bucket = f"lease-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    s3_client().create_bucket(Bucket=bucket)
    return runs, f"s3://{bucket}/team", lambda name: json.loads(Store(f"s3://{bucket}/team/wf").read_text(name))


def _driver(tmp_path, runs, storage, control):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PRETRAIN_LEASE_TTL_S=str(TTL), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(script), str(runs), storage, str(control)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_runs_started_together_one_runs_and_the_other_is_refused(tmp_path, where):
    runs, storage, record = where
    control = tmp_path / "control"
    control.mkdir()
    procs = [_driver(tmp_path, runs, storage, control) for _ in range(2)]
    time.sleep(1.5)  # both imported and waiting: start them at the same moment
    (control / "go").touch()
    loser = wait_for(
        "one run to be refused", lambda: next((p for p in procs if p.poll() is not None), None), timeout=60, every=0.05
    )
    winner = procs[1 - procs.index(loser)]
    out = loser.stdout.read()
    assert loser.returncode == 75, out
    assert f"REFUSED workflow wf is already running (host {socket.gethostname()}, pid {winner.pid}, started " in out
    # three TTLs later the winner, still running, has kept its lease fresh: a third run is refused too
    time.sleep(3 * TTL)
    third = _driver(tmp_path, runs, storage, control)
    assert third.wait(timeout=60) == 75 and f"pid {winner.pid}" in third.stdout.read()
    (control / "finish").touch()
    assert winner.wait(timeout=60) == 0, winner.stdout.read()
    assert record("workflow.json")["runs"] == 1 and record("workflow.json")["status"] == "done"
    assert record("steps/a.json")["attempts"] == 1 and record("steps/a.json")["outputs"] == {"pid": winner.pid}


def test_a_killed_driver_leaves_a_lease_that_a_rerun_takes_over(tmp_path, where):
    runs, storage, record = where
    control = tmp_path / "control"
    control.mkdir()
    (control / "go").touch()
    first = _driver(tmp_path, runs, storage, control)
    while not first.stdout.readline().startswith("holder"):  # inside step a, holding the lease
        assert first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert record("lease.json")["pid"] == first.pid  # never released: the driver was killed
    (control / "finish").touch()
    rerun = _driver(tmp_path, runs, storage, control)  # same host, dead pid: taken over at once
    assert rerun.wait(timeout=60) == 0, rerun.stdout.read()
    rec = record("steps/a.json")
    assert rec["status"] == "done" and rec["attempts"] == 2 and rec["outputs"] == {"pid": rerun.pid}


def test_a_lease_from_another_host_is_taken_over_only_after_its_ttl(tmp_path, where, monkeypatch):
    import pipelines.lease as lease_mod
    from infra.storage import Store
    from pipelines.workflow import Step, Workflow

    runs, storage, record = where
    monkeypatch.setattr(lease_mod, "TTL_S", TTL)
    store = Store(f"{storage}/wf" if storage else runs / "wf")
    store.write_text(
        "lease.json",
        json.dumps({"token": "x", "host": "other-host", "pid": 4242, "ttl_s": TTL, "started": time.time()}),
    )
    wf = Workflow("wf", runs, [Step("a", lambda ctx: {"ran": True}, {})], storage=storage)
    with pytest.raises(
        LeaseHeld,
        match=r"workflow wf is already running \(host other-host, pid 4242, started .*"
        r"stale after 3 s without renewal\)",
    ):
        wf.run()
    time.sleep(TTL + 1.5)  # S3 ages come from HTTP dates: whole seconds
    assert wf.run() == {"a": {"ran": True}}
    assert not store.exists("lease.json")  # released at the end


def test_a_run_whose_lease_was_taken_over_writes_nothing_more(tmp_path, where):
    runs, storage, record = where
    control = tmp_path / "control"
    control.mkdir()
    for name in ("go", "steal"):
        (control / name).touch()
    run = _driver(tmp_path, runs, storage, control)
    out = run.communicate(timeout=60)[0]
    assert run.returncode == 75 and "another run took the lease over; this run wrote nothing more" in out, out
    assert record("steps/a.json")["status"] == "running"  # not marked interrupted by the run that lost it
    assert record("lease.json")["host"] == "elsewhere"


def test_the_cli_refuses_a_second_run_before_ray_starts(tmp_path):
    import psutil

    held = tmp_path / "runs" / "busy"
    held.mkdir(parents=True)
    (held / "lease.json").write_text(
        json.dumps(
            {
                "token": "t",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "proc_start": psutil.Process().create_time(),
                "started": time.time(),
                "ttl_s": 600,
            }
        )
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "configs/clip_small.yaml",
            "--workflow-id",
            "busy",
            "--set",
            f"runs_dir={tmp_path / 'runs'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, RAY_TMPDIR=str(tmp_path / "ray")),
        timeout=120,
    )
    assert r.returncode == 75, r.stderr[-2000:]
    assert f"error: workflow busy is already running (host {socket.gethostname()}, pid {os.getpid()}" in r.stderr
    assert not (tmp_path / "ray").exists() and not (held / "workflow.json").exists()
    (held / "workflow.json").write_text(json.dumps({"id": "busy", "steps": [], "status": "running"}))
    status = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "status", "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"running now: host {socket.gethostname()}, pid {os.getpid()}" in status.stdout, status.stdout
