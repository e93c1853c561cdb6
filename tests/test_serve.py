"""Serving a registered model. `make serve` (pipelines/serving.py) runs MLflow's scoring server with
the project's venv without the venv on PATH; a registered pyfunc's requirements.txt names only the
distributions it imports, and a fresh process that loads and predicts with it imports nothing else
(no ray, deepspeed, pycocoevalcap, boto3); the registered version is described by its workflow,
data and evaluation metrics; the served endpoint answers a posted image and text with the
embeddings the evaluation computes for them (slow: it trains the tiny CLIP)."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pandas as pd
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import image_bytes
from tests.servers import free_port, wait_for
from tests.test_export_hf import TINY, _model_file

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("config", "infra", "data", "models", "training", "pipelines", "families")
# what a served pyfunc has no use for: never a requirement, never imported
NOT_SERVING = ("ray", "deepspeed", "pycocoevalcap", "boto3", "botocore", "webdataset", "transformers", "safetensors")
# imported by mlflow's dependencies when installed, without being a declared dependency of theirs
OPTIONAL = {
    "psutil": "opentelemetry-sdk's resource detection",
    "pygments": "mako's (alembic's) highlighting",
    "tqdm": "mlflow.genai's progress bars",
}

LOAD_AND_PREDICT = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
mlflow.pyfunc.load_model(sys.argv[2]).predict(pd.read_pickle(sys.argv[3]))
json.dump(sorted(sys.modules), open(sys.argv[4], "w"))
"""


