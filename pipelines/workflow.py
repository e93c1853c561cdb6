"""A thin durable workflow layer on Ray core (Ray's own `ray.workflow` is gone after 2.47).

A workflow has an id and a folder `<runs_dir>/<id>/`. Each step's record (status, fingerprint,
outputs, attempts, timings, MLflow run id) is a JSON file under `steps/`, written atomically; a
step counts as done only once its record says so. On a rerun with the same id:
- a step whose record is `done` with the same fingerprint is skipped (its outputs are reused);
- otherwise it runs again; its working folder is named by its fingerprint, so an interrupted step
  finds its partial work (shards, checkpoints) and resumes it, while a changed config starts clean.
The fingerprint covers the step's own config, a hash of the code it imports (pipelines/code_version.py),
the number of times `--rerun` forced it, and the fingerprints of the steps it reads from, so a
changed config or code reruns the first affected step and everything after it.
"""

from __future__ import annotations

import json
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from infra.storage import Store, join
from pipelines.code_version import code_hash, step_code
from pipelines.lease import Lease, LeaseLost
from pipelines.recipe import check_workflow_id, fingerprint


def write_json(store: Store, name: str, obj: Any) -> None:
    store.write_text(name, json.dumps(obj, indent=1, default=str))  # atomic on both backends


def read_json(store: Store, name: str) -> Optional[dict]:
    if not store.exists(name):
        return None
    return json.loads(store.read_text(name))


@dataclass
class StepContext:
    workflow_id: str
    name: str
    dir: Path  # the step's local working folder (named by its fingerprint)
    inputs: dict[str, dict]  # outputs of the steps it depends on
    uri: str = ""  # where its results live: `dir`, or the same name under S3 storage
    tracker: Any = None  # infra.tracking.Tracker of the step's nested MLflow run
    parent: Any = None  # ... and of the workflow's parent run (its summary: metrics, plots)


@dataclass
class Step:
    name: str
    fn: Callable[[StepContext], dict]
    config: Any  # whatever determines the step's result (a dataclass or dict)
    deps: list[str] = field(default_factory=list)
    remote: bool = False  # run `fn` as a Ray task instead of in the driver
    code: tuple = ()  # more modules or files it runs than its imports show (code_version)


class WorkflowStopped(ValueError):
    """A step finished, but its outputs cannot feed the steps after it (e.g. sharding left no
    training samples): the workflow ends there, with the step's reason. The step stays done, so a
    rerun with the same inputs stops again at once, and one with fixed inputs reruns it."""


def _interrupted(e: BaseException) -> bool:
    """Ctrl-C, or Ray turning a SIGINT into SystemExit: the run was stopped, not broken."""
    return isinstance(e, (KeyboardInterrupt, SystemExit))


