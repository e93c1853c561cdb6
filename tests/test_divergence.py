"""A diverging loss stops the run (real training, a NaN injected into rank 0's loss): after
train.max_bad_steps steps in a row training stops naming the steps and the last good checkpoint,
no checkpoint is written from the bad weights, and a rerun with other settings resumes from that
checkpoint (train.resume_from) under its own lr; a single bad step is skipped and training goes on."""

import math
from pathlib import Path

import pytest
import torch

from tests.faults import faults
from training.checkpoint.writes import dir_name
from training.divergence import DivergedError

pytestmark = pytest.mark.slow


def test_nan_losses_stop_training_and_a_rerun_resumes_from_the_last_good_checkpoint(train_tiny, tmp_path):
    run = tmp_path / "diverging"
    with pytest.raises(DivergedError) as err:
        train_tiny(run, "train.max_bad_steps=3", callbacks=[faults(nan_steps=(7, 100))])
    good = run / "ray" / dir_name(5)
    assert str(err.value) == (
        "training diverged: the loss was nan on 3 step(s) in a row (steps 7-9; train.max_bad_steps 3); those steps "
        f"did not update the weights; the last good checkpoint (step 5) is kept: rerun from it with other settings, "
        f"e.g. --set train.lr=<lower> --set train.resume_from={good}"
    )
    assert sorted(p.name for p in (run / "ray").glob("checkpoint_0*")) == [dir_name(5)]
    assert not (run / "model.pt").exists()
    state = torch.load(good / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())

    # other settings, from the kept checkpoint: a lower lr; one more NaN step (8) is skipped, not fatal
    out = train_tiny(
        tmp_path / "resumed", "train.lr=5e-4", f"train.resume_from={good}", callbacks=[faults(nan_steps=(8, 1))]
    )
    assert out["resumed_from"] == 5 and out["steps"] == 20
    losses = out["losses"]
    assert len(losses) == 20 and math.isnan(losses[7]) and all(math.isfinite(x) for i, x in enumerate(losses) if i != 7)
    final = torch.load(Path(out["checkpoint"]) / "state.pt", weights_only=True)
    assert [g["initial_lr"] for g in final["optimizer"]["param_groups"]] == [5e-4, 5e-4]  # this run's lr
    assert all(torch.isfinite(v).all() for v in final["model"].values())
