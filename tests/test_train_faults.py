"""Faults during training, each injected for real: a worker process SIGKILLed mid-run, checkpoint
storage that fills up (a small tmpfs) and storage that turns read-only (the tmpfs remounted)."""

import json
import subprocess
from pathlib import Path

import pytest

from infra.storage import Store
from tests.faults import faults
from training import starts
from training.checkpoint.writes import CheckpointWriteError, dir_name

pytestmark = pytest.mark.slow
STEPS = 20  # conftest.TINY_STEPS


def _same_curve(a, b):
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (a, b)


def test_a_killed_worker_process_is_restarted_and_training_resumes(train_tiny, tiny_ddp_run, tmp_path):
    # rank 1's process is SIGKILLed after step 8: Ray Train sees the worker group die, starts a new
    # one, and it resumes at the step-5 checkpoint; steps 6-8 are redone, the curve is unchanged.
    # Two restarts allowed: once in ~30 CI runs a worker died of a native crash (SIGSEGV in malloc)
    # before its first checkpoint, and the kill then found the single restart spent; a restart that
    # starts clean (no checkpoint yet) still injects the kill, so the assertions below are unchanged
    # Logged every step to a real MLflow run: steps 6-8 are logged once (the replay is not), and the
    # run's final loss is the one logged at its last step
    from mlflow.tracking import MlflowClient

    from infra.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Tracker(uri).start("tests", "killed", artifact_location=(tmp_path / "art").as_uri())
    resumed = train_tiny(
        tmp_path / "killed",
        "train.max_failures=2",
        "train.log_every=1",
        callbacks=[faults(kill_at_step=8)],
        mlflow_run_id=run.run_id,
        tracking_uri=uri,
    )
    assert resumed["resumed_from"] == 5 and resumed["steps"] == STEPS
    _same_curve(tiny_ddp_run["losses"], resumed["losses"])
    history = MlflowClient(uri).get_metric_history(run.run_id, "loss")
    steps = sorted(m.step for m in history)
    assert steps == list(range(1, STEPS + 1)), steps  # each step once, none twice
    last = max(history, key=lambda m: m.step)
    assert resumed["final_loss"] == pytest.approx(last.value, rel=1e-6), (resumed["final_loss"], last.value)
    # what `make status` shows of it (training/starts.py): the worker group's restart(s) and the plan
    assert 1 <= starts.summary(Store(tmp_path / "killed"))["restarts"] <= 2
    assert MlflowClient(uri).get_run(run.run_id).data.params["plan.total_steps"] == str(STEPS)


@pytest.fixture
def small_disk(tmp_path):
    """mount(size): a tmpfs of `size` bytes at tmp_path/disk (needs root, as on this project's CI)."""
    import os

    where = tmp_path / "disk"
    where.mkdir()
    mounted = []

    def mount(size: int, *options):
        cmd = ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(where)]
        if mounted:
            cmd[4] = ",".join(["remount", f"size={size}", *options])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode and not mounted:
            reason = f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-full test needs root"
            if os.environ.get("CI", "").lower() == "true":  # CI runs as root: a skip would hide the test
                pytest.fail(reason)
            pytest.skip(reason)
        assert done.returncode == 0, (cmd, done.stderr)
        mounted.append(where)
        return where

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_a_full_disk_keeps_the_last_checkpoint_and_a_rerun_resumes_from_it(train_tiny, tiny_ddp_run, small_disk):
    ckpt = _size(Path(tiny_ddp_run["checkpoint"]))
    disk = small_disk(int(1.5 * ckpt) + (256 << 10))  # room for the step-5 checkpoint, not for step 10's
    with pytest.raises(CheckpointWriteError) as err:
        train_tiny(disk / "run")
    message = str(err.value)
    assert f"checkpoint of step 10 could not be written to {disk / 'run' / 'ray' / dir_name(10)}" in message
    assert "[Errno 28] No space left on device" in message
    assert "the previous checkpoint (step 5) is kept intact" in message
    kept = disk / "run" / "ray" / dir_name(5)
    assert json.loads((kept / "train_state.json").read_text())["step"] == 5
    assert not (disk / "run" / "ray" / dir_name(10)).exists()  # the half-written one is gone

    # storage that cannot be written at all is refused before any worker starts
    small_disk(int(1.5 * ckpt) + (256 << 10), "ro")
    with pytest.raises(CheckpointWriteError, match=r"is not writable: \[Errno 30\] Read-only file system"):
        train_tiny(disk / "run")

    # once there is room, the same run resumes from the kept checkpoint and ends as if nothing happened
    small_disk(4 * ckpt + (1 << 20), "rw")  # num_to_keep=2 and the exported model
    resumed = train_tiny(disk / "run")
    assert resumed["resumed_from"] == 5 and resumed["steps"] == STEPS
    _same_curve(tiny_ddp_run["losses"], resumed["losses"])


def test_checkpoint_errors_name_the_file_and_survive_rays_wrapping():
    import errno

    from training.checkpoint.writes import clear_error, write_failed

    staged = write_failed(5, None, "/data/run", OSError(errno.ENOSPC, "No space left", "/tmp/x/model.pt"))
    assert str(staged) == (
        "checkpoint of step 5 could not be written to /data/run/ray/checkpoint_00000005: "
        "[Errno 28] No space left on device (/tmp/x/model.pt); no earlier checkpoint exists; "
        "a rerun starts from step 0 once space is freed"
    )
    # the driver gets Ray's error: the cause as an object, or only its traceback text
    wrapped = RuntimeError("Training failed")
    wrapped.__cause__ = staged
    assert str(clear_error(wrapped)) == str(staged)
    text_only = RuntimeError(
        f"Training failed due to worker errors:\n[Rank 0]\n...\n"
        f"training.checkpoint.writes.CheckpointWriteError: {staged}\n"
    )
    assert str(clear_error(text_only)) == str(staged)
    assert clear_error(RuntimeError("something else")) is None


def test_a_native_crash_is_one_line_on_the_console_and_training_resumes(train_tiny, tiny_ddp_run, tmp_path, capfd):
    # rank 1 dies of a real SIGSEGV after step 8: the driver's console says so in one line (rank,
    # pid, signal, step, the full log's path), not the dump, the raylet's paragraph or the other
    # processes' tracebacks; the dump is in that log; Ray Train resumes from the step-5 checkpoint
    import re
    import time

    capfd.readouterr()
    resumed = train_tiny(tmp_path / "segv", "train.max_failures=1", callbacks=[faults(segv_at_step=8)])
    time.sleep(3)  # Ray prints worker lines from a thread of its own
    out = "\n".join(capfd.readouterr())
    assert resumed["resumed_from"] == 5 and resumed["steps"] == STEPS
    _same_curve(tiny_ddp_run["losses"], resumed["losses"])
    said = [x for x in out.splitlines() if "died" in x]
    assert len(said) == 1, "\n".join(said)
    m = re.search(
        r"\[train\] rank 1 \(pid (\d+)\) died of (SIGSEGV|Segmentation fault).* after step \d+ .*"
        r"its full log: (\S+\.err)$",
        said[0],
    )
    assert m, said
    assert "Fatal Python error" in Path(m.group(3)).read_text(errors="replace")
    for noise in ("Fatal Python error", "Thread 0x", "A worker died or was killed", "ActorDiedError", "Traceback"):
        assert noise not in out, (noise, out[-3000:])
