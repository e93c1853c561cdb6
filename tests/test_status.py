"""`make status`: one line per step with its state, attempt and worker-group restarts, duration,
headline numbers, and for a running training step its progress and ETA, read from a real workflow's
records (pipelines.workflow, plain Python steps), the training run's storage (training/starts.py,
checkpoint folders) and a real MLflow store (sqlite), in a local runs folder and in S3."""

import hashlib
import re
import threading
import time
from pathlib import Path

import pytest

from infra.clock import duration
from infra.storage import Store, join, s3_client
from infra.tracking import Tracker, public_uri
from pipelines.cli import main
from pipelines.progress import tracking_uri
from pipelines.status import headline, print_status
from pipelines.workflow import Step, Workflow, write_json
from training import starts
from training.checkpoint.writes import EXPERIMENT, dir_name

EVAL = {"zeroshot_top1": 0.401, "i2t_R5": 0.572, "t2i_R5": 0.587, "eval_samples": 120}


def _factory(uri: str, artifacts: str):
    def make(run_name, parent_id=None, resume_id=None, tags=None):
        return Tracker(uri).start("status-test", run_name, parent_id, tags, resume_id, artifact_location=artifacts)

    return make


class FakeTraining:
    """A pretrain step that leaves what a real training run leaves while it runs (its plan and two
    worker-group starts beside its checkpoints, the step-500 checkpoint, losses and samples/s to
    step 520 in its MLflow run), then waits until the test lets it finish."""

    def __init__(self):
        self.ready, self.go = threading.Event(), threading.Event()

    def __call__(self, ctx) -> dict:
        run_id = ctx.tracker.run_id
        fit = starts.record_fit(ctx.uri, 975, 32, run_id, ctx.tracker.uri)
        starts.record_start(ctx.uri, fit, None)
        starts.record_start(ctx.uri, fit, f"{ctx.uri}/{EXPERIMENT}/{dir_name(500)}")  # Ray Train's restart
        Store(join(ctx.uri, f"{EXPERIMENT}/{dir_name(500)}")).write_text("train_state.json", "{}")
        for step in range(10, 530, 10):
            ctx.tracker.log_metrics({"loss": 5.0 - step / 250 if step < 520 else 2.91, "samples_per_s": 64.0}, step)
        self.ready.set()
        assert self.go.wait(120)
        return {"model": f"{ctx.uri}/model.pt", "steps": 975, "final_loss": 2.5, "mfu": 0.031, "samples_per_s": 64.0}


def _workflow(root: Path, storage: str, training: FakeTraining) -> Workflow:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    steps = [
        Step("shard", lambda ctx: {"samples": 1200, "train_samples": 1080, "eval_samples": 120}, {"n": 1}),
        Step("pretrain", training, {"n": 2}, deps=["shard"]),
        Step("evaluate", lambda ctx: {"metrics": dict(EVAL)}, {"n": 3}, deps=["pretrain"]),
    ]
    factory = _factory(uri, (root / "mlartifacts").as_uri())
    return Workflow("wf", root, steps, tracker_factory=factory, meta={"recipe": "tiny"}, storage=storage)


