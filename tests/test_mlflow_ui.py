"""The MLflow UI a user opens after a run: `make mlflow-ui` (python -m pipelines.cli ui) serves the
recipe's own store on 127.0.0.1; the link a finished run prints opens the experiment in the
model-training view (not MLflow 3.17's GenAI overview), with the family's headline metrics as columns
of the runs table; a real browser (headless Chromium, Debian's package) renders it."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

import pytest

from families.registry import FAMILIES
from infra.mlflow_views import experiment_url, run_url
from pipelines.common import save_metrics
from pipelines.config import load_recipe
from pipelines.mlflow_ui import run_hint, tracker_factory
from pipelines.workflow import Step, Workflow
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/clip_small.yaml"
METRICS = {
    "pretrain": {"final_loss": 1.875, "mfu": 0.29, "samples_per_s": 301.5, "steps": 975},
    "evaluate": {"zeroshot_top1": 0.401, "i2t_R5": 0.572, "t2i_R5": 0.587, "eval_samples": 332},
}


@pytest.fixture
def chromium() -> str:
    """Headless Chromium, found before any workflow or server is started for it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: headless Chromium is required (make test installs Debian's chromium)")
        pytest.skip("no chromium on PATH: `apt-get install chromium` (root) to check the MLflow UI in a browser")
    return path


def _workflow_store(runs: Path):
    """A finished workflow's MLflow runs, written by the workflow engine and the real metric logging."""

    def logs(name):
        return lambda ctx: save_metrics(ctx, METRICS[name])

    recipe = load_recipe(RECIPE, [f"runs_dir={runs}"])
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    factory = tracker_factory(uri, recipe.tracking.experiment, (runs / "mlartifacts").as_uri(), FAMILIES["clip"])
    wf = Workflow("clip-ui", runs, [Step(n, logs(n), config=METRICS[n]) for n in METRICS], factory)
    wf.run()
    return wf.parent


def _browse(chromium: str, url: str, out: Path) -> str:
    """The rendered page's DOM (and a screenshot in `out`), after its scripts ran."""
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1500,900"]
    flags.append("--virtual-time-budget=20000")
    subprocess.run([*flags, f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    return subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True).stdout


@pytest.fixture
def ui(chromium, tmp_path):
    """`make mlflow-ui`'s command on the store of a finished workflow; yields (base URL, parent run)."""
    parent = _workflow_store(tmp_path / "runs")
    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.cli", "ui", str(RECIPE), "--set", f"runs_dir={tmp_path / 'runs'}"]
    log = open(tmp_path / "ui.log", "w")
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "ui.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not answer in 120 s:\n" + (tmp_path / "ui.log").read_text())
        yield base, parent, tmp_path / "ui.log"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_the_experiment_opens_in_the_model_training_view_with_headline_columns(chromium, ui, tmp_path):
    base, parent, log = ui
    assert experiment_url(base, parent.experiment_id, "clip") in log.read_text()  # the link it prints is checked
    page = _browse(chromium, experiment_url(base, parent.experiment_id, "clip"), tmp_path / "experiment.png")
    assert "clip-ui" in page  # the workflow's run in the runs table
    for column in ("evaluate/zeroshot_top1", "evaluate/i2t_R5", "evaluate/t2i_R5", "pretrain/final_loss"):
        assert column in page, column  # a column of the runs table, not hidden in a picker
    assert "0.401" in page and "1.875" in page  # their values
    assert "clip headline metrics" in page  # the saved view, named in the Views menu
    assert "Detect Issues" not in page and "Traces" not in page.split("Runs", 1)[0]  # not GenAI's overview
    assert (tmp_path / "experiment.png").stat().st_size > 20_000  # a rendered page, not a blank one

    page = _browse(chromium, run_url(base, parent.experiment_id, parent.run_id), tmp_path / "run.png")
    for name, value in (("evaluate/zeroshot_top1", "0.401"), ("pretrain/mfu", "0.29")):
        assert name in page and value in page  # the run's overview lists every step's numbers


def test_the_end_of_run_hint_opens_the_store_it_ran_with_in_the_model_training_view(tmp_path):
    runs = tmp_path / "my runs"
    parent = _workflow_store(runs)
    recipe = load_recipe(RECIPE, [f"runs_dir={runs}"])
    sets = [f"runs_dir={runs}", "train.epochs=3", "tracking.experiment=clip-small"]
    lines = run_hint(
        Namespace(recipe="configs/clip_small.yaml", set=sets), recipe, f"sqlite:///{runs}/mlflow.db", parent
    )
    words = shlex.split(lines[0])
    assert words[1:3] == ["make", "mlflow-ui"] and words[3].startswith("ARGS=")  # the default recipe: no RECIPE=
    assert shlex.split(words[3][len("ARGS=") :]) == [
        "--set",
        f"runs_dir={runs}",
        "--set",
        "tracking.experiment=clip-small",
    ]
    assert experiment_url("http://127.0.0.1:5000", parent.experiment_id, "clip") in lines[1]
    assert run_url("http://127.0.0.1:5000", parent.experiment_id, parent.run_id) in lines[2]
    registered = {"model_uri": "models:/clip-small/3", "registered_model": "clip-small", "version": 3}
    lines = run_hint(Namespace(recipe="configs/clip_small.yaml", set=[]), recipe, "sqlite:///x", parent, registered)
    assert lines[0] == "MLflow:   make mlflow-ui   then open" and "make serve RUN=models:/clip-small/3" in lines[3]
    assert "/#/models/clip-small/versions/3?workflowType=machine_learning" in lines[3]

    server = "https://me:secret@mlflow.example:8443"  # a tracking server: its own links, no password
    lines = run_hint(Namespace(recipe="configs/x.yaml", set=[]), recipe, server, parent)
    assert "secret" not in "".join(lines) and "make mlflow-ui" not in "".join(lines)
    assert experiment_url("https://mlflow.example:8443", parent.experiment_id, "clip") in lines[0]


def test_make_mlflow_ui_names_a_missing_store_or_experiment_and_creates_nothing(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["ui", str(RECIPE), "--set", f"runs_dir={tmp_path}"]) == 2
    assert "no MLflow store yet (run the workflow first" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
    _workflow_store(tmp_path)
    assert main(["ui", str(RECIPE), "--set", f"runs_dir={tmp_path}", "--set", "tracking.experiment=nope"]) == 2
    assert "no experiment 'nope' (tracking.experiment of" in capsys.readouterr().err


def test_the_saved_view_is_written_once_and_a_users_edit_of_it_is_kept(tmp_path):
    from infra.mlflow_views import view_state, view_tag

    parent = _workflow_store(tmp_path / "runs")
    key, value = view_tag("clip", FAMILIES["clip"].headline)
    tags = parent.client.get_experiment(parent.experiment_id).tags
    assert view_state(tags[key])["selectedColumns"] == [f"metrics.`{k}`" for k in FAMILIES["clip"].headline]
    edited = view_tag("clip", ("evaluate/i2t_R5",))[1]  # the user kept one column and saved the view
    parent.client.set_experiment_tag(parent.experiment_id, key, edited)
    _workflow_store(tmp_path / "runs")  # the workflow runs again: its parent run resumes
    assert parent.client.get_experiment(parent.experiment_id).tags[key] == edited
