"""The MLflow Model Registry: a model registered by the `register` step loads in a fresh process
with `mlflow.pyfunc.load_model("models:/<name>/<version>")` and predicts the project's embeddings;
its version names the workflow; `make pull` and `make export` take the models:/ URI."""

import io
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.test_export_hf import TINY, _model_file

FRESH = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
rows = pd.read_pickle(sys.argv[3])
out = model.predict(rows)
json.dump({"image": list(map(list, out["image_embedding"])), "text": list(map(list, out["text_embedding"])),
           "inputs": [c["name"] for c in model.metadata.get_input_schema().to_dict()]}, open(sys.argv[4], "w"))
"""


def _rows():
    from tests.conftest import image_bytes

    return pd.DataFrame(
        {"image": [image_bytes(1), image_bytes(2, (64, 90)), None], "text": ["a photo of a cat!", None, "café — 東京"]}
    )


def test_a_registered_clip_predicts_its_embeddings_in_a_fresh_process(tmp_path):
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from data.loading.pixels import center_crop, to_array
    from data.loading.tokenizer import get_tokenizer
    from families.clip.config import ClipModelConfig
    from infra.tracking import Tracker
    from pipelines.register import register_model, workflow_of_version

    m = ClipModelConfig(**TINY)
    model, path = _model_file(tmp_path, m)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Tracker(uri).start("tests", "register", artifact_location=(tmp_path / "artifacts").as_uri())
    out = register_model(str(path), "tiny-clip", "wf-1", uri, run.run_id, tmp_path)
    run.end()
    assert out == {"model_uri": "models:/tiny-clip/1", "registered_model": "tiny-clip", "version": 1}
    version = MlflowClient(uri).get_model_version("tiny-clip", "1")
    assert version.tags["workflow_id"] == "wf-1" and workflow_of_version(out["model_uri"], uri) == "wf-1"
    logged = tmp_path / "artifacts"  # a model from code: its script, no pickled PythonModel to trust
    assert list(logged.rglob("pyfunc_model.py")) and not list(logged.rglob("python_model.pkl"))

    rows = _rows()
    rows.to_pickle(tmp_path / "rows.pkl")
    subprocess.run(
        [sys.executable, "-c", FRESH, uri, out["model_uri"], str(tmp_path / "rows.pkl"), str(tmp_path / "pred.json")],
        check=True,
        cwd=tmp_path,
    )
    pred = json.loads((tmp_path / "pred.json").read_text())
    assert pred["inputs"] == ["image", "text"]
    with torch.no_grad():
        pixels = torch.stack(
            [
                torch.from_numpy(to_array(center_crop(Image.open(io.BytesIO(b)).convert("RGB"), m.image_size)))
                for b in rows["image"][:2]
            ]
        )
        img = model.encode_image(pixels)
        txt = model.encode_text(torch.from_numpy(get_tokenizer(m.context_length)([rows["text"][0], rows["text"][2]])))
    assert pred["image"][2] == [] and pred["text"][1] == []  # rows without one get none
    assert torch.tensor(pred["image"][:2]).sub(img).abs().max() <= 1e-5
    assert torch.tensor([pred["text"][0], pred["text"][2]]).sub(txt).abs().max() <= 1e-5


def test_an_unknown_registered_version_is_a_clear_error(tmp_path):
    from infra.tracking import Tracker
    from pipelines.pull import workflow_id_of

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match=r"models:/nothing/3: no MLflow store at sqlite:///"):
        workflow_id_of("models:/nothing/3", str(tmp_path), uri)  # and none is created by asking
    assert not (tmp_path / "mlflow.db").exists()
    Tracker(uri).start("tests", "a run").end()  # a store without that model
    with pytest.raises(ValueError, match=r"models:/nothing/3: no such registered model version"):
        workflow_id_of("models:/nothing/3", str(tmp_path), uri)
    with pytest.raises(ValueError, match=r"models:/nothing: expected models:/<name>/<version>"):
        workflow_id_of("models:/nothing", str(tmp_path), uri)


def test_a_registered_classifier_predicts_its_class_probabilities_in_a_fresh_process(tmp_path):
    from data.loading.pixels import eval_pixels
    from families.mae.config import ViTClassifierConfig
    from infra.tracking import Tracker
    from pipelines.register import register_model
    from tests.conftest import image_bytes

    m = ViTClassifierConfig(
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_layers=1,
        vision_heads=2,
        num_classes=3,
        classes=("cat", "dog", "fox"),
    )
    model, path = _model_file(tmp_path, m, scale=0.5)  # away from the near-zero head: distinct probabilities
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = Tracker(uri).start("tests", "register", artifact_location=(tmp_path / "artifacts").as_uri())
    out = register_model(str(path), "tiny-mae", "wf-2", uri, run.run_id, tmp_path)
    rows = pd.DataFrame({"image": [image_bytes(5), image_bytes(6, (40, 70))]})
    rows.to_pickle(tmp_path / "rows.pkl")
    script = FRESH.replace(
        '"image": list(map(list, out["image_embedding"])), "text": list(map(list, out["text_embedding"])),',
        '"probs": list(map(list, out["probabilities"])), "label": list(out["label"]),',
    )
    subprocess.run(
        [sys.executable, "-c", script, uri, out["model_uri"], str(tmp_path / "rows.pkl"), str(tmp_path / "pred.json")],
        check=True,
        cwd=tmp_path,
    )
    pred = json.loads((tmp_path / "pred.json").read_text())
    with torch.no_grad():
        want = model(torch.stack([torch.from_numpy(eval_pixels(b, m.image_size)) for b in rows["image"]])).softmax(-1)
    assert torch.tensor(pred["probs"]).sub(want).abs().max() <= 1e-5
    assert pred["label"] == [m.classes[i] for i in want.argmax(-1).tolist()] and pred["inputs"] == ["image"]
