"""The `register` step: a workflow's final model logged as an MLflow pyfunc model (its family's
`serve`, a pipelines.family.Pyfunc: the PythonModel, its signature and input example; the
project's code, and as pip requirements only the distributions the pyfunc imports, pinned as
pyproject.toml pins them) and registered in the Model Registry under the recipe's name. The version
is tagged with the workflow id and described: the workflow, its data (source, train and held-out
samples) and the evaluate step's metrics (also tags `evaluate/<metric>`). `models:/<name>/<version>`
then loads it anywhere MLflow runs (and `make serve` serves it):

    mlflow.pyfunc.load_model("models:/clip-small/1").predict(pandas.DataFrame({"text": ["a cat"]}))

Back from a version: `workflow_of_version` (its workflow) and `final_outputs` (that workflow's final
model and the outputs beside it), for `make pull`, `make export` and a curation scorer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra.jobs import requirements
from infra.storage import Store, join
from infra.tracking import missing_store
from pipelines.family import Pyfunc, family_of_model, model_config
from pipelines.workflow import Step, StepContext, read_json
from training.checkpoint.model_file import read_model_file

ROOT = Path(__file__).resolve().parents[1]
CODE = ("families", "models", "data", "training", "infra", "config")  # what the pyfunc imports


def _local(uri: str, scratch: Path) -> str:
    """A local path for `uri` (an s3:// one is downloaded into `scratch`): the pyfunc carries a copy."""
    if Path(uri).is_file():
        return str(uri)

    parent, _, file = str(uri).rpartition("/")
    Store(parent).download(file, Path(scratch) / file)
    return str(Path(scratch) / file)


def pip_requirements(names) -> list[str]:
    """Each distribution in `names` as pyproject.toml's dependency line pins it; one pyproject does
    not list (pandas, pydantic: mlflow's dependencies the pyfunc imports itself) by its name, its
    version then bounded by mlflow's pin."""
    pinned = {canonicalize_name(Requirement(r).name): r for r in requirements()}
    return [pinned.get(canonicalize_name(n), n) for n in names]


def model_code(python_model, model_config_class: type, scratch: Path):
    """The pyfunc as MLflow's "model from code": a script importing the family's PythonModel and
    model config class from the project's code (logged with it) and handing MLflow the model, so
    nothing is pickled (MLflow warns on a pickled python_model: loading a pickle runs whatever it
    holds). A class a module does not name (one defined in a test) is pickled, as before."""
    classes = (python_model, model_config_class)
    if any(getattr(sys.modules.get(c.__module__), c.__qualname__, None) is not c for c in classes):
        return python_model(model_config_class)
    lines = [f"from {c.__module__} import {c.__qualname__}" for c in classes]
    script = Path(scratch) / "pyfunc_model.py"
    script.write_text(
        '"""The MLflow pyfunc of this model, written by pipelines/register.py."""\n\n'
        + "import mlflow\n\n"
        + "\n".join(lines)
        + f"\n\nmlflow.models.set_model({python_model.__qualname__}({model_config_class.__qualname__}))\n"
    )
    return str(script)


def register_model(
    model_path: str,
    name: str,
    workflow_id: str,
    tracking_uri: str,
    run_id: str,
    scratch: Path,
    extra: dict | None = None,
) -> dict:
    """`extra`: more artifacts the pyfunc loads (name -> local path or s3:// URI): a tokenizer...
    The model's family and config class come from the registry (pipelines/family.py) by its kind."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mcfg = model_config(read_model_file(model_path)["model_config"])
    kind, serve = mcfg.kind, family_of_model(mcfg.kind).serve
    if serve is None:
        raise ValueError(f"{model_path}: the {kind} family has no MLflow pyfunc to register it with")
    artifacts = {k: _local(v, scratch) for k, v in {"model": model_path, **(extra or {})}.items()}
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model_code(serve.python_model, type(mcfg), scratch),
            artifacts=artifacts,
            signature=serve.signature(),
            input_example=serve.example_input(),
            pip_requirements=pip_requirements(serve.requirements),
            code_paths=[str(ROOT / c) for c in CODE],
            registered_model_name=name,
            await_registration_for=60,
        )
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri)
    client.set_model_version_tag(name, version, "workflow_id", workflow_id)
    client.set_model_version_tag(name, version, "model_kind", kind)
    return {"model_uri": f"models:/{name}/{version}", "registered_model": name, "version": int(version)}


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _number(v) -> str:
    """1,234 for a count, 4 significant digits for a float; anything else as it is."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def version_description(workflow_id: str, model_step: str, shard: dict, evaluate: dict) -> str:
    """Markdown: the workflow and step the model comes from, its data (the shard step's manifest:
    source, train and held-out samples) and the evaluate step's metrics as a table."""
    parent, _, name = str(shard["manifest"]).rpartition("/")
    source = json.loads(Store(parent).read_text(name)).get("source", "?")
    rows = "\n".join(f"| {k} | {_number(v)} |" for k, v in _scalars(evaluate["metrics"]).items())
    return (
        f"The model of step `{model_step}` of workflow `{workflow_id}`.\n\n"
        f"**Data** (step `shard`): `{source}`: {_number(shard.get('train_samples', '?'))} training samples, "
        f"{_number(shard.get('eval_samples', '?'))} held-out samples (manifest: `{shard['manifest']}`).\n\n"
        f"**Evaluation** on the held-out samples (`{evaluate['metrics_file']}`):\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n"
    )


def describe_version(
    tracking_uri: str, name: str, version: int, workflow_id: str, model_step: str, shard: dict, evaluate: dict
) -> str:
    """The version's description (version_description) and tags: `evaluate/<metric>` for each of
    the evaluate step's metrics, `data.train_samples` and `data.eval_samples`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    text = version_description(workflow_id, model_step, shard, evaluate)
    client.update_model_version(name, str(version), description=text)
    tags = {f"evaluate/{k}": str(v) for k, v in _scalars(evaluate["metrics"]).items()}
    tags.update({f"data.{k}": str(shard[k]) for k in ("train_samples", "eval_samples") if k in shard})
    for k, v in tags.items():
        client.set_model_version_tag(name, str(version), k, v)
    return text


def register_step(recipe, tracking_uri: str, final: str, serve: Pyfunc) -> Step:
    """The step registering the model of step `serve.model_step(recipe)` (default: the workflow's
    final model), with the artifacts its `extra_artifacts` names, described by the shard and
    evaluate steps' outputs."""
    source = serve.model_step(recipe) or final

    def run(ctx: StepContext) -> dict:
        extra = serve.extra_artifacts(recipe, ctx.inputs, ctx.dir)
        out = register_model(
            ctx.inputs[source]["model"], recipe.name, ctx.workflow_id, tracking_uri, ctx.tracker.run_id, ctx.dir, extra
        )
        i = ctx.inputs
        try:  # the version is registered: a failed description must not fail the step (a rerun registers again)
            describe_version(
                tracking_uri, recipe.name, out["version"], ctx.workflow_id, source, i["shard"], i["evaluate"]
            )
        except Exception as e:  # noqa: BLE001
            print(f"[register] {out['model_uri']} registered, its description not written: {e}", flush=True)
        return out

    return Step("register", run, config={"name": recipe.name}, deps=[source, "shard", "evaluate"])


def workflow_of_version(uri: str, tracking_uri: str) -> str:
    """The workflow a `models:/<name>/<version>` was registered from (its version's tag)."""
    from mlflow.tracking import MlflowClient

    name, _, version = uri[len("models:/") :].rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri}: expected models:/<name>/<version>")
    if missing_store(tracking_uri):
        raise ValueError(f"{uri}: no MLflow store at {tracking_uri} (run a workflow first, or name its TRACKING=)")
    try:
        tags = MlflowClient(tracking_uri).get_model_version(name, version).tags
    except Exception as e:
        raise ValueError(f"{uri}: no such registered model version ({str(e).splitlines()[0]})") from None
    if "workflow_id" not in tags:
        raise ValueError(f"{uri}: the version has no workflow_id tag")
    return tags["workflow_id"]


def final_outputs(wf_id: str, root: str) -> tuple[str, dict]:
    """(the step whose model the workflow evaluated, the outputs of it, `shard` and `evaluate`)."""
    store = Store(join(root, wf_id))
    # the model that was evaluated: BLIP's bootstrapped one when it ran (older records: pretrain)
    final = (read_json(store, "workflow.json") or {}).get("final_model_step", "pretrain")
    outputs = {}
    for step in ("shard", final, "evaluate"):
        rec = read_json(store, f"steps/{step}.json")
        if not rec or rec.get("status") != "done":
            raise ValueError(
                f"workflow {wf_id}: step '{step}' is not done "
                f"({(rec or {}).get('status', 'never run')}): nothing final to pull"
            )
        outputs[step] = rec["outputs"]
    return final, outputs
