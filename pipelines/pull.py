"""`make pull RUN=<workflow id, MLflow run id or models:/<name>/<version>>`: fetch a workflow's final model (the one it
evaluated: `final_model_step` in workflow.json), metrics, recipe and manifest (and the fine-tuned
classifier of an MAE workflow, the tokenizer of an MDLM one) from its storage (a local runs folder
or S3) into a local folder, resumably."""

from __future__ import annotations

from pathlib import Path

from infra.storage import Store, join
from pipelines.recipe import check_workflow_id
from pipelines.register import final_outputs, workflow_of_version
from pipelines.workflow import read_json


def resolve_workflow(run: str, root: str, tracking_uri: str | None) -> str:
    """`run` itself when it names a workflow under `root`, else the workflow of MLflow run `run`."""
    if read_json(Store(join(root, run)), "workflow.json") is not None:
        return run
    if not tracking_uri:
        raise ValueError(f"'{run}' is not a workflow under {root} (and no tracking URI to look it up)")
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient(tracking_uri).get_run(run).data.tags
    except Exception as e:
        raise ValueError(f"'{run}' is neither a workflow under {root} nor an MLflow run: {e}") from None
    if "workflow_id" not in tags:
        raise ValueError(f"MLflow run {run} has no workflow_id tag")
    # the tag names a folder under the destination: one path segment, whatever a run says
    return check_workflow_id(tags["workflow_id"], f"MLflow run {run}: tag workflow_id")


def workflow_id_of(run: str, root: str, tracking_uri: str | None) -> str:
    """The workflow RUN names: a workflow id, an MLflow run id, or models:/<name>/<version>."""
    if run.startswith("models:/"):
        if not tracking_uri:
            raise ValueError(f"{run}: a registered model needs the tracking URI of its registry")
        return check_workflow_id(workflow_of_version(run, tracking_uri), f"{run}: tag workflow_id")
    return resolve_workflow(check_workflow_id(run, "RUN"), root, tracking_uri)


def pull(run: str, root: str, dest: str | Path, tracking_uri: str | None = None) -> dict:
    """Files land in `<dest>/<workflow id>/` and nowhere else: the id is one path segment, and a
    symbolic link there (or at a file's name) is refused or replaced, never written through."""
    wf_id = workflow_id_of(run, root, tracking_uri)
    store = Store(join(root, wf_id))
    final, outputs = final_outputs(wf_id, root)
    model = outputs[final]["model"]
    wanted = {
        "model.pt": model,
        "recipe.json": outputs[final].get("recipe", model.rpartition("/")[0] + "/recipe.json"),
        "metrics.json": outputs["evaluate"]["metrics_file"],
        "manifest.json": outputs["shard"]["manifest"],
    }
    finetuned = read_json(store, "steps/finetune.json")  # MAE workflows: the fine-tuned classifier too
    if finetuned and finetuned.get("status") == "done":
        wanted["finetune-model.pt"] = finetuned["outputs"]["model"]
    if outputs["shard"].get("tokenizer"):  # MDLM workflows: the BPE the model reads
        wanted["tokenizer.json"] = outputs["shard"]["tokenizer"]
    root_dest = Path(dest).resolve()
    dest = root_dest / wf_id
    if dest.is_symlink():
        raise ValueError(f"{dest} is a symbolic link: make pull writes only inside {root_dest}")
    moved = {}
    for local_name, uri in wanted.items():
        parent, _, name = str(uri).rpartition("/")
        moved[local_name] = Store(parent).download(name, dest / local_name)
    return {"workflow": wf_id, "dest": str(dest), "bytes": moved}
