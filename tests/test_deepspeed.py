"""DeepSpeed strategy under Ray Train on CPU (gloo): ZeRO 1/2/3 train, DDP and ZeRO-1/2 give the
same fp32 loss curve, and a ZeRO-3 run that fails mid-training resumes from its sharded checkpoint
to the same losses as an uninterrupted run (the DDP one: ZeRO-3 holds to it too); the exported
model loads without DeepSpeed."""

import json
from pathlib import Path

import pytest

from pipelines.config import load_recipe
from tests.faults import faults

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STEPS = 20  # conftest.TINY_STEPS


def _same_losses(ref: list, got: list, what) -> None:
    for a, b in zip(ref, got):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (what, ref, got)


def test_ddp_and_zero_1_2_give_the_same_loss_curve(train_tiny, tiny_ddp_run, tmp_path):
    ddp = tiny_ddp_run
    assert len(ddp["losses"]) == STEPS and ddp["losses"][-1] < ddp["losses"][0]
    for stage in (1, 2):
        ds = train_tiny(tmp_path / f"zero{stage}", "train.strategy=deepspeed", f"train.deepspeed.zero_stage={stage}")
        assert ds["steps"] == STEPS
        _same_losses(ddp["losses"], ds["losses"], stage)


def test_zero3_resumes_from_its_sharded_checkpoint(train_tiny, tiny_ddp_run, tmp_path):
    """The uninterrupted run it is held to is DDP's: fp32 ZeRO-3 gives DDP's curve (as ZeRO-1/2
    do, above), so one run shows both that and an exact resume."""
    from families.registry import load_model

    # fails after step 7: Ray Train restarts the worker group, which resumes at the step-5 checkpoint
    resumed = train_tiny(
        tmp_path / "zero3-resumed",
        "train.strategy=deepspeed",
        "train.deepspeed.zero_stage=3",
        callbacks=[faults(fail_at_step=7)],
    )
    assert resumed["resumed_from"] == 5 and resumed["steps"] == STEPS
    assert len(resumed["losses"]) == STEPS
    _same_losses(tiny_ddp_run["losses"], resumed["losses"], "zero3 resumed")
    # the consolidated fp32 export needs no DeepSpeed to load
    model, _ = load_model(resumed["model"])
    assert sum(p.numel() for p in model.parameters()) > 1e6


def test_bf16_zero2_trains(train_tiny, tmp_path):
    out = train_tiny(
        tmp_path / "bf16", "train.strategy=deepspeed", "train.deepspeed.zero_stage=2", "train.precision=bf16"
    )
    assert out["steps"] == STEPS and out["losses"][-1] < out["losses"][0]


def test_mae_under_zero2_bf16_resumes_after_a_failure(tiny_manifest, tmp_path):
    """MAE on the same engine: DeepSpeed ZeRO-2 in bf16 (captions in the shards are ignored), a
    failure at step 7, Ray Train's restart resumes at the step-5 checkpoint and finishes."""
    from families.mae.model import MAE
    from families.registry import load_model
    from training.pretrain import run_pretrain

    recipe = load_recipe(
        ROOT / "configs/mae_small.yaml",
        [
            "train.batch_size=16",
            "train.epochs=1",
            f"train.epoch_samples={32 * STEPS}",
            "train.checkpoint_every=5",
            "train.log_every=5",
            "train.warmup_steps=3",
            "train.max_failures=1",
            "train.strategy=deepspeed",
            "train.deepspeed.zero_stage=2",
            "train.precision=bf16",
            "model.vision_layers=1",
            "model.decoder_layers=1",
        ],
    )
    out = run_pretrain(recipe, tiny_manifest, tmp_path / "mae", callbacks=[faults(fail_at_step=7)])
    losses = json.loads(Path(out["loss_history"]).read_text())
    assert out["resumed_from"] == 5 and out["steps"] == STEPS and len(losses) == STEPS
    assert sum(losses[-5:]) < sum(losses[:5])
    model, mcfg = load_model(out["model"])
    assert isinstance(model, MAE) and mcfg.kind == "mae"


def test_blip_under_zero2_exports_a_loadable_model(tiny_manifest, tmp_path):
    """BLIP's momentum encoders (frozen parameters updated outside the optimizer) and queues
    (buffers) survive a ZeRO-2 checkpoint and its fp32 export; ZeRO-3 is refused up front."""
    import torch

    from families.blip.model import BLIP
    from families.registry import load_model
    from training.pretrain import run_pretrain

    args = [
        "train.batch_size=16",
        "train.epochs=1",
        "train.epoch_samples=160",
        "train.checkpoint_every=5",
        "train.log_every=3",
        "train.warmup_steps=2",
        "train.strategy=deepspeed",
        "model.queue_size=64",
        "model.vision_layers=1",
        "model.text_layers=1",
        "model.context_length=16",
    ]
    recipe = load_recipe(ROOT / "configs/blip_small.yaml", args + ["train.deepspeed.zero_stage=2"])
    out = run_pretrain(recipe, tiny_manifest, tmp_path / "blip")
    assert out["steps"] == 5
    model, mcfg = load_model(out["model"])
    assert isinstance(model, BLIP) and mcfg.kind == "blip"
    assert not torch.equal(model.m_text_proj.weight, model.text_proj.weight)  # EMA lags the online weights
    assert int(model.queue_ptr) == (5 * 32) % 64 == 32  # 5 global batches queued
    with pytest.raises(ValueError, match="ZeRO-3 partitions the momentum encoders"):
        run_pretrain(
            load_recipe(
                ROOT / "configs/blip_small.yaml", args + ["train.deepspeed.zero_stage=3", "train.max_failures=0"]
            ),
            tiny_manifest,
            tmp_path / "blip3",
        )
