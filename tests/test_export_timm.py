"""The MAE encoder to and from timm, checked with the real library in the interop environment
(tests/interop/timm_side.py): the same tokens and class-token features; a timm ViT (timm's own
random weights, MAE's position table) starts an MAE; the classifier is refused by name."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from families.errors import ExportError
from families.mae.config import MAEModelConfig, ViTClassifierConfig
from pipelines.config import ConfigError, load_recipe
from tests.conftest import run_interop
from tests.test_export_hf import _model_file

ROOT = Path(__file__).resolve().parents[1]
MAE_TINY = dict(
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=4,
    decoder_width=32,
    decoder_layers=1,
    decoder_heads=2,
)


def _run(python, *args):
    return run_interop(python, "timm_side.py", *args)


def _pixels(tmp_path, m, **extra):
    torch.manual_seed(4)
    pixels = torch.randn(3, 3, m.image_size, m.image_size)
    np.savez(tmp_path / "inputs.npz", pixels=pixels.numpy(), **extra)
    return pixels


def test_an_mae_encoder_loads_in_timm_with_equal_features(interop_python, tmp_path):
    from pipelines.export import export

    m = MAEModelConfig(**MAE_TINY)
    model, path = _model_file(tmp_path, m)
    out = export(str(path), str(tmp_path), "timm", tmp_path / "exported")
    pixels = _pixels(tmp_path, m)
    theirs = _run(interop_python, "embed", out, tmp_path / "inputs.npz", tmp_path / "out.npz")
    with torch.no_grad():
        tokens = model.encoder(pixels).numpy()
    assert np.abs(theirs["tokens"] - tokens).max() <= 1e-5
    assert np.abs(theirs["pooled"] - tokens[:, 0]).max() <= 1e-5 and theirs["out"].shape == tokens[:, 0].shape
    data = json.loads(str(theirs["data_config"]))
    assert data["input_size"] == [3, m.image_size, m.image_size] and data["interpolation"] == "bilinear"


def test_a_timm_vit_starts_an_mae_encoder(interop_python, tmp_path):
    from families.mae.timmio import timm_config
    from models.vit import sincos_2d
    from training.config import RunConfig, TaskOptions
    from training.tasks import make_task

    m = MAEModelConfig(**MAE_TINY)
    (tmp_path / "cfg.json").write_text(json.dumps(timm_config(m)))
    table = torch.cat([torch.zeros(1, m.vision_width), sincos_2d(m.vision_width, m.image_size // m.patch_size)])[None]
    pixels = _pixels(tmp_path, m, pos=table.numpy())
    theirs = _run(
        interop_python, "make", tmp_path / "vit", tmp_path / "cfg.json", tmp_path / "inputs.npz", tmp_path / "out.npz"
    )
    sets = [f"model.{k}={v}" for k, v in MAE_TINY.items()]
    recipe = load_recipe(ROOT / "configs/mae_small.yaml", sets + [f"train.init_from=timm:{tmp_path / 'vit'}"])
    model = (
        make_task(RunConfig(model=recipe.model, train=recipe.train, task=TaskOptions(init_from=recipe.train.init_from)))
        .build()
        .eval()
    )
    with torch.no_grad():
        assert np.abs(model.encoder(pixels).numpy() - theirs["tokens"]).max() <= 1e-5
    with pytest.raises(ConfigError, match=r"model.vision_width: 128, but the checkpoint timm:.* has 64"):
        load_recipe(
            ROOT / "configs/mae_small.yaml",
            [*sets, "model.vision_width=128", f"train.init_from=timm:{tmp_path / 'vit'}"],
        )


def test_the_fine_tuned_classifier_is_refused_naming_the_layer(tmp_path):
    from pipelines.export import export

    _, path = _model_file(
        tmp_path,
        ViTClassifierConfig(
            image_size=32, patch_size=8, vision_width=64, vision_layers=1, vision_heads=2, num_classes=3
        ),
    )
    with pytest.raises(ExportError, match=r"encoder.ln_post .* fc_norm"):
        export(str(path), str(tmp_path), "timm", tmp_path / "out")
    assert not (tmp_path / "out").exists()
