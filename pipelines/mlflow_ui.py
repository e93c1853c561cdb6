"""`make mlflow-ui [RECIPE=...]`: the MLflow UI on the store a recipe's workflows write (the embedded
sqlite `runs/mlflow.db` by default; a recipe naming a tracking server gets that server's links),
on 127.0.0.1, with this project's environment; and the links a finished run prints.

The workflow's parent run gets its family's saved view (infra/mlflow_views.py): the runs table in
the model-training view, the family's headline metrics (`Family.headline`) as columns."""

from __future__ import annotations

import os
import shlex
import sys

from infra.local_server import HOST, server_env
from infra.mlflow_views import experiment_url, model_version_url, run_url, view_state, view_tag
from infra.tracking import Tracker, default_tracking_uri, missing_store, public_uri
from pipelines.config import load_recipe

UI_PORT = 5000
DEFAULT_RECIPE = "configs/clip_small.yaml"


def tracker_factory(uri: str, experiment: str, artifact_location: str | None, family=None):
    """Opens the workflow's runs; the parent run saves its family's view on the experiment."""

    def make(run_name, parent_id=None, resume_id=None, tags=None):
        t = Tracker(uri).start(
            experiment, run_name, parent_id=parent_id, tags=tags, resume_id=resume_id,
            artifact_location=artifact_location,
        )  # fmt: skip
        if parent_id is None and family is not None and family.headline:
            save_view(t, family)
        return t

    return make


def save_view(parent: Tracker, family) -> None:
    """The family's saved view on the experiment, unless one is there: a user who changed it in the
    UI and saved it under its name keeps it (their columns win over the family's)."""
    key, value = view_tag(family.kind, family.headline)
    if parent.experiment_id is None:  # the run was not opened (tracking away)
        return
    try:
        have = parent.client.get_experiment(parent.experiment_id).tags.get(key)
    except Exception:  # tracking never stops a workflow
        have = None
    if view_state(have) is None:
        parent.set_experiment_tag(key, value)


def is_server(tracking_uri: str) -> bool:
    """A tracking server (its own UI), not an embedded store `make mlflow-ui` opens."""
    return tracking_uri.startswith(("http://", "https://"))


def ui_base(tracking_uri: str, port: int = UI_PORT) -> str:
    """Where the UI answers, credentials left out: the tracking server itself, or `make mlflow-ui`
    on loopback."""
    return public_uri(tracking_uri) if is_server(tracking_uri) else f"http://{HOST}:{port}"


def run_hint(args, recipe, uri: str, parent: Tracker | None, registered: dict | None = None) -> list[str]:
    """The end-of-run lines: the links to the experiment's runs (the family's view) and to this
    workflow's run, on its tracking server, or behind the command that opens the UI on its
    embedded store (nothing to activate; the `--set`s that chose the store repeated)."""
    if parent is None or parent.experiment_id is None:
        return [f"MLflow:   {public_uri(uri)}"]
    exp, run, kind = str(parent.experiment_id), str(parent.run_id), recipe.family.kind
    remote, base = is_server(uri), ui_base(uri)
    links = [
        f"{experiment_url(base, exp, kind)}  (runs, headline columns)",
        f"{run_url(base, exp, run)}  (this workflow's run)",
    ]
    if registered:  # the register step's output
        version_url = model_version_url(base, registered["registered_model"], registered["version"])
        links.append(f"{version_url}  ({registered['model_uri']}: make serve RUN={registered['model_uri']})")
    if remote:
        return [f"MLflow:   {links[0]}", *(f"          {x}" for x in links[1:])]
    store_keys = ("runs_dir", "tracking.")
    sets = [s for s in args.set if s.split("=")[0].strip().startswith(store_keys)]
    cmd = "make mlflow-ui" + ("" if args.recipe == DEFAULT_RECIPE else f" RECIPE={shlex.quote(str(args.recipe))}")
    if sets:
        cmd += " ARGS=" + shlex.quote(" ".join(f"--set {shlex.quote(s)}" for s in sets))
    return [f"MLflow:   {cmd}   then open", *(f"          {x}" for x in links)]


def report(args, recipe, uri: str, wf, outputs: dict) -> None:
    """A finished workflow: its family's summary, printed and as its MLflow run's description (the
    run page's "Description"), then how to open the UI."""
    lines = recipe.family.summary(outputs)
    print("\n== workflow", wf.id, "done ==")
    for line in lines + run_hint(args, recipe, uri, wf.parent, outputs.get("register")):
        print(line)
    if wf.parent is not None:
        wf.parent.set_tags({"mlflow.note.content": "  \n".join(lines)})  # markdown: a line break each


def ui_command(tracking_uri: str, port: int) -> list[str]:
    """MLflow's server as a UI on a workflow store: loopback only, one worker, no job runner."""
    return [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", tracking_uri]  # fmt: skip


def cmd_ui(args) -> int:
    recipe = load_recipe(args.recipe, args.set)
    uri = recipe.tracking.tracking_uri or default_tracking_uri(recipe.runs_dir)
    if missing_store(uri):  # opening it would create an empty one
        raise ValueError(f"{uri}: no MLflow store yet (run the workflow first: make pretrain RECIPE={args.recipe})")
    exp = Tracker(uri).client.get_experiment_by_name(recipe.tracking.experiment)
    if exp is None:
        raise ValueError(
            f"{public_uri(uri)}: no experiment {recipe.tracking.experiment!r} (tracking.experiment of {args.recipe})"
        )
    base = ui_base(uri, args.port)
    print(
        f"MLflow UI of {public_uri(uri)}:\n  {experiment_url(base, exp.experiment_id, recipe.family.kind)}", flush=True
    )
    if is_server(uri):  # a tracking server: its own UI
        return 0
    env = dict(server_env(uri), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    os.execve(sys.executable, ui_command(uri, args.port), env)
    return 1  # not reached: exec replaces this process


def add_parser(sub) -> None:
    u = sub.add_parser("ui", help="the MLflow UI on a recipe's tracking store (127.0.0.1)")
    u.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE, help=f"recipe YAML (default {DEFAULT_RECIPE})")
    u.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    u.add_argument("--port", type=int, default=UI_PORT)
