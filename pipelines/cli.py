"""Command line: `python -m pipelines.cli run|status ...` (the Makefile calls this)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from infra.jobs import cancel, jobs, submit
from infra.ray_cluster import init_ray
from infra.storage import StorageError, Store
from infra.tracking import default_artifact_location, default_tracking_uri
from pipelines.config import ConfigError, check_workflow_id, load_recipe
from pipelines.lease import LeaseHeld, LeaseLost
from pipelines.mlflow_ui import add_parser as add_ui_parser
from pipelines.mlflow_ui import cmd_ui, report, tracker_factory
from pipelines.pull import pull
from pipelines.register import register_step
from pipelines.serving import DEFAULT_PORT, serve
from pipelines.status import print_status
from pipelines.workflow import Workflow
from training.checkpoint.writes import CheckpointWriteError
from training.divergence import DivergedError

EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: the workflow is running elsewhere; try again later


def final_model_step(recipe) -> str:
    """The step whose model is the workflow's model (what `make pull` fetches)."""
    return recipe.family.final_model_step(recipe)


def build_workflow(recipe, workflow_id: str | None = None, callbacks: tuple = (), rerun: tuple = ()):

    uri = recipe.tracking.tracking_uri or default_tracking_uri(recipe.runs_dir)
    # the embedded store keeps artifacts under the storage (or runs folder); a server decides itself
    artifacts = None
    if not recipe.tracking.tracking_uri:
        artifacts = (
            f"{recipe.storage.rstrip('/')}/mlartifacts"
            if recipe.storage
            else default_artifact_location(recipe.runs_dir)
        )
    family = recipe.family
    steps = family.steps(recipe, uri, callbacks)  # checks the sources: before any folder
    if family.serve:  # the model it serves (the final one, or the fine-tuned classifier) in the Model Registry
        steps.append(register_step(recipe, uri, final_model_step(recipe), family.serve))
    Path(recipe.runs_dir).mkdir(parents=True, exist_ok=True)
    wf = Workflow(
        workflow_id or recipe.name,
        recipe.runs_dir,
        steps,
        tracker_factory=tracker_factory(uri, recipe.tracking.experiment, artifacts, family),
        meta={"recipe": recipe.name, "family": family.kind, "final_model_step": final_model_step(recipe)},
        params=recipe.flat(),
        storage=recipe.storage,
        rerun=rerun,
    )
    return wf, uri


def cmd_run(args) -> int:

    recipe = load_recipe(args.recipe, args.set)
    if args.workflow_id is not None:
        check_workflow_id(args.workflow_id)
    if recipe.storage:
        Store(recipe.storage).check()  # a missing bucket or refused credentials: stop before any work
    wf, uri = build_workflow(recipe, args.workflow_id, rerun=tuple(args.rerun))
    wf.lease.acquire()  # a second run of the same workflow id stops here, before Ray starts
    try:
        init_ray(args.address)
        outputs = wf.run()
    finally:
        wf.lease.release()
    report(args, recipe, uri, wf, outputs)
    return 0


def cmd_status(args) -> int:
    from families.registry import FAMILIES

    # a tracking server away costs a running step's line 5 s, not the minutes of a training run's retries
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    # each step's headline numbers: those its workflow's family declares (workflow.json names it)
    headlines = {kind: f.headline for kind, f in FAMILIES.items()}
    print_status(args.storage or args.runs_dir, args.tracking_uri, args.runs_dir, headlines)
    return 0


def cmd_pull(args) -> int:

    root = args.storage or args.runs_dir
    uri = args.tracking_uri or default_tracking_uri(args.runs_dir)
    out = pull(args.run, root, args.dest, uri)
    for name, n in out["bytes"].items():
        print(f"{out['dest']}/{name}: " + (f"{n} bytes fetched" if n else "already complete"))
    return 0


def cmd_export(args) -> int:
    from pipelines.export import export

    uri = args.tracking_uri or default_tracking_uri(args.runs_dir)
    out = export(args.run, args.storage or args.runs_dir, args.format, args.dest, uri)
    print(f"{args.format}: {out}")
    return 0


def cmd_serve(args) -> int:

    serve(args.run, args.tracking_uri or default_tracking_uri(args.runs_dir), args.port)  # returns only on error
    return 1


def cmd_submit(args) -> int:

    load_recipe(args.recipe, args.set)  # a bad recipe fails here, not on the cluster
    if args.workflow_id is not None:
        check_workflow_id(args.workflow_id)
    job_id, status = submit(
        args.address,
        args.recipe,
        args.workflow_id,
        args.set,
        with_requirements=args.requirements,
        follow=not args.no_follow,
        rerun=args.rerun,
    )
    print(f"job {job_id}: {status}")
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def cmd_jobs(args) -> int:

    rows = jobs(args.address)
    if not rows:
        print(f"no jobs on {args.address}")
    for r in rows:
        print(f"{r['job_id']}  [{r['status']}]  workflow={r['metadata'].get('workflow_id', '?')}  {r['entrypoint']}")
    return 0


