"""CLIP and SigLIP to and from open_clip, checked with the real library (the round trip of a
trained CLIP: tests/test_export_hf.py): open_clip runs in the
interop environment (tests/interop/open_clip_side.py; conftest `interop_python`), on inputs and
against outputs this side writes. Reference models are built and randomly initialised by open_clip
itself, saved to tmp_path: nothing is downloaded."""

import json

import numpy as np
import pytest
import torch

from families.clip.config import ClipModelConfig
from families.siglip.config import SigLipModelConfig
from pipelines.config import ConfigError, load_recipe
from tests.conftest import CLIP_SMALL, run_interop
from tests.test_export_hf import CAPTIONS, TINY, _model_file


def _inputs(tmp_path, m):
    from data.loading.tokenizer import get_tokenizer

    torch.manual_seed(3)
    pixels = torch.randn(3, 3, m.image_size, m.image_size)
    ids = get_tokenizer(m.context_length)(CAPTIONS)
    np.savez(tmp_path / "inputs.npz", pixels=pixels.numpy(), ids=ids, captions=np.array(CAPTIONS))
    return pixels, ids


def _run(python, *args):
    return run_interop(python, "open_clip_side.py", *args)


@pytest.mark.parametrize("config", [ClipModelConfig, SigLipModelConfig])
def test_an_export_loads_in_open_clip_with_equal_embeddings_and_token_ids(interop_python, tmp_path, config):
    from pipelines.export import export

    m = config(**TINY)
    model, path = _model_file(tmp_path, m)
    out = export(str(path), str(tmp_path), "open_clip", tmp_path / "exported")
    pixels, ids = _inputs(tmp_path, m)
    theirs = _run(interop_python, "embed", out, tmp_path / "inputs.npz", tmp_path / "out.npz")
    assert theirs["ids"].tolist() == ids.tolist()  # open_clip's own tokenizer, padding included
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=False).numpy()
        txt = model.encode_text(torch.from_numpy(ids), normalize=False).numpy()
    assert np.abs(theirs["image"] - img).max() <= 1e-5 and np.abs(theirs["text"] - txt).max() <= 1e-5
    assert float(theirs["logit_scale"]) == pytest.approx(model.logit_scale.item())
    if m.kind == "siglip":
        assert float(theirs["logit_bias"]) == pytest.approx(model.logit_bias.item())
    assert f"size={m.image_size}" in str(theirs["preprocess"]) and "bilinear" in str(theirs["preprocess"])


def test_an_open_clip_model_starts_a_clip_with_its_embeddings(interop_python, tmp_path):
    from families.clip.openclip import open_clip_config
    from training.config import RunConfig, TaskOptions
    from training.tasks import make_task

    m = ClipModelConfig(**TINY)
    (tmp_path / "cfg.json").write_text(json.dumps(open_clip_config(m, 49408)["model_cfg"]))
    pixels, ids = _inputs(tmp_path, m)
    theirs = _run(
        interop_python, "make", tmp_path / "oc", tmp_path / "cfg.json", tmp_path / "inputs.npz", tmp_path / "out.npz"
    )
    recipe = load_recipe(
        CLIP_SMALL, [f"model.{k}={v}" for k, v in TINY.items()] + [f"train.init_from=open_clip:{tmp_path / 'oc'}"]
    )
    model = (
        make_task(RunConfig(model=recipe.model, train=recipe.train, task=TaskOptions(init_from=recipe.train.init_from)))
        .build()
        .eval()
    )
    with torch.no_grad():
        assert np.abs(model.encode_image(pixels, normalize=False).numpy() - theirs["image"]).max() <= 1e-5
        assert np.abs(model.encode_text(torch.from_numpy(ids), normalize=False).numpy() - theirs["text"]).max() <= 1e-5
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["quick_gelu"] = True
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(ConfigError, match=r"train.init_from: open_clip:.*quick_gelu true: .*exact GELU"):
        load_recipe(
            CLIP_SMALL, [f"model.{k}={v}" for k, v in TINY.items()] + [f"train.init_from=open_clip:{tmp_path / 'oc'}"]
        )


def test_exported_files_are_readable_as_the_umask_allows(tmp_path):
    # safetensors writes 0600: an export folder shared with a serving process or a teammate was unreadable
    import os

    from families.clip.config import ClipModelConfig
    from pipelines.export import export
    from tests.test_export_hf import TINY, _model_file

    _, path = _model_file(tmp_path, ClipModelConfig(**TINY))
    out = export(str(path), str(tmp_path), "open_clip", tmp_path / "exported")
    mask = os.umask(0)
    os.umask(mask)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir()}
    assert modes and set(modes.values()) == {oct(0o666 & ~mask)}, modes
