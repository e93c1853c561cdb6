"""Recipes: typed, strict (unknown keys and wrong types name the key and the file), and the
full-size recipe really builds ViT-B/32 and trains a step."""

from pathlib import Path

import pytest
import torch

from pipelines.config import ConfigError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_default_recipe_loads():
    r = load_recipe(ROOT / "configs/clip_small.yaml")
    assert r.data.source == "demo:emoji" and r.train.num_workers == 2 and r.model.image_size == 64
    assert r.eval.templates[0] == "an emoji of {}" and r.train.augment.alt_caption_prob == 0.9


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.learning_rate'"):
        load_recipe(bad)
    bad.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"did you mean 'batch_size'"):
        load_recipe(bad)
    for typo, meant in (("epohcs", "epochs"), ("warmup_step", "warmup_steps"), ("Grad_Accum", "grad_accum")):
        with pytest.raises(ConfigError, match=rf"unknown key 'train.{typo}' \(did you mean '{meant}'\?\)"):
            load_recipe(None, [f"train.{typo}=1"])


@pytest.mark.parametrize(
    "text,where",
    [
        ("train:\n  epochs: ten\n", "train.epochs: expected an integer"),
        ("train:\n  lr: fast\n", "train.lr: expected a number"),
        ("train:\n  precision: fp8\n", "train.precision: 'fp8' is not one of"),
        ("data:\n  resize_mode: stretch\n", "data.resize_mode"),
        ("model: 3\n", "model: expected a mapping"),
        ("eval:\n  templates: 5\n", "eval.templates: expected a list"),
    ],
)
def test_wrong_types_are_errors(tmp_path, text, where):
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=where.replace("(", r"\(")):
        load_recipe(f)


def test_overrides_are_checked_too():
    r = load_recipe(ROOT / "configs/clip_small.yaml", ["train.epochs=3", "data.limit=50"])
    assert r.train.epochs == 3 and r.data.limit == 50
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_recipe(ROOT / "configs/clip_small.yaml", ["train.epoch=3"])


def test_full_size_recipe_builds_vit_b32_and_steps_on_cpu():
    from families.clip.loss import clip_loss
    from families.clip.model import CLIP
    from training.tasks import param_groups

    r = load_recipe(ROOT / "configs/clip_vitb32.yaml")
    assert (r.model.image_size, r.model.patch_size, r.model.vision_width) == (224, 32, 768)
    assert r.train.batch_size * r.train.num_workers == 32768
    torch.manual_seed(0)
    model = CLIP(r.model, 49408)
    n_params = sum(p.numel() for p in model.parameters())
    assert 140e6 < n_params < 160e6  # CLIP ViT-B/32 has about 151M parameters
    opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4)
    images = torch.randn(2, 3, 224, 224)
    text = torch.randint(1, 49406, (2, 77))
    text[:, 10] = 49407
    img, txt, scale = model(images, text)
    loss = clip_loss(img, txt, scale)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and model.visual.patch_embed.weight.grad.abs().sum() > 0


def test_memory_estimate_follows_the_zero_arithmetic():
    from pipelines.memory import estimate, model_state_bytes

    psi, n = 7.5e9, 64  # the ZeRO paper's example: 7.5B parameters on 64 GPUs, mixed precision
    gb = {k: v / 1e9 for k, v in model_state_bytes(psi, n, "bf16", "ddp", 0).items()}
    assert sum(gb.values()) == pytest.approx(120)
    assert sum(model_state_bytes(psi, n, "bf16", "deepspeed", 1).values()) / 1e9 == pytest.approx(31.4, abs=0.1)
    assert sum(model_state_bytes(psi, n, "bf16", "deepspeed", 2).values()) / 1e9 == pytest.approx(16.6, abs=0.1)
    assert sum(model_state_bytes(psi, n, "bf16", "deepspeed", 3).values()) / 1e9 == pytest.approx(1.9, abs=0.1)
    e = estimate(load_recipe(ROOT / "configs/clip_vitl14.yaml"))
    assert 420e6 < e["n_params"] < 435e6  # CLIP ViT-L/14: about 428M parameters
    plain = estimate(load_recipe(ROOT / "configs/clip_vitl14.yaml", ["train.activation_checkpointing=false"]))
    assert plain["activations"] > 3 * e["activations"]
