"""CLIP (and SigLIP, BLIP's ITC towers: the same encode_image / encode_text) as curation's scorer:
a picklable factory Ray's actors call once each (data/curation/score.py), the model file and its
config class named, nothing else carried."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.loading.tokenizer import get_tokenizer
from training.checkpoint.model_file import load_model


class ClipScorer:
    def __init__(self, model_path: str, model_config: type):
        self.model, self.mcfg = load_model(model_path, model_config)
        self.model.eval()
        self.tokenizer = get_tokenizer(self.mcfg.context_length)
        self.image_size = self.mcfg.image_size

    def embed(self, pixels: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised image and caption embeddings of a batch (the evaluation's and the pyfunc's)."""
        with torch.no_grad():
            img = self.model.encode_image(torch.from_numpy(pixels))
            txt = self.model.encode_text(torch.from_numpy(self.tokenizer(captions)))
        return img.float().numpy(), txt.float().numpy()


@dataclass(frozen=True)
class ClipScorerFactory:
    model_path: str
    model_config: type

    def __call__(self) -> ClipScorer:
        return ClipScorer(self.model_path, self.model_config)
