"""What a user reads on the console of `make pretrain-clip`: one line per training log step with
the wall time, the step of the total, loss, samples/s, MFU, elapsed time and ETA; no Ray prefixes
or colours in front of them; no warning that the project itself causes; progress bars for
sharding and evaluation (none under CI=true without a terminal); no error line of Ray's and no
traceback in a healthy run, also beside another local Ray cluster (a user's other run); and how to
open MLflow."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.loading.shard_reading import eval_batches
from data.progress import progress_bar
from data.writing.shard_io import write_tar_shard
from infra.clock import duration
from tests.conftest import image_bytes

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(
    r"^\[train\] (\d\d:\d\d:\d\d) step (\d+)/(\d+) \((\d+)%\) loss (\d+\.\d{4}) lr \S+ .*\| "
    r"(\d+) samples/s MFU (\d+\.\d)% \| elapsed (\d+[smhd]\S*)( ETA (\d+[smhd]\S*))?$"
)
# what the project's own code once caused: a warning attributed to one of its files, Ray Data's
# deprecated remote args, MLflow's pickled python_model and untyped predict, a healthy run's
# rejected duplicates logged as warnings
PROJECT_WARNING = re.compile(
    rf"{re.escape(str(ROOT))}/(?!\.venv)\S+\.py:\d+: \w*Warning|ray_remote_args|"
    r"causes it to be serialized using CloudPickle|Add type hints to the `predict`|WARNING mlflow|"
    r"^WARNING (data|pipelines|infra|training|families)\."
)
# an error line of Ray's own logging (`[date time E pid tid] file.cc:line: ...`): a healthy run has none
RAY_ERROR = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ E \d+ \d+\] ")


@pytest.mark.slow
def test_a_default_run_reads_well_on_the_console(tmp_path, ray_local):
    # ray_local: this session's cluster runs beside the run's own (Ray's state API, which Ray Train's
    # placement-group cleaner calls, once died there with `Found multiple active Ray instances`)
    sets = ["data.limit=400", "data.shard_samples=200", "train.batch_size=32", "train.epochs=2", "train.log_every=2"]
    sets += ["model.vision_layers=2", "model.text_layers=2", f"runs_dir={tmp_path / 'runs'}"]
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "configs/clip_small.yaml"]
    env = dict(os.environ, CI="true", PYTHONWARNINGS="default")
    for k in ("RAY_DISABLE_WORKER_LOG_PREFIX", "MLFLOW_LOGGING_LEVEL"):
        env.pop(k, None)  # what a user's shell has: the project sets them itself
    proc = subprocess.run(
        [*cmd, *(a for s in sets for a in ("--set", s))], cwd=ROOT, env=env, capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    lines = [m for x in out.splitlines() if (m := LINE.match(x))]
    train = [x for x in out.splitlines() if x.startswith("[train]") and " step " in x and "loss" in x]
    assert lines and len(lines) == len(train), "\n".join(train)  # every log line in the format
    total = int(lines[0].group(3))
    assert [int(m.group(2)) for m in lines] == sorted({*range(2, total + 1, 2), total})  # one per log step
    assert all(0.0 < float(m.group(7)) < 150.0 and int(m.group(6)) > 0 for m in lines)  # MFU %, samples/s
    assert all(m.group(10) for m in lines[1:])  # an ETA once the pace is known
    assert lines[-1].group(4) == "100"
    assert "pid=" not in out and "\x1b[" not in out  # no Ray prefix, no colour codes

    warned = [x for x in out.splitlines() if PROJECT_WARNING.search(x)]
    assert not warned, "\n".join(warned)
    errors = [x for x in out.splitlines() if RAY_ERROR.match(x)]  # e.g. Ray Train's preemption watcher's
    assert not errors, "\n".join(errors)
    assert "Traceback" not in out, out[out.index("Traceback") - 200 :][:3000]
    assert "img/s" not in out  # CI=true, no terminal: no progress bars
    assert "make mlflow-ui" in out and "workflowType=machine_learning" in out


def test_progress_bars_count_the_evaluation_unless_ci_is_quiet(tmp_path, monkeypatch, capsys):
    samples = [(f"k{i}", {"jpg": image_bytes(i), "txt": b"a caption", "json": b"{}"}) for i in range(5)]
    write_tar_shard(str(tmp_path), "eval-000000", samples)
    urls = [str(tmp_path / "eval-000000.tar")]
    monkeypatch.delenv("CI", raising=False)
    batches = list(eval_batches(urls, 2, 32, total=5))
    assert [len(b[1]) for b in batches] == [2, 2, 1] and np.isfinite(batches[0][0].numpy()).all()
    err = capsys.readouterr().err
    assert "evaluate: 100%" in err and "5/5" in err
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(os, "isatty", lambda fd: False)  # as in CI (and under `pytest -s` too)
    with progress_bar(5, "quiet") as bar:
        bar.update(5)
    assert capsys.readouterr().err == ""  # CI=true and stderr is not a terminal


def test_the_eta_follows_the_recent_pace_not_the_first_steps():
    from training.pace import PACE_LINES, Pace

    pace, clock = Pace(0.0), 0.0
    for step in range(10, 310, 10):  # 10 s a step for 150 steps (a busy machine), then 1 s a step
        clock += 10 * (10.0 if step <= 150 else 1.0)
        head, tail = pace.at(step, 1000, clock)
    assert head.endswith("step 300/1000 (30%)") and tail.startswith(f"elapsed {duration(clock)}")
    assert tail.endswith(" ETA 11m40s")  # 700 steps at 1 s (the last PACE_LINES intervals), not at 5.5 s
    assert PACE_LINES * 10 < 150
    assert pace.at(1000, 1000, clock + 700)[1].endswith(" ETA 0s")  # the last step
    head, tail = Pace(0.0).at(10, 100, 5.0)
    assert "ETA" not in tail  # the first log line: no pace yet


def test_a_bar_inside_a_ray_task_is_written_as_whole_lines():
    """The driver gets a worker's output line by line: each refresh of the bar is a line of its own."""
    import io

    from tqdm import tqdm

    from data.progress import _Lines

    out = io.StringIO()
    with tqdm(total=4, desc="evaluate", unit="img", file=_Lines(out), mininterval=0, ncols=80) as bar:
        for _ in range(4):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("evaluate:   0%") and lines[-1].startswith("evaluate: 100%")
    assert len(lines) >= 5 and "\r" not in out.getvalue() and all(x.startswith("evaluate:") for x in lines)
