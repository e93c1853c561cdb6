"""The fine-tuned MAE classifier as an MLflow pyfunc model: a table with an `image` column (encoded
image bytes) in, each row's class `probabilities` (in the order of `classes`) and its `label` out.
Images go through the evaluation's preprocessing (centre square, `model.image_size`, the loader's
mean and std)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from PIL import Image

from data.loading.pixels import eval_pixels
from training.checkpoint.model_file import load_model


class ClassifierProbabilities(PythonModel):
    def __init__(self, model_config: type):
        self.model_config = model_config

    def load_context(self, context):

        self.model, self.mcfg = load_model(context.artifacts["model"], self.model_config)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:

        pixels = np.stack([eval_pixels(b, self.mcfg.image_size) for b in model_input["image"]])
        with torch.no_grad():
            probs = self.model(torch.from_numpy(pixels)).float().softmax(-1)
        classes = list(self.mcfg.classes) or [str(i) for i in range(self.mcfg.num_classes)]
        return pd.DataFrame({"probabilities": probs.tolist(), "label": [classes[i] for i in probs.argmax(-1).tolist()]})


def model_step(recipe) -> str:
    return "finetune"  # the fine-tuned classifier, not the pretrained autoencoder


def example_input():

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (30, 30, 30)).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()]})


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema([ColSpec(Array(DataType.double), "probabilities"), ColSpec(DataType.string, "label")]),
    )