def cmd_cancel(args) -> int:

    status = cancel(args.address, args.job_id)
    print(f"job {args.job_id}: {status} (rerun the workflow to resume it)")
    return 0 if status == "STOPPED" else 1


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt  # `make cancel` / a scheduler's SIGTERM: steps end as interrupted, resumable


RERUN_HELP = "run STEP again (and the steps after it) even though it is done"
STORAGE_HELP = "the s3://bucket/prefix of the workflow (default: runs dir)"


def _workflow_args(c: argparse.ArgumentParser) -> None:
    """What `run` and `submit` share: the recipe, its overrides, the workflow id and reruns."""
    c.add_argument("recipe", help="recipe YAML, e.g. configs/clip_small.yaml")
    c.add_argument("--workflow-id", help="workflow id (default: the recipe's name); rerun to resume")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.epochs=5",
    )
    c.add_argument("--rerun", action="append", default=[], metavar="STEP", help=RERUN_HELP)


def _stored_args(c: argparse.ArgumentParser, dest: str) -> None:
    """What `pull` and `export` share: where the workflow's records are and where the files go."""
    c.add_argument("--runs-dir", default="runs")
    c.add_argument("--storage", default="", help=STORAGE_HELP)
    c.add_argument("--tracking-uri", default="", help="to resolve MLflow run ids (default: runs/mlflow.db)")
    c.add_argument("--dest", default=dest)


def export_formats() -> dict[str, list[str]]:
    """Each format `make export` writes -> the model families exporting to it (the registry's)."""
    from families.registry import FAMILIES

    out: dict[str, list[str]] = {}
    for kind, family in sorted(FAMILIES.items()):
        for fmt in family.exports:
            out.setdefault(fmt, []).append(kind)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) a recipe's workflow")
    _workflow_args(r)
    r.add_argument("--address", help="Ray cluster address (default: start a local one)")
    s = sub.add_parser("status", help="list workflows and their steps")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--storage", default="", help="an s3://bucket/prefix the workflows store their records in")
    s.add_argument("--tracking-uri", default="", help="MLflow, for a running step's progress (default: the run's)")
    pl = sub.add_parser("pull", help="fetch a workflow's final model, metrics, recipe and manifest")
    pl.add_argument("run", help="workflow id, MLflow run id or models:/<name>/<version>")
    _stored_args(pl, "pulled")
    ex = sub.add_parser("export", help="write a workflow's final model in another library's format")
    ex.add_argument("run", help="workflow id, MLflow run id, models:/<name>/<version>, or a model.pt file")
    formats = export_formats()
    ex.add_argument(
        "--format",
        required=True,
        choices=sorted(formats),
        help="; ".join(f"{f}: {', '.join(kinds)}" for f, kinds in sorted(formats.items())),
    )
    _stored_args(ex, "exported")
    sv = sub.add_parser("serve", help="serve a registered model version on 127.0.0.1 (mlflow models serve)")
    sv.add_argument("run", help="models:/<name>/<version>")
    sv.add_argument("--port", type=int, default=DEFAULT_PORT)
    sv.add_argument("--runs-dir", default="runs")
    sv.add_argument("--tracking-uri", default="", help="the registry's tracking URI (default: runs/mlflow.db)")
    add_ui_parser(sub)
    sb = sub.add_parser("submit", help="submit a recipe's workflow to a Ray cluster as a Ray job")
    _workflow_args(sb)
    sb.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    sb.add_argument(
        "--requirements", action="store_true", help="ship the project's requirements as a pip runtime environment"
    )
    sb.add_argument("--no-follow", action="store_true", help="print the job id and return")
    for name, fn_help in (("jobs", "list the cluster's jobs"), ("cancel", "stop a job")):
        j = sub.add_parser(name, help=fn_help)
        j.add_argument("--address", required=True)
        if name == "cancel":
            j.add_argument("job_id")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {
            "run": cmd_run,
            "status": cmd_status,
            "pull": cmd_pull,
            "export": cmd_export,
            "serve": cmd_serve,
            "ui": cmd_ui,
            "submit": cmd_submit,
            "jobs": cmd_jobs,
            "cancel": cmd_cancel,
        }[args.cmd](args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (LeaseHeld, LeaseLost) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY
    except RuntimeError as e:
        if isinstance(e, StorageError):
            print(f"storage error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, (CheckpointWriteError, DivergedError)):  # the message says what is kept
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
