"""Curation's scoring killed for real (SIGKILL to the driver and its local Ray, mid-run): a rerun
scores only the shards whose scores were not complete, leaves the complete files as they were
(same inode, same mtime), and no temporary file of the killed run stays behind; the scoring pool
prints no error line of Ray's while it runs."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from data.curation.score import SUFFIX, score_shards
from families.clip.config import ClipModelConfig
from families.clip.curate import ClipScorerFactory
from tests.servers import wait_for
from tests.test_console import RAY_ERROR
from tests.test_curation_score import _shards
from tests.test_export_hf import TINY, _model_file

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# the tiny scorer made slow (a second a batch, a shard a batch) so that the kill lands mid-run
_CHILD = """
import sys, time
from infra.ray_cluster import init_ray
from data.curation.score import score_shards
from families.clip.config import ClipModelConfig
from families.clip.curate import ClipScorerFactory

class Slow:
    def __init__(self, path):
        self.path = path

    def __call__(self):
        scorer = ClipScorerFactory(self.path, ClipModelConfig)()
        embed = scorer.embed
        def slow(pixels, captions):
            time.sleep(1.0)
            return embed(pixels, captions)
        scorer.embed = slow
        return scorer

init_ray(num_cpus=2)
score_shards(sys.argv[2].split(","), sys.argv[3], Slow(sys.argv[1]), actors=1, batch_size=4)
"""


def test_scoring_killed_mid_run_resumes_without_scoring_complete_shards_again(ray_local, tmp_path):
    _, path = _model_file(tmp_path, ClipModelConfig(**TINY))
    urls, _ = _shards(tmp_path / "shards", n_shards=10, per=4)
    out = tmp_path / "scores"
    ray_tmp = Path(os.path.realpath("/tmp")) / f"rc{os.getpid()}"
    err = (tmp_path / "child.err").open("w")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), ",".join(urls), str(out)],
        cwd=ROOT,
        env={**os.environ, "RAY_TMPDIR": str(ray_tmp)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    wait_for("two scored shards", lambda: len(list(out.glob(f"*{SUFFIX}"))) >= 2, timeout=180, every=0.2)
    os.killpg(child.pid, signal.SIGKILL)  # the driver and its local Ray, actors included
    child.wait()
    err.close()
    wait_for(
        "the killed Ray to stop",
        lambda: subprocess.run(["pgrep", "-s", str(child.pid)], capture_output=True).returncode != 0,
        timeout=60,
    )
    done = {p.name: p.stat() for p in out.glob(f"*{SUFFIX}")}
    assert 2 <= len(done) < 10
    # a healthy pool says nothing at error level (a restartable actor with its arguments in the
    # object store made Ray print one per actor)
    errors = [x for x in (tmp_path / "child.err").read_text().splitlines() if RAY_ERROR.match(x)]
    assert not errors, "\n".join(errors)

    (out / f"train-000009{SUFFIX}.tmp99999").write_bytes(b"PAR1 cut")  # as a write cut by the kill leaves it
    again = score_shards(urls, str(out), ClipScorerFactory(str(path), ClipModelConfig), actors=2, batch_size=4)
    assert (
        again["skipped"] == len(done) and again["scored"] == 10 - len(done) and again["samples"] == 4 * again["scored"]
    )
    for name, st in done.items():  # complete: not scored again
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert len(list(out.glob(f"*{SUFFIX}"))) == 10
    assert not [p for p in out.iterdir() if not p.name.endswith(SUFFIX)]  # no temporary file left
