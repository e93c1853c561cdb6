"""Curation's scorers for the image-text families (data/curation/score.py): picklable factories Ray's
actors call once each, naming what to load and nothing else (families/clip/scorer_source.py says
which, from `curate.scorer`):

- a model.pt of this project (the teacher step's, or a registered version's): CLIP, SigLIP or BLIP's
  ITC towers (their encode_image / encode_text), its class chosen by kind among `model_configs`;
- `open_clip:<dir>`: an open_clip local-dir folder read into this project's CLIP without open_clip
  itself (families/clip/openclip.py: the towers computed here, exact GELU, CLIP's BPE);
- `hf:<dir>`: a transformers folder run by transformers itself (AutoModel's get_image_features and
  get_text_features, the folder's own tokenizer), so a CLIP with quick GELU or a SigLIP scores too.

Pixels: the scorer gets the evaluation's (data/loading/pixels.py eval_pixels: the centred square at
the scorer's `image_size`, bilinear, normalised by MEAN/STD). `image_size` is the scorer model's
own; a folder's normalisation (preprocessor_config.json's image_mean / image_std, open_clip's
preprocess_cfg mean / std) is applied to them exactly, an affine map per channel. Its resampling
(bicubic, or resizing the shorter side before the crop) is not: the centred square is the same
region, only the interpolation differs, as in this project's evaluation of an imported model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from data.loading.pixels import MEAN, STD
from data.loading.tokenizer import get_tokenizer
from families.clip import openclip
from families.clip.config import ClipModelConfig
from training.checkpoint.model_file import load_model, split_init_from

KEY = "curate.scorer"


def _device() -> torch.device:
    """The actor's GPU when Ray gave it one (CUDA_VISIBLE_DEVICES names only it), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def renormalise(mean, std) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(scale, shift) per channel taking pixels normalised by MEAN / STD to pixels normalised by
    `mean` / `std` (x = p * STD + MEAN, then (x - mean) / std); None when they are ours."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if np.allclose(mean, MEAN, rtol=0, atol=1e-7) and np.allclose(std, STD, rtol=0, atol=1e-7):
        return None
    scale, shift = STD.astype(np.float64) / std, (MEAN.astype(np.float64) - mean) / std
    return scale.astype(np.float32)[:, None, None], shift.astype(np.float32)[:, None, None]


def _pixels(pixels: np.ndarray, norm) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels if norm is None else pixels * norm[0] + norm[1]))


class ClipScorer:
    """A model of this project (or one read into it) that has encode_image and encode_text."""

    def __init__(self, model, mcfg, norm=None, source: str = ""):
        missing = [m for m in ("encode_image", "encode_text") if not hasattr(model, m)]
        if missing:
            raise ValueError(f"{KEY} {source}: a {mcfg.kind} model has no {' or '.join(missing)}: it cannot score")
        self.device = _device()
        self.model, self.mcfg, self.norm = model.eval().to(self.device), mcfg, norm
        self.tokenizer = get_tokenizer(mcfg.context_length)
        self.image_size = mcfg.image_size

    def embed(self, pixels: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised image and caption embeddings of a batch (the evaluation's and the pyfunc's)."""
        with torch.no_grad():
            img = self.model.encode_image(_pixels(pixels, self.norm).to(self.device))
            txt = self.model.encode_text(torch.from_numpy(self.tokenizer(captions)).to(self.device))
        return img.float().cpu().numpy(), txt.float().cpu().numpy()


def open_clip_norm(path: str | Path) -> tuple[list, list, object]:
    """(mean, std, size) of an open_clip folder's preprocess_cfg (ours where it says none)."""
    cfg = json.loads((Path(path) / openclip.CONFIG).read_text()).get("preprocess_cfg", {})
    return cfg.get("mean", MEAN.tolist()), cfg.get("std", STD.tolist()), cfg.get("size")


def open_clip_scorer(path: str) -> ClipScorer:
    """An open_clip folder as this project's CLIP; a logit bias (SigLIP's) is left out: scores are cosines."""
    fields, weights = openclip.import_checkpoint(path)
    weights.pop("logit_bias", None)
    mcfg = ClipModelConfig(**fields)
    model = mcfg.build()
    model.load_state_dict(weights)
    mean, std, _ = open_clip_norm(path)
    return ClipScorer(model, mcfg, renormalise(mean, std), f"open_clip:{path}")


def hf_norm(path: str | Path) -> tuple[list, list, Optional[int]]:
    """(mean, std, the side of the images it makes) of a transformers folder's preprocessor_config.json
    (ours and no size where it has none)."""
    p = Path(path) / "preprocessor_config.json"
    cfg = json.loads(p.read_text()) if p.is_file() else {}
    size = cfg.get("crop_size") if cfg.get("do_center_crop", "crop_size" in cfg) else cfg.get("size")
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    return cfg.get("image_mean", MEAN.tolist()), cfg.get("image_std", STD.tolist()), size


def _features(out) -> torch.Tensor:
    """transformers 5 returns the projected features as an output's pooler_output."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


class HfScorer:
    """A transformers model with get_image_features / get_text_features (CLIPModel, SiglipModel...),
    its own tokenizer padding to its text length (as SigLIP was trained)."""

    def __init__(self, path: str):
        from transformers import AutoModel, AutoTokenizer

        self.device = _device()
        self.model = AutoModel.from_pretrained(path, local_files_only=True).float().eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        cfg = self.model.config
        self.image_size = cfg.vision_config.image_size
        self.context_length = cfg.text_config.max_position_embeddings
        mean, std, _ = hf_norm(path)
        self.norm = renormalise(mean, std)

    def tokens(self, captions: list[str]) -> dict:
        t = self.tokenizer(
            list(captions), padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return {k: t[k].to(self.device) for k in ("input_ids", "attention_mask") if k in t}

    def embed(self, pixels: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            img = _features(self.model.get_image_features(pixel_values=_pixels(pixels, self.norm).to(self.device)))
            txt = _features(self.model.get_text_features(**self.tokens(captions)))
        return F.normalize(img.float(), dim=-1).cpu().numpy(), F.normalize(txt.float(), dim=-1).cpu().numpy()


def load_scorer(source: str, model_configs: tuple = ()):
    """The scorer `source` names: `hf:<dir>`, `open_clip:<dir>`, or a model.pt (local or s3://) whose
    config is one of `model_configs` (by its kind)."""
    fmt, path = split_init_from(source)
    if fmt == "hf":
        return HfScorer(path)
    if fmt == "open_clip":
        return open_clip_scorer(path)
    model, mcfg = load_model(source, *model_configs)
    return ClipScorer(model, mcfg, source=source)


@dataclass(frozen=True)
class ScorerFactory:
    source: str  # a model.pt, hf:<dir> or open_clip:<dir>
    model_configs: tuple = ()  # the config classes a model.pt may hold

    def __call__(self):
        return load_scorer(self.source, self.model_configs)


def ClipScorerFactory(model_path: str, model_config: type) -> ScorerFactory:
    """The teacher's scorer: a model.pt of `model_config`."""
    return ScorerFactory(model_path, (model_config,))
