"""What a user opens in the MLflow UI (3.17): the experiment in the model-training view, with a saved
view whose columns are the workflow's headline metrics, and the links that open them.

- The UI picks its GenAI or model-training side from the `workflowType` query parameter (else the
  browser's last choice, GenAI by default); the experiment's `mlflow.experimentKind` tag alone does
  not switch it. Every link printed here carries `workflowType=machine_learning`.
- A saved view is an experiment tag `mlflow.sharedViewState.<key>`: an envelope (name, times) around
  the runs table's state (the columns shown, the sort). It is listed in the UI's "Views" menu and
  opened by `viewStateShareKey=<key>` on the experiment's runs page (on the experiment's bare page
  the parameter is dropped by its redirect).
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

VIEW_TAG = "mlflow.sharedViewState."
MODEL_TRAINING = {"workflowType": "machine_learning"}


def view_key(kind: str) -> str:
    """The saved view of a family's workflows (one per family: the experiment may hold several)."""
    return f"{kind}-headline"


def view_tag(kind: str, headline: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """The experiment tag (key, value) of the saved view showing `headline` (`<step>/<metric>`) as
    columns, newest run first."""
    state = {
        "selectedColumns": [f"metrics.`{k}`" for k in headline],
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }
    now = int(time.time() * 1000)
    envelope = {"name": f"{kind} headline metrics", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return VIEW_TAG + view_key(kind), json.dumps(envelope)


def view_state(tag_value: str | None) -> dict | None:
    """The runs table's state a saved view holds (None: no view, or not one of this shape)."""
    try:
        return json.loads(json.loads(tag_value or "")["state"])
    except (ValueError, KeyError, TypeError):
        return None


def experiment_url(base: str, experiment_id: str, kind: str | None = None) -> str:
    """The experiment's runs table in the model-training view (with the family's saved view)."""
    query = dict(MODEL_TRAINING, **({"viewStateShareKey": view_key(kind)} if kind else {}))
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def model_version_url(base: str, name: str, version: int | str) -> str:
    """A registered model version's page (its description: workflow, data, evaluation)."""
    return f"{base.rstrip('/')}/#/models/{name}/versions/{version}?{urlencode(MODEL_TRAINING)}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page (its overview: parameters, metrics as a table, tags, child runs)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{urlencode(MODEL_TRAINING)}"