def _closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` install: themselves and their dependencies (with extras)."""
    seen: dict[str, set] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen and set(req.extras) <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | set(req.extras)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in seen[name] or {""}):
                todo.append(r)
    return set(seen)


def _strays(modules: list[str], requirements: list[str], code: tuple) -> list[str]:
    """Top-level modules neither stdlib, nor the pyfunc's code, nor of a distribution the requirements
    install (nor OPTIONAL)."""
    owners, allowed, out = packages_distributions(), _closure(requirements), []
    for top in sorted({m.split(".")[0] for m in modules}):
        if top in sys.stdlib_module_names or top.startswith("_") or top in ("cython_runtime", *OPTIONAL):
            continue  # stdlib, private extension helpers (_cffi_backend, _cython_*), the editable finder
        if top.startswith("code_model_"):
            continue  # the model's own script (pipelines/register.py's pyfunc_model.py), as MLflow names it
        if top in PROJECT:
            if top not in code:
                out.append(f"{top} (project code the model does not carry)")
            continue
        dists = {canonicalize_name(d) for d in owners.get(top, [])}
        if not dists & allowed:
            out.append(f"{top} ({', '.join(sorted(dists)) or 'no distribution'})")
    return out


def _tiny_model(kind: str, tmp_path: Path):
    """(model file, extra artifacts, input rows) of a tiny model of `kind`."""
    if kind == "clip":
        from families.clip.config import ClipModelConfig
        from families.clip.serve import extra_artifacts

        _, path = _model_file(tmp_path, ClipModelConfig(**TINY))
        rows = pd.DataFrame({"image": [image_bytes(1), b""], "text": ["", "a photo of a cat"]})
        return path, extra_artifacts(None, {}, tmp_path), rows
    if kind == "mae":
        from families.mae.config import ViTClassifierConfig

        m = ViTClassifierConfig(
            image_size=32, patch_size=8, vision_width=64, vision_layers=1, vision_heads=2, num_classes=3
        )
        _, path = _model_file(tmp_path, m)
        return path, {}, pd.DataFrame({"image": [image_bytes(2)]})
    from data.text.bpe import train_bpe
    from families.mdlm.config import MDLMModelConfig

    tok = train_bpe(["To be, or not to be, that is the question."] * 20, 300)
    m = MDLMModelConfig(vocab_size=tok.vocab_size, mask_id=tok.mask_id, context_length=32, width=32, layers=1, heads=2)
    _, path = _model_file(tmp_path, m)
    (tmp_path / "tokenizer.json").write_text(tok.json)
    sampling = {"gen_length": 4, "block_length": 4, "gen_steps": 2, "temperature": 0.0, "seed": 0}
    (tmp_path / "sampling.json").write_text(json.dumps(sampling))
    extra = {"tokenizer": str(tmp_path / "tokenizer.json"), "sampling": str(tmp_path / "sampling.json")}
    return path, extra, pd.DataFrame({"prompt": ["To be"]})


def _register(tmp_path: Path, path, name: str, extra=None) -> tuple[str, dict]:
    from infra.tracking import Tracker
    from pipelines.register import register_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Tracker(uri).start("tests", "register", artifact_location=(tmp_path / "artifacts").as_uri())
    out = register_model(str(path), name, "wf-1", uri, run.run_id, tmp_path, extra)
    run.end()
    return uri, out


@pytest.mark.parametrize("kind", ["clip", "mae", "mdlm"])
def test_a_registered_pyfunc_requires_and_imports_only_what_it_uses(kind, tmp_path):
    import mlflow

    from pipelines.family import family_of_model
    from pipelines.register import CODE, pip_requirements

    path, extra, rows = _tiny_model(kind, tmp_path)
    uri, out = _register(tmp_path, path, f"tiny-{kind}", extra)
    mlflow.set_tracking_uri(uri)
    wanted = pip_requirements(family_of_model(kind).serve.requirements)
    got = Path(mlflow.pyfunc.get_model_dependencies(out["model_uri"])).read_text().split()
    assert got == wanted and "mlflow==3.17.2" in got
    assert not {canonicalize_name(Requirement(r).name) for r in got} & set(NOT_SERVING), got

    rows.to_pickle(tmp_path / "rows.pkl")
    cmd = [sys.executable, "-c", LOAD_AND_PREDICT, uri, out["model_uri"], tmp_path / "rows.pkl", tmp_path / "mods"]
    # a serving machine: an empty cache and no package index (the model fetches nothing: CLIP's BPE
    # merges travel with it, as MDLM's tokenizer does)
    offline = dict(os.environ, PRETRAIN_CACHE=str(tmp_path / "empty-cache"), PIP_NO_INDEX="1")
    subprocess.run(list(map(str, cmd)), check=True, cwd=tmp_path, env=offline)
    modules = json.loads((tmp_path / "mods").read_text())
    tops = {m.split(".")[0] for m in modules}
    assert not tops & {*NOT_SERVING, "pipelines"}, sorted(tops & {*NOT_SERVING, "pipelines"})
    assert {"torch", "mlflow", "families", "training"} <= tops  # it did load the model
    assert _strays(modules, got, CODE) == []


def test_the_checks_see_a_stray_import():
    from pipelines.register import CODE

    assert _strays(["boto3.session", "numpy", "json", "families.clip"], ["numpy>=1.26"], CODE) == ["boto3 (boto3)"]
    assert _strays(["pipelines.cli", "yaml"], ["mlflow==3.17.2"], CODE) == [
        "pipelines (project code the model does not carry)"
    ]  # pyyaml comes with mlflow


def test_the_registered_version_is_described_by_its_workflow_data_and_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    from families.clip.config import ClipModelConfig
    from pipelines.register import describe_version

    _, path = _model_file(tmp_path, ClipModelConfig(**TINY))
    uri, out = _register(tmp_path, path, "tiny-clip")
    (tmp_path / "manifest.json").write_text(json.dumps({"source": "demo:emoji", "splits": {}}))
    shard = {"manifest": str(tmp_path / "manifest.json"), "samples": 400, "train_samples": 3600, "eval_samples": 40}
    metrics = {"zeroshot_top1": 0.412345, "i2t_R5": 0.5, "eval_samples": 40, "note": "not a number", "ok": True}
    evaluate = {"metrics": metrics, "metrics_file": str(tmp_path / "metrics.json")}
    describe_version(uri, "tiny-clip", out["version"], "wf-1", "pretrain", shard, evaluate)

    version = MlflowClient(uri).get_model_version("tiny-clip", str(out["version"]))
    text = version.description
    assert "step `pretrain` of workflow `wf-1`" in text and "`demo:emoji`: 3,600 training samples, 40 held-out" in text
    assert (
        "| metric | value |\n|---|---|\n| zeroshot_top1 | 0.4123 |\n| i2t_R5 | 0.5 |\n| eval_samples | 40 |\n" in text
    )
    assert "note" not in text and "| ok |" not in text  # numbers only
    assert version.tags["evaluate/zeroshot_top1"] == "0.412345" and version.tags["evaluate/eval_samples"] == "40"
    assert version.tags["data.train_samples"] == "3600" and version.tags["workflow_id"] == "wf-1"


def test_make_serve_runs_the_venvs_mlflow_with_its_bin_on_path(tmp_path):
    from infra.local_server import server_env
    from pipelines.serving import serve_command

    made = subprocess.run(
        ["make", "-n", "serve", "RUN=models:/tiny/1", "PORT=6123", "TRACKING=sqlite:///x.db"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    cli = "-m pipelines.cli serve models:/tiny/1 --port 6123 --tracking-uri sqlite:///x.db"
    assert [line for line in made if "pipelines.cli serve" in line] == [f".venv/bin/python {cli}"]
    cmd = serve_command("models:/tiny/1", 6123)
    assert cmd[0] == sys.executable and cmd[1:5] == ["-m", "mlflow", "models", "serve"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--env-manager") + 1] == "local"
    env = server_env("sqlite:///x.db", {"PATH": "/usr/bin:/bin"})  # the venv not activated
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db" and env["PATH"].endswith(":/usr/bin:/bin")
    assert shutil.which("uvicorn", path=env["PATH"]) == str(Path(sys.executable).parent / "uvicorn")


def test_serve_names_a_missing_version_or_a_uri_that_is_not_one(tmp_path, capsys):
    from infra.tracking import Tracker
    from pipelines.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["serve", "models:/nothing/3", "--tracking-uri", uri]) == 2
    assert f"models:/nothing/3: no MLflow store at {uri}" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # not created by looking
    Tracker(uri).start("tests", "a run").end()
    assert main(["serve", "models:/nothing/3", "--tracking-uri", uri]) == 2
    assert "models:/nothing/3: no such registered model version" in capsys.readouterr().err
    assert main(["serve", "clip-small", "--tracking-uri", uri]) == 2
    assert "clip-small: expected models:/<name>/<version>" in capsys.readouterr().err


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (the CLI turned MLflow's, and its uvicorn), SIGKILL to what is left."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone
    proc.wait()


def _post(port: int, body: dict) -> list[dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["predictions"]


@pytest.fixture(scope="module")
def held_out_pair(tiny_ddp_run, tiny_manifest):
    """(model file, the evaluate step's image and text embeddings of the first held-out pair, its
    JPEG bytes and caption): embed_eval_split is what the evaluate step runs."""
    from data.loading.shard_reading import eval_samples
    from data.writing.sharder import shard_urls
    from families.clip.evaluate import embed_eval_split
    from families.registry import load_model

    model, mcfg = load_model(tiny_ddp_run["model"])
    urls = shard_urls(tiny_manifest, "eval")
    img, txt, items = embed_eval_split(model, mcfg, urls, batch_size=5)
    first = next(iter(eval_samples(urls)))
    assert first["key"] == items[0]["key"]
    return tiny_ddp_run["model"], img[0], txt[0], first["jpg"], items[0]["caption"]


@pytest.mark.slow
def test_the_served_model_answers_with_the_evaluations_embeddings(held_out_pair, tmp_path):
    model_file, want_img, want_txt, jpg, caption = held_out_pair
    uri, out = _register(tmp_path, model_file, "tiny-clip")
    port = free_port()
    # the command `make serve RUN=... PORT=... TRACKING=...` runs, with the venv's bin not on PATH
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", out["model_uri"], "--port", str(port), "--tracking-uri", uri]
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def up():
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).status == 200

        wait_for("the model server", up, timeout=180)
        b64 = base64.b64encode(jpg).decode()
        image = _post(port, {"dataframe_split": {"columns": ["image"], "data": [[b64]]}})
        text = _post(port, {"dataframe_records": [{"text": caption}]})
        both = _post(port, {"dataframe_records": [{"image": b64, "text": ""}, {"image": "", "text": caption}]})
    finally:
        _stop_group(server)
        log.close()
    assert torch.tensor(image[0]["image_embedding"]).sub(want_img).abs().max() <= 1e-5
    assert torch.tensor(text[0]["text_embedding"]).sub(want_txt).abs().max() <= 1e-5
    assert both[0]["text_embedding"] == [] and both[1]["image_embedding"] == []
    assert torch.tensor(both[0]["image_embedding"]).sub(want_img).abs().max() <= 1e-5
    assert torch.tensor(both[1]["text_embedding"]).sub(want_txt).abs().max() <= 1e-5
    assert f"serving {out['model_uri']} on http://127.0.0.1:{port}/invocations" in (tmp_path / "serve.log").read_text()
