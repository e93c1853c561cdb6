"""Checkpoint writes that fail (disk full, permission denied, read-only file system): a clear error
that names the path, the step and the checkpoint that is kept, instead of a Ray traceback.

Ray Train only registers a checkpoint once every rank's files are in storage, and deletes old ones
(CheckpointConfig.num_to_keep) only after a newer one is registered, so a write that fails halfway
never replaces the last good checkpoint. The half-written directory is removed here so that it does
not hold the space a rerun needs."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

from infra.storage import Store, is_s3

EXPERIMENT = "ray"  # RunConfig.name: checkpoints live in <storage>/ray/checkpoint_<step>


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one (if any) is intact."""


def dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno:  # the file when the OS named it (e.g. a full local /tmp)
        return f"[Errno {err.errno}] {os.strerror(err.errno)}" + (f" ({err.filename})" if err.filename else "")
    return f"{type(err).__name__}: {err}"


def write_failed(step: int, kept_step: Optional[int], storage: str, err: BaseException) -> CheckpointWriteError:
    """The error a worker raises when saving the step-`step` checkpoint under `storage` failed."""
    where = f"{storage.rstrip('/')}/{EXPERIMENT}/{dir_name(step)}"
    kept = (
        f"the previous checkpoint (step {kept_step}) is kept intact; rerun the same workflow to resume from it"
        if kept_step
        else "no earlier checkpoint exists; a rerun starts from step 0"
    )
    hints: dict[Optional[int], str] = {
        errno.ENOSPC: " once space is freed",
        errno.EDQUOT: " once space is freed",
        errno.EACCES: " once the path is writable",
        errno.EPERM: " once the path is writable",
        errno.EROFS: " once the path is writable",
    }
    hint = hints.get(getattr(err, "errno", None), "")
    return CheckpointWriteError(
        f"checkpoint of step {step} could not be written to {where}: {describe(err)}; {kept}{hint}"
    )


def remove_partial(storage: str, step: int) -> None:
    """Delete the half-written checkpoint directory of `step` (local storage only)."""
    if not is_s3(storage):
        shutil.rmtree(Path(storage) / EXPERIMENT / dir_name(step), ignore_errors=True)


def check_writable(storage: str) -> None:
    """Fail before any worker starts when local checkpoint storage cannot be written at all."""
    if is_s3(storage):
        return
    probe = Path(storage) / f".write-probe-{uuid.uuid4().hex}"
    try:
        Path(storage).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as e:
        raise CheckpointWriteError(f"checkpoint storage {storage} is not writable: {describe(e)}") from None
    probe.unlink()


def clear_error(failure: BaseException) -> Optional[CheckpointWriteError]:
    """The CheckpointWriteError inside Ray Train's TrainingFailedError, if that is what failed."""
    seen, todo = set(), [failure, *getattr(failure, "worker_failures", {}).values()]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointWriteError):
            return CheckpointWriteError(str(e))
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    for line in str(failure).splitlines():  # the cause did not survive pickling: its message did
        if "CheckpointWriteError: " in line:
            return CheckpointWriteError(line.split("CheckpointWriteError: ", 1)[1])
    return None


def registered(storage: str, step: int) -> bool:
    """Whether Ray Train has registered the step-`step` checkpoint (it is in the checkpoint
    manager's snapshot in storage, so a restarted worker group resumes from it)."""

    store = Store(f"{storage.rstrip('/')}/{EXPERIMENT}")
    name = "checkpoint_manager_snapshot.json"
    return store.exists(name) and dir_name(step) in store.read_text(name)
