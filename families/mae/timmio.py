"""The MAE encoder to and from timm: a folder with timm's `config.json` (architecture, the ViT's
shape as `model_args`, the evaluation's preprocessing as `pretrained_cfg`) and `model.safetensors`
in timm's `vit_*` key names, which `timm.create_model("local-dir:<folder>", pretrained=True)` builds
(class-token features, no head); and back, for `train.init_from: timm:<dir>`.

The encoder is timm's VisionTransformer: a patch convolution with bias, a class token, the fixed
sine-cosine position table in `pos_embed` (MAE's layout), no pre-norm, pre-norm blocks with exact
GELU and fused qkv, the final norm, LayerNorm epsilon 1e-6 throughout. The fine-tuned classifier
has no counterpart (it normalises the tokens before its mean-pool and again after; timm's
`global_pool="avg"` keeps only the second), so it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from data.loading.pixels import MEAN, STD
from families.errors import ExportError, mismatches
from models.vit import sincos_2d

CONFIG, WEIGHTS = "config.json", "model.safetensors"
PAIRS = [
    ("ln1", "norm1"),
    ("attn.qkv", "attn.qkv"),
    ("attn.proj", "attn.proj"),
    ("ln2", "norm2"),
    ("mlp.0", "mlp.fc1"),
    ("mlp.2", "mlp.fc2"),
]


def to_timm_state(encoder) -> dict:
    """timm's keys for our VisionTransformer module (the position table is a buffer here)."""
    sd = {k: v.detach().float().cpu() for k, v in encoder.state_dict().items()}
    out = {
        "patch_embed.proj.weight": sd["patch_embed.weight"],
        "patch_embed.proj.bias": sd["patch_embed.bias"],
        "cls_token": sd["cls_token"],
        "pos_embed": encoder.pos_embed.detach().float().cpu(),
        "norm.weight": sd["ln_post.weight"],
        "norm.bias": sd["ln_post.bias"],
    }
    for i in range(len(encoder.transformer.blocks)):
        for a, b in PAIRS:
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{b}.{p}"] = sd[f"transformer.blocks.{i}.{a}.{p}"]
    return {k: v.contiguous() for k, v in out.items()}


def timm_config(m) -> dict:

    args = {
        "img_size": m.image_size,
        "patch_size": m.patch_size,
        "embed_dim": m.vision_width,
        "depth": m.vision_layers,
        "num_heads": m.vision_heads,
        "mlp_ratio": m.mlp_ratio,
        "class_token": True,
        "global_pool": "token",
        "num_classes": 0,
    }
    return {
        "architecture": "vit_base_patch16_224",
        "num_classes": 0,
        "model_args": args,
        "pretrained_cfg": {
            "input_size": [3, m.image_size, m.image_size],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": [float(x) for x in MEAN],
            "std": [float(x) for x in STD],
            "num_classes": 0,
        },
    }


def export_timm(model, m, dest: Path) -> Path:
    from safetensors.torch import save_file

    if m.kind != "mae":
        raise ExportError(
            f"model.kind {m.kind}: the classifier applies encoder.ln_post to every token before "
            f"its mean-pool and fc_norm after it; timm's ViT with global_pool='avg' has fc_norm "
            f"only, so there is no exact counterpart (export the pretrained MAE encoder instead)"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG).write_text(json.dumps(timm_config(m), indent=1))
    save_file(to_timm_state(model.encoder), str(dest / WEIGHTS))
    return dest


def checkpoint_problems(path: str | Path, m) -> list[tuple[str, str]]:
    """Why a timm ViT folder cannot start MAE model section `m`: each mismatched field's key."""
    p, where = Path(path), f"the checkpoint timm:{path}"
    if not (p / CONFIG).is_file() or not (p / WEIGHTS).is_file():
        return [("train.init_from", f"timm:{path}: needs {CONFIG} and {WEIGHTS} there (make export FORMAT=timm)")]
    args = json.loads((p / CONFIG).read_text()).get("model_args", {})
    theirs = {
        "image_size": args.get("img_size"),
        "patch_size": args.get("patch_size"),
        "vision_width": args.get("embed_dim"),
        "vision_layers": args.get("depth"),
        "vision_heads": args.get("num_heads"),
        "mlp_ratio": args.get("mlp_ratio", 4.0),
    }
    out = mismatches(m, theirs, where)
    for key, want in (("class_token", True), ("pre_norm", False), ("no_embed_class", False), ("qkv_bias", True)):
        if args.get(key, want) != want:
            out.append(("train.init_from", f"{where} has model_args.{key} {args[key]!r}: no counterpart here"))
    return out


def import_checkpoint(path: str | Path, m) -> tuple[dict, dict]:
    """(the encoder's fields, our MAE state dict for its `encoder.*`), checked against `m`; the
    checkpoint's position table must be MAE's fixed one (a learned table has no counterpart)."""
    from safetensors.torch import load_file

    for key, message in checkpoint_problems(path, m):
        raise ExportError(f"{key}: {message}")
    sd = load_file(str(Path(path) / WEIGHTS))
    table = torch.cat([torch.zeros(1, m.vision_width), sincos_2d(m.vision_width, m.image_size // m.patch_size)])
    if (sd["pos_embed"][0] - table).abs().max() > 1e-5:
        raise ExportError(
            f"train.init_from timm:{path}: its pos_embed is not MAE's fixed sine-cosine table "
            f"(a learned one has no counterpart in this MAE's encoder)"
        )
    out = {
        "encoder.patch_embed.weight": sd["patch_embed.proj.weight"],
        "encoder.patch_embed.bias": sd["patch_embed.proj.bias"],
        "encoder.cls_token": sd["cls_token"],
        "encoder.ln_post.weight": sd["norm.weight"],
        "encoder.ln_post.bias": sd["norm.bias"],
    }
    for i in range(m.vision_layers):
        for a, b in PAIRS:
            for p in ("weight", "bias"):
                out[f"encoder.transformer.blocks.{i}.{a}.{p}"] = sd[f"blocks.{i}.{b}.{p}"]
    return {}, out
