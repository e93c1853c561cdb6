"""What a user compares: one held-out image through the evaluate step, the registered pyfunc, and the
transformers and open_clip exports (each library decoding and preprocessing the JPEG itself) gives
the same image embedding. The model is the training tests' tiny trained CLIP, the images the held-out
split of the real demo shards (72 px JPEGs, evaluated at 64 px: decoded at full size everywhere)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import run_interop
from tests.test_registry import FRESH

N = 8  # held-out images compared


@pytest.fixture(scope="module")
def held_out(tiny_ddp_run, tiny_manifest, tmp_path_factory):
    """(the trained model, its config, the evaluate step's embeddings of the first N held-out
    images, their JPEG files, the model file)."""
    from data.loading.shard_reading import eval_samples
    from data.writing.sharder import shard_urls
    from families.clip.evaluate import embed_eval_split
    from families.registry import load_model

    model, mcfg = load_model(tiny_ddp_run["model"])
    urls = shard_urls(tiny_manifest, "eval")
    emb, _, items = embed_eval_split(model, mcfg, urls, batch_size=5)
    folder = tmp_path_factory.mktemp("held-out")
    paths = []
    for s in eval_samples(urls):
        if len(paths) == N:
            break
        assert s["key"] == items[len(paths)]["key"]
        paths.append(folder / f"{s['key']}.jpg")
        paths[-1].write_bytes(s["jpg"])
    from PIL import Image

    assert Image.open(paths[0]).size[0] > mcfg.image_size  # a real resize: 72 px stored, 64 px seen
    return model, mcfg, emb[:N], paths, tiny_ddp_run["model"]


@pytest.mark.slow
def test_the_pyfunc_embeds_a_held_out_image_as_the_evaluation_did(held_out, tmp_path):
    from infra.tracking import Tracker
    from pipelines.register import register_model

    _, _, want, paths, model_file = held_out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Tracker(uri).start("tests", "register", artifact_location=(tmp_path / "artifacts").as_uri())
    out = register_model(model_file, "tiny-clip", "wf-1", uri, run.run_id, tmp_path)
    run.end()
    pd.DataFrame({"image": [p.read_bytes() for p in paths]}).to_pickle(tmp_path / "rows.pkl")
    subprocess.run(
        [sys.executable, "-c", FRESH, uri, out["model_uri"], str(tmp_path / "rows.pkl"), str(tmp_path / "pred.json")],
        check=True,
        cwd=tmp_path,
    )
    got = torch.tensor(json.loads((tmp_path / "pred.json").read_text())["image"])
    assert got.sub(want).abs().max() <= 1e-5, got.sub(want).abs().max()


@pytest.mark.slow
def test_the_transformers_export_embeds_a_held_out_image_as_the_evaluation_did(held_out, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    from pipelines.export import export

    _, _, want, paths, model_file = held_out
    out = export(model_file, str(tmp_path), "hf", tmp_path / "exported")
    hf, proc = CLIPModel.from_pretrained(out).eval(), AutoProcessor.from_pretrained(out)
    with torch.no_grad():
        feats = hf.get_image_features(**proc(images=[Image.open(p) for p in paths], return_tensors="pt"))
    feats = getattr(feats, "pooler_output", feats)
    got = feats / feats.norm(dim=-1, keepdim=True)
    assert got.sub(want).abs().max() <= 1e-5, got.sub(want).abs().max()


@pytest.mark.slow
def test_the_open_clip_export_embeds_a_held_out_image_as_the_evaluation_did(held_out, interop_python, tmp_path):
    from pipelines.export import export

    _, _, want, paths, model_file = held_out
    out = export(model_file, str(tmp_path), "open_clip", tmp_path / "exported")
    theirs = run_interop(interop_python, "open_clip_side.py", "images", out, *paths, tmp_path / "out.npz")
    got = np.asarray(theirs["image"])
    assert np.abs(got - want.numpy()).max() <= 1e-5, np.abs(got - want.numpy()).max()
