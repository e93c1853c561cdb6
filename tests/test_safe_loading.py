"""Loading a file never runs code: a planted model.pt, checkpoint state.pt or demo data file that
carries a pickle `__reduce__` payload is refused before the payload runs, while the project's own
files load (with torch.load(weights_only=True) and a numpy-only unpickler)."""

import gzip
import pickle

import numpy as np
import pytest
import torch


class Payload:
    """Unpickling this runs `open(marker, 'w')`: the file appearing means code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_model_or_checkpoint_is_refused_without_running_it(tmp_path):
    from families.registry import load_model
    from training.config import TrainConfig
    from training.strategy import STATE_FILE, DDPStrategy, export_state_dict

    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker), "model_config": {"kind": "clip"}}, tmp_path / "model.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(tmp_path / "model.pt")
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    torch.save({"model": Payload(marker), "optimizer": {}, "scheduler": {}}, ckpt / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError):
        export_state_dict(ckpt)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    strategy = DDPStrategy(
        model,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
        TrainConfig(clip_grad=1.0, grad_accum=1, precision="fp32"),
        1,
        torch.device("cpu"),
        0,
    )
    with pytest.raises(pickle.UnpicklingError):
        strategy.load(ckpt)
    assert not marker.exists()


@pytest.mark.slow
def test_the_projects_own_model_and_checkpoint_load_safely(tiny_ddp_run):
    from pathlib import Path

    from families.registry import load_model
    from training.strategy import export_state_dict

    model, mcfg = load_model(tiny_ddp_run["model"])
    assert mcfg.kind == "clip" and sum(p.numel() for p in model.parameters()) > 0
    weights = export_state_dict(Path(tiny_ddp_run["checkpoint"]))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_the_demo_data_files_are_pinned_and_only_hold_numpy_arrays(tmp_path, monkeypatch):
    from data.reading.demo import ANIMAL_FILES, NumpyUnpickler, render_animal_mnist

    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    planted = cache / "pypi" / "animal-mnist" / ANIMAL_FILES.format("data").rpartition("/")[2]
    planted.parent.mkdir(parents=True)
    with gzip.open(planted, "wb") as f:
        pickle.dump(Payload(marker), f)
    monkeypatch.setenv("PRETRAIN_CACHE", str(cache))
    with pytest.raises(RuntimeError, match="is not the pinned .*refusing to use it"):
        render_animal_mnist(tmp_path / "demo")
    with (
        gzip.open(planted) as f,
        pytest.raises(pickle.UnpicklingError, match=r"refusing to load io.open from a data file"),
    ):
        NumpyUnpickler(f).load()  # even past the hash check, the payload cannot run
    assert not marker.exists() and not (tmp_path / "demo").exists()
    with gzip.open(tmp_path / "arrays.gz", "wb") as f:
        pickle.dump(np.arange(6, dtype=np.int64).reshape(2, 3), f)
    with gzip.open(tmp_path / "arrays.gz") as f:
        np.testing.assert_array_equal(NumpyUnpickler(f).load(), np.arange(6).reshape(2, 3))