def _lines(capsys, root: str, runs_dir: Path) -> dict:
    capsys.readouterr()
    print_status(root, runs_dir=str(runs_dir))
    # without the stale mark, which an edit to the project's code while the test runs adds (test_workflow's)
    out = capsys.readouterr().out.replace("  (stale: code changed)", "")
    return {m.group(1): line for line in out.splitlines() if (m := re.match(r"  - (\w+) ", line))} | {"": out}


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(the status root, the workflow's storage argument): a runs folder, or a bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "runs"), ""
    request.getfixturevalue("s3_server")
    bucket = "status-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:10]
    s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team", f"s3://{bucket}/team"


def test_status_shows_progress_restarts_and_headlines(tmp_path, where, capsys):
    root, storage = where
    runs = tmp_path / "runs"
    training = FakeTraining()
    wf = _workflow(runs, storage, training)
    thread = threading.Thread(target=wf.run)
    thread.start()
    try:
        assert training.ready.wait(120)
        lines = _lines(capsys, root, runs)
    finally:
        training.go.set()
        thread.join(120)
    assert "wf  [running]  recipe=tiny" in lines[""] and "running now:" in lines[""]
    assert re.search(r"shard +done +attempt 1 +\d+s  1200 samples, train 1080, held out 120$", lines["shard"])
    pre = lines["pretrain"]
    assert re.search(r"pretrain +running +attempt 1 \(1 restart\) +\d+s  step 520/975 \(53%\)", pre), pre
    # 64 samples/s over a global batch of 32: 2 steps/s, 455 steps to go
    assert "ETA 3m48s  loss 2.910" in pre, pre
    assert lines["evaluate"].split() == ["-", "evaluate", "pending"]

    done = _lines(capsys, root, runs)
    assert "wf  [done]" in done[""]
    assert re.search(
        r"pretrain +done +attempt 1 \(1 restart\) +\d+s  loss 2\.500, MFU 3\.1%, 64 samples/s$", done["pretrain"]
    )
    assert done["evaluate"].endswith("zero-shot top-1 0.401, i2t R@5 0.572, t2i R@5 0.587")
    assert main(["status", "--runs-dir", str(runs), *(["--storage", storage] if storage else [])]) == 0
    assert "zero-shot top-1 0.401" in capsys.readouterr().out


def test_a_step_whose_driver_died_is_stalled_and_a_failed_one_shows_its_error(tmp_path, capsys):
    """Records written by the workflow's own helpers, no lease and no MLflow: the progress comes
    from the checkpoints alone, and a step nobody runs gets no ETA."""
    runs = tmp_path / "runs"
    store = Store(runs / "wf")
    write_json(store, "workflow.json", {"id": "wf", "status": "running", "steps": ["pretrain", "evaluate"], "runs": 2})
    rec = {"name": "pretrain", "status": "running", "fingerprint": "abc", "attempts": 2, "started": time.time() - 750}
    write_json(store, "steps/pretrain.json", rec)
    step_dir = str(runs / "wf" / "pretrain-abc")
    fit = starts.record_fit(step_dir, 975, 32, None, "")
    starts.record_start(step_dir, fit, None)
    Path(step_dir, EXPERIMENT, dir_name(500)).mkdir(parents=True)
    err = {"name": "evaluate", "status": "failed", "fingerprint": "def", "attempts": 1, "seconds": 3725.2}
    write_json(store, "steps/evaluate.json", {**err, "error": "RuntimeError: out of memory\ntraceback..."})
    lines = _lines(capsys, str(runs), runs)
    assert "no live run holds it" in lines[""]
    assert re.search(r"pretrain +stalled +attempt 2 +step 500/975 \(51%\)$", lines["pretrain"]), lines
    assert re.search(r"evaluate +failed +attempt 1 +1h02m  error: RuntimeError: out of memory$", lines["evaluate"])
    assert not (runs / "mlflow.db").exists()  # status never creates an MLflow store


def test_durations_headlines_and_the_tracking_store(tmp_path):
    assert [duration(s) for s in (0.4, 41, 724, 11100, 190000, None)] == ["0s", "41s", "12m04s", "3h05m", "2d04h", ""]
    mae = {"metrics": {"finetune_accuracy": 0.61, "accuracy": 0.42, "scratch_accuracy": 0.3, "classes": 10}}
    assert headline(mae) == "fine-tuned acc 0.610, from-scratch acc 0.300, linear probe acc 0.420"
    mdlm = {"metrics": {"bound_perplexity": 41.234, "masked_accuracy": 0.2, "eval_tokens": 100}}
    assert headline(mdlm) == "perplexity <= 41.23, masked acc 0.200"
    assert (
        headline({"images_kept": 90, "stop": None, "model_uri": "models:/clip/3"}) == "90 images kept, models:/clip/3"
    )
    assert headline({"final_loss": None, "mfu": None, "samples": 12.5}) == ""  # unknown or of another type
    # a family's declared metrics (Family.headline, `<step>/<metric>`) come first, for their step only
    blip = {"metrics": {"i2t_R5": 0.4, "bleu4": 0.1, "itm_i2t_R5": 0.5, "new_score": 0.12345}}
    declared = ("pretrain/mfu", "evaluate/new_score", "evaluate/itm_i2t_R5", "evaluate/absent")
    assert headline(blip, "evaluate", declared) == "new_score 0.1235, ITM i2t R@5 0.500, i2t R@5 0.400"
    assert headline(blip, "other", declared) == "i2t R@5 0.400, ITM i2t R@5 0.500, BLEU-4 0.100"
    db = tmp_path / "mlflow.db"
    assert tracking_uri("", "sqlite:////elsewhere/mlflow.db", str(tmp_path)) is None
    db.touch()
    assert tracking_uri("", "sqlite:////elsewhere/mlflow.db", str(tmp_path)) == f"sqlite:///{db}"
    assert tracking_uri("http://127.0.0.1:5000", "", str(tmp_path)) == "http://127.0.0.1:5000"
    assert public_uri("https://me:secret@mlflow.example:8443/x") == "https://mlflow.example:8443/x"
    assert public_uri("http://u:p@[::1]:5000") == "http://[::1]:5000"


def test_restarts_are_those_of_the_latest_attempt(tmp_path):
    store = str(tmp_path)
    first = starts.record_fit(store, 100, 64, None, "")
    starts.record_start(store, first, None)
    starts.record_start(store, first, f"{tmp_path}/checkpoint_00000040")  # a restart in attempt 1
    assert starts.summary(Store(store))["restarts"] == 1
    second = starts.record_fit(store, 100, 64, None, "")  # attempt 2: the workflow rerun
    starts.record_start(store, second, f"{tmp_path}/checkpoint_00000060")
    out = starts.summary(Store(store))
    assert out["restarts"] == 0 and out["starts"] == 3 and out["last_start"]["from_step"] == 60


def test_a_curate_step_shows_its_counts_by_reason_and_precision_and_recall(tmp_path, capsys):
    """The curate step's outputs (pipelines/curate_step.py): scored, kept, removed by reason, and
    against a source's known noise its precision and recall (a reason measured but with nothing
    removed shows 0 and its recall)."""
    outputs = {
        "manifest": "/runs/wf/curate-abc/shards/manifest.json",
        "kept": 337.0,
        "removed": {"low_clip_score": 113},
        "scored": 450.0,
        "kept_fraction": 0.749,
        "score_threshold": 0.21,
        "images_per_s": 950.0,
        "removed_low_clip_score": 113.0,
        "known_swapped_captions": 90.0,
        "low_clip_score_precision": 0.6195,
        "low_clip_score_recall": 0.7778,
        "semantic_duplicate_recall": 0.0,
    }
    runs = tmp_path / "runs"
    store = Store(runs / "wf")
    write_json(store, "workflow.json", {"id": "wf", "status": "done", "steps": ["shard", "curate"], "runs": 1})
    write_json(store, "steps/shard.json", {"name": "shard", "status": "done", "attempts": 1, "seconds": 3.0})
    rec = {"name": "curate", "status": "done", "fingerprint": "abc", "attempts": 1, "seconds": 12.0}
    write_json(store, "steps/curate.json", {**rec, "outputs": outputs})
    line = _lines(capsys, str(runs), runs)["curate"]
    assert line.endswith(
        "scored 450, kept 337, removed low_clip_score 113 (P 0.62 R 0.78), semantic_duplicate 0 (R 0.00)"
    ), line
    plain = {"kept": 40, "scored": 50, "removed": {"low_clip_score": 8, "semantic_duplicate": 2}}
    assert headline(plain) == "scored 50, kept 40, removed low_clip_score 8, semantic_duplicate 2"
    assert headline({"kept": 5, "scored": 5, "removed": {}}) == "scored 5, kept 5, removed none"


def test_a_comparison_shows_its_gains_and_long_step_names_keep_the_columns(tmp_path, capsys):
    """CLIP's curate.compare: the compare step's gains, signed; a step name longer than the usual
    column (pretrain_uncurated) widens the name column of that workflow's every line alike."""
    gains = {"metrics": {"steps": 330.0, "zeroshot_top1_gain": -0.0211, "i2t_R5_gain": 0.1024, "t2i_R5_gain": 0.1054}}
    assert headline(gains) == "zero-shot -0.021, i2t R@5 +0.102, t2i R@5 +0.105"
    runs = tmp_path / "runs"
    store = Store(runs / "wf")
    names = ["shard", "pretrain_uncurated", "compare"]
    write_json(store, "workflow.json", {"id": "wf", "status": "done", "steps": names, "runs": 1})
    for n in names:
        rec = {"name": n, "status": "done", "attempts": 1, "seconds": 3.0}
        write_json(store, f"steps/{n}.json", {**rec, "outputs": gains if n == "compare" else {}})
    lines = _lines(capsys, str(runs), runs)
    assert lines["compare"].endswith("zero-shot -0.021, i2t R@5 +0.102, t2i R@5 +0.105")
    assert len({lines[n].index(" done ") for n in names}) == 1  # the state column lines up