class Workflow:
    def __init__(
        self,
        workflow_id: str,
        runs_dir: str | Path,
        steps: list[Step],
        tracker_factory: Optional[Callable[..., Any]] = None,
        meta: Optional[dict] = None,
        params: Optional[dict] = None,
        storage: str = "",
        rerun: tuple = (),
    ):
        self.id = check_workflow_id(workflow_id, "workflow id")
        self.root = Path(runs_dir).resolve() / workflow_id  # local scratch
        # records and results: the same folder, or <storage>/<id> in object storage
        self.store = Store(join(storage, workflow_id) if storage else self.root)
        self.steps = steps
        self.tracker_factory = tracker_factory
        self.parent: Any = None  # the workflow's MLflow run, once run() opened it
        self.params = params or {}
        self.meta = meta or {}
        self.lease = Lease(self.store, f"workflow {self.id}")
        names = [s.name for s in steps]
        for name in rerun:
            if name not in names:
                raise ValueError(f"--rerun {name}: workflow {self.id} has no such step (steps: {', '.join(names)})")
        self.rerun = tuple(rerun)
        self.code = {s.name: step_code(s.fn, s.code, s.config) for s in steps}
        self.code_hashes = {n: code_hash(paths) for n, paths in self.code.items()}
        for s in steps:
            for d in s.deps:
                if d not in names[: names.index(s.name)]:
                    raise ValueError(f"step '{s.name}' depends on '{d}', which does not run before it")

    def record_name(self, name: str) -> str:
        return f"steps/{name}.json"

    def record(self, name: str) -> Optional[dict]:
        return read_json(self.store, self.record_name(name))

    def _fingerprints(self, reruns: dict) -> dict[str, str]:
        """The step's config, its code, how often it was forced to rerun, and its inputs' fingerprints."""
        fps: dict[str, str] = {}
        for s in self.steps:
            forced = {"rerun": reruns[s.name]} if reruns.get(s.name) else {}
            fps[s.name] = fingerprint(
                {
                    "step": s.name,
                    "config": s.config,
                    "code": self.code_hashes[s.name],
                    **forced,
                    "inputs": {d: fps[d] for d in s.deps},
                }
            )
        return fps

    def _save(self, name: str, obj: Any) -> None:
        """Write a record, unless another run took this workflow's lease over meanwhile."""
        if self.lease.lost:
            raise LeaseLost(f"workflow {self.id}: another run took the lease over; this run wrote nothing more")
        write_json(self.store, name, obj)

    def run(self) -> dict[str, dict]:
        """Run (or resume) the workflow, holding its lease: a second run of the same id at the same
        time is refused (pipelines/lease.py)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.store.check()
        self.lease.acquire()
        try:
            return self._run()
        finally:
            self.lease.release()

    def _run(self) -> dict[str, dict]:
        wf = read_json(self.store, "workflow.json") or {"id": self.id, "created": time.time(), "runs": 0}
        reruns = wf.get("reruns", {})
        for name in self.rerun:  # kept: a later run without --rerun does not run the step a third time
            reruns[name] = reruns.get(name, 0) + 1
        wf.update(
            self.meta,
            steps=[s.name for s in self.steps],
            runs=wf["runs"] + 1,
            updated=time.time(),
            status="running",
            reruns=reruns,
        )
        parent = None
        if self.tracker_factory:
            parent = self.tracker_factory(
                run_name=self.id, resume_id=wf.get("mlflow_run_id"), tags={"workflow_id": self.id}
            )
            wf["mlflow_run_id"] = parent.run_id if parent else None
            self.parent = parent
            if parent and self.params:  # the recipe, so the runs table compares workflows
                parent.log_params(self.params)
        self._save("workflow.json", wf)
        fps = self._fingerprints(reruns)
        outputs: dict[str, dict] = {}
        try:
            for step in self.steps:
                outputs[step.name] = self._run_step(step, fps[step.name], outputs, parent)
        except BaseException as e:
            status = "interrupted" if _interrupted(e) else "stopped" if isinstance(e, WorkflowStopped) else "failed"
            wf.update(status=status, updated=time.time())
            self._save("workflow.json", wf)
            if parent:
                parent.end("KILLED" if _interrupted(e) else "FAILED")
            raise
        wf.update(status="done", updated=time.time())
        self._save("workflow.json", wf)
        if parent:
            parent.end("FINISHED")
        return outputs

    def _say(self, step: Step, text: str) -> None:
        print(f"[workflow {self.id}] step {step.name}: {text}", flush=True)

    def _earlier(self, step: Step, fp: str) -> dict:
        """The step's record when this run continues it (same fingerprint), else {} (said why)."""
        rec = read_json(self.store, self.record_name(step.name)) or {}
        if rec.get("fingerprint") and rec["fingerprint"] != fp:
            code = self.code_hashes[step.name]
            why = (
                "its code changed"
                if (rec.get("code") or {}).get("hash", code) != code
                else "config, inputs or --rerun changed"
            )
            self._say(step, f"{why} ({rec['fingerprint']} -> {fp}): running again")
            return {}
        if rec.get("status") in ("running", "failed", "interrupted"):
            self._say(step, "resuming after an unfinished attempt")
        return rec

    def _run_step(self, step: Step, fp: str, outputs: dict, parent) -> dict:
        path = self.record_name(step.name)
        rec = self._earlier(step, fp)
        if rec.get("status") == "done":
            self._say(step, "already done, skipped")
            return self._checked(step, rec["outputs"])
        tracker = None
        if parent is not None:
            assert self.tracker_factory is not None  # a parent run comes from the tracker factory (run())
            tracker = self.tracker_factory(
                run_name=step.name,
                parent_id=parent.run_id,
                resume_id=rec.get("mlflow_run_id"),
                tags={"workflow_id": self.id, "step": step.name},
            )
        attempts = rec.get("attempts", 0) + 1
        rec = {
            "name": step.name,
            "status": "running",
            "fingerprint": fp,
            "attempts": attempts,
            "started": time.time(),
            "host": socket.gethostname(),
            "deps": step.deps,
            "mlflow_run_id": tracker.run_id if tracker else None,
            "code": {"paths": self.code[step.name], "hash": self.code_hashes[step.name]},
            "history": rec.get("history", []),
        }
        self._save(path, rec)
        ctx = StepContext(
            self.id,
            step.name,
            self.root / f"{step.name}-{fp}",
            {d: outputs[d] for d in step.deps},
            uri=self.store.uri(f"{step.name}-{fp}"),
            tracker=tracker,
            parent=parent,
        )
        ctx.dir.mkdir(parents=True, exist_ok=True)
        self._say(step, f"running (attempt {attempts})")
        t0 = time.time()
        try:
            result = _call(step, ctx)
        except BaseException as e:
            status = "interrupted" if _interrupted(e) else "failed"
            self._finish(
                path,
                rec,
                tracker,
                t0,
                status,
                error=f"{type(e).__name__}: {e}"[:2000],
                traceback=traceback.format_exc()[-4000:],
            )
            raise
        self._finish(path, rec, tracker, t0, "done", outputs=result or {}, error=None, traceback=None)
        self._say(step, f"done in {rec['seconds']:.1f}s")
        return self._checked(step, rec["outputs"])

    def _finish(self, path: str, rec: dict, tracker, t0: float, status: str, **fields) -> None:
        """The attempt's end in the record (saved: `done` from here on) and its MLflow run."""
        rec.update(status=status, ended=time.time(), seconds=round(time.time() - t0, 2), **fields)
        rec["history"].append({"attempt": rec["attempts"], "status": status, "seconds": rec["seconds"]})
        self._save(path, rec)
        if tracker:
            if status == "done":
                tracker.log_metrics({"step_seconds": rec["seconds"]})
            tracker.end({"done": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))

    def _checked(self, step: Step, outputs: dict) -> dict:
        if outputs.get("stop"):
            raise WorkflowStopped(f"workflow {self.id} stopped after step {step.name}: {outputs['stop']}")
        return outputs


def _call(step: Step, ctx: StepContext) -> dict:
    """The step's function on `ctx`: here, or as a Ray task for a `remote` step."""
    if not step.remote:
        return step.fn(ctx)
    import ray

    return ray.get(ray.remote(num_cpus=1)(step.fn).remote(ctx))
