"""CLIP, SigLIP and BLIP's ITC towers (the same encode_image / encode_text) as an MLflow pyfunc
model: a table with an `image` column (encoded image bytes) and/or a `text` column in, the
L2-normalised `image_embedding` / `text_embedding` of each row out (empty where the row has none:
None, or empty bytes or text, which is how a REST request leaves one out, since MLflow's scoring
server cannot decode a null in a binary column).
Images go through the evaluation's preprocessing (centre square, `model.image_size`, the loader's
mean and std); texts through CLIP's tokenizer."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc import PythonModel
from PIL import Image

from data.loading.pixels import eval_pixels
from data.loading.tokenizer import bpe_file, get_tokenizer, tokenizer_from
from training.checkpoint.model_file import load_model


class ClipEmbeddings(PythonModel):
    def __init__(self, model_config: type):
        self.model_config = model_config  # the model section's class: CLIP's, SigLIP's or BLIP's

    def load_context(self, context):

        self.model, self.mcfg = load_model(context.artifacts["model"], self.model_config)
        bpe = context.artifacts.get("bpe")  # the merges file it carries (registered by a workflow)
        self.tokenizer = (
            tokenizer_from(bpe, self.mcfg.context_length) if bpe else get_tokenizer(self.mcfg.context_length)
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:

        rows = len(model_input)
        out: dict[str, list] = {
            "image_embedding": [[] for _ in range(rows)],
            "text_embedding": [[] for _ in range(rows)],
        }
        with torch.no_grad():
            if "image" in model_input:
                have = [i for i, b in enumerate(model_input["image"]) if b is not None and len(b)]
                if have:
                    pixels = np.stack([eval_pixels(model_input["image"].iloc[i], self.mcfg.image_size) for i in have])
                    emb = self.model.encode_image(torch.from_numpy(pixels)).tolist()
                    for i, e in zip(have, emb):
                        out["image_embedding"][i] = e
            if "text" in model_input:
                have = [i for i, t in enumerate(model_input["text"]) if isinstance(t, str) and t]
                if have:
                    ids = torch.from_numpy(self.tokenizer([model_input["text"].iloc[i] for i in have]))
                    for i, e in zip(have, self.model.encode_text(ids).tolist()):
                        out["text_embedding"][i] = e
        return pd.DataFrame(out)


def extra_artifacts(recipe, inputs: dict, scratch) -> dict:
    """The tokenizer's merges file travels with the model: a serving machine fetches nothing."""
    return {"bpe": str(bpe_file())}


def example_input():
    """One row with an image and a caption (the signature's and the registry page's example)."""

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()], "text": ["an orange picture"]})


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec(DataType.binary, "image", required=False), ColSpec(DataType.string, "text", required=False)]
        ),
        outputs=Schema(
            [ColSpec(Array(DataType.double), "image_embedding"), ColSpec(Array(DataType.double), "text_embedding")]
        ),
    )
