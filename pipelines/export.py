"""`make export RUN=<workflow id | MLflow run id | models:/<name>/<version> | model.pt> FORMAT=hf`: the model a
workflow evaluated (as `make pull` picks it), written in another library's format by its family's
exporter (its Family's `exports`, pipelines/family.py). A model with a layer the library has no exact
counterpart for is refused, naming the layer."""

from __future__ import annotations

from pathlib import Path

from families.errors import ExportError
from families.registry import family_of_model, load_model
from infra.local_files import readable_as_umask_allows
from pipelines.pull import workflow_id_of
from pipelines.register import final_outputs


def model_uri(run: str, root: str, tracking_uri: str | None) -> tuple[str, str]:
    """(a name for the export, the model file): `run` may be a model.pt path itself."""
    if run.endswith(".pt") and Path(run).is_file():
        return Path(run).parent.name or "model", run
    wf_id = workflow_id_of(run, root, tracking_uri)
    final, outputs = final_outputs(wf_id, root)
    return wf_id, outputs[final]["model"]


def export(run: str, root: str, fmt: str, dest: str | Path, tracking_uri: str | None = None) -> Path:
    name, uri = model_uri(run, root, tracking_uri)
    model, mcfg = load_model(uri)
    exports = family_of_model(mcfg.kind).exports
    if fmt not in exports:
        have = sorted(exports)
        raise ExportError(f"FORMAT {fmt!r}: a {mcfg.kind} model exports to {have or 'no other format yet'}")
    folder = exports[fmt](model, mcfg, Path(dest) / f"{name}-{fmt}")
    readable_as_umask_allows(folder)
    return folder
