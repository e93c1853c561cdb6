"""CLIP (and models on its towers) to and from open_clip: a folder with `open_clip_config.json` (open_clip's model
config schema, and the evaluation's preprocessing) and `open_clip_model.safetensors` in open_clip's
key names, which `open_clip.create_model_and_transforms("local-dir:<folder>")` builds and
`open_clip.get_tokenizer("local-dir:<folder>")` tokenizes for; and back, for
`train.init_from: open_clip:<dir>` (read without open_clip itself: JSON and safetensors).

open_clip's `CLIP` is the same network as ours (pre-norm blocks, exact GELU unless `quick_gelu`,
class-token and end-token pooling, projections without bias, a logit bias where the model has one); its patch
convolution has no bias, which is folded into the patch position embeddings (exact).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from data.loading.pixels import MEAN, STD
from data.loading.tokenizer import VOCAB_SIZE
from families.errors import ExportError, mismatches

CONFIG, WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"


def _blocks(ours: str, theirs: str, layers: int, sd: dict, out: dict, back: bool = False) -> None:
    pairs = [
        ("ln1", "ln_1"),
        ("attn.qkv", "attn.in_proj"),
        ("attn.proj", "attn.out_proj"),
        ("ln2", "ln_2"),
        ("mlp.0", "mlp.c_fc"),
        ("mlp.2", "mlp.c_proj"),
    ]
    for i in range(layers):
        for a, b in pairs:
            for p in ("weight", "bias"):
                o = f"{ours}.blocks.{i}.{a}.{p}"
                t = f"{theirs}.resblocks.{i}.{b}_{p}" if b == "attn.in_proj" else f"{theirs}.resblocks.{i}.{b}.{p}"
                if back:
                    out[o] = sd[t]
                else:
                    out[t] = sd[o]


def to_open_clip_state(sd: dict, m) -> dict:
    sd = {k: v.detach().float().cpu() for k, v in sd.items()}
    pos = sd["visual.pos_embed"][0]
    out = {
        "visual.class_embedding": sd["visual.cls_token"].reshape(-1),
        "visual.conv1.weight": sd["visual.patch_embed.weight"],
        "visual.positional_embedding": torch.cat([pos[:1], pos[1:] + sd["visual.patch_embed.bias"]]),
        "visual.proj": sd["image_proj.weight"].T,
        "positional_embedding": sd["text.pos_embed"][0],
        "token_embedding.weight": sd["text.token_embed.weight"],
        "text_projection": sd["text_proj.weight"].T,
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    if "logit_bias" in sd:
        out["logit_bias"] = sd["logit_bias"].reshape(())
    for a, b in (
        ("visual.ln_pre", "visual.ln_pre"),
        ("visual.ln_post", "visual.ln_post"),
        ("text.ln_final", "ln_final"),
    ):
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = sd[f"{a}.{p}"]
    _blocks("visual.transformer", "visual.transformer", m.vision_layers, sd, out)
    _blocks("text.transformer", "transformer", m.text_layers, sd, out)
    return {k: v.contiguous() for k, v in out.items()}


def from_open_clip_state(sd: dict, m) -> dict:
    out = {
        "visual.cls_token": sd["visual.class_embedding"].reshape(1, 1, -1),
        "visual.patch_embed.weight": sd["visual.conv1.weight"],
        "visual.patch_embed.bias": torch.zeros(m.vision_width),
        "visual.pos_embed": sd["visual.positional_embedding"][None],
        "image_proj.weight": sd["visual.proj"].T.contiguous(),
        "text.pos_embed": sd["positional_embedding"][None],
        "text.token_embed.weight": sd["token_embedding.weight"],
        "text_proj.weight": sd["text_projection"].T.contiguous(),
        "logit_scale": sd["logit_scale"].reshape(1),
    }
    if "logit_bias" in sd:
        out["logit_bias"] = sd["logit_bias"].reshape(1)
    for a, b in (
        ("visual.ln_pre", "visual.ln_pre"),
        ("visual.ln_post", "visual.ln_post"),
        ("text.ln_final", "ln_final"),
    ):
        for p in ("weight", "bias"):
            out[f"{a}.{p}"] = sd[f"{b}.{p}"]
    _blocks("visual.transformer", "visual.transformer", m.vision_layers, sd, out, back=True)
    _blocks("text.transformer", "transformer", m.text_layers, sd, out, back=True)
    return out


def open_clip_config(m, vocab_size: int) -> dict:

    cfg = {
        "embed_dim": m.embed_dim,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": m.image_size,
            "patch_size": m.patch_size,
            "width": m.vision_width,
            "layers": m.vision_layers,
            "head_width": m.vision_width // m.vision_heads,
            "mlp_ratio": m.mlp_ratio,
        },
        "text_cfg": {
            "context_length": m.context_length,
            "vocab_size": vocab_size,
            "width": m.text_width,
            "heads": m.text_heads,
            "layers": m.text_layers,
            "mlp_ratio": m.mlp_ratio,
        },
    }
    if getattr(m, "init_bias", None) is not None:  # a model with a learnable logit bias (a sigmoid loss)
        cfg["init_logit_bias"] = m.init_bias
    return {
        "model_cfg": cfg,
        "preprocess_cfg": {
            "size": m.image_size,
            "mean": [float(x) for x in MEAN],
            "std": [float(x) for x in STD],
            "interpolation": "bilinear",
            "resize_mode": "shortest",
        },
    }


def export_open_clip(model, m, dest: Path) -> Path:
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG).write_text(json.dumps(open_clip_config(m, VOCAB_SIZE), indent=1))
    save_file(to_open_clip_state(model.state_dict(), m), str(dest / WEIGHTS))
    return dest


def model_fields_of(cfg: dict) -> dict:
    """Our model section's fields for an open_clip model config, refusing what we do not compute."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    for key, why in (("quick_gelu", "the blocks here use exact GELU"),):
        if cfg.get(key):
            raise ExportError(f"model_cfg.{key} true: {why} (models/transformer.py Block.mlp)")
    for section, c in (("vision_cfg", v), ("text_cfg", t)):
        for key in (
            "timm_model_name",
            "hf_model_name",
            "attentional_pool",
            "no_ln_pre",
            "final_ln_after_pool",
            "ls_init_value",
            "pos_embed_type",
            "attn_pooler_queries",
            "output_tokens",
            "norm_kwargs",
        ):
            if c.get(key):
                raise ExportError(f"model_cfg.{section}.{key} {c[key]!r}: no counterpart in this project's towers")
        for key, want in (("pool_type", "tok" if section == "vision_cfg" else "argmax"),):
            if c.get(key, want) != want:
                raise ExportError(f"model_cfg.{section}.{key} {c[key]!r}: the towers here pool with {want!r}")
    ratio = v.get("mlp_ratio", 4.0)
    if t.get("mlp_ratio", 4.0) != ratio:
        raise ExportError(
            f"model_cfg.text_cfg.mlp_ratio {t.get('mlp_ratio', 4.0)} differs from vision_cfg.mlp_ratio "
            f"{ratio}: one model.mlp_ratio serves both towers here"
        )
    width = v.get("width", 768)
    return dict(
        embed_dim=cfg["embed_dim"],
        image_size=v.get("image_size", 224),
        patch_size=v.get("patch_size", 16),
        vision_width=width,
        vision_layers=v.get("layers", 12),
        vision_heads=width // v.get("head_width", 64),
        text_width=t.get("width", 512),
        text_layers=t.get("layers", 12),
        text_heads=t.get("heads", 8),
        context_length=t.get("context_length", 77),
        mlp_ratio=ratio,
    )


def _read(path: str | Path) -> dict:
    p = Path(path)
    cfg = json.loads((p / CONFIG).read_text())
    return cfg.get("model_cfg", cfg)


def checkpoint_problems(path: str | Path, m) -> list[tuple[str, str]]:
    """Why an open_clip folder cannot start model section `m`: each mismatched field's key."""
    where = f"the checkpoint open_clip:{path}"
    if not (Path(path) / CONFIG).is_file() or not (Path(path) / WEIGHTS).is_file():
        return [
            ("train.init_from", f"open_clip:{path}: needs {CONFIG} and {WEIGHTS} there (make export FORMAT=open_clip)")
        ]
    try:
        cfg = _read(path)
        theirs = model_fields_of(cfg)
    except (ExportError, ValueError, KeyError, OSError) as e:
        return [("train.init_from", f"open_clip:{path}: {e}")]

    return mismatches(
        m,
        theirs,
        where,
        (
            "text_cfg.vocab_size",
            cfg.get("text_cfg", {}).get("vocab_size", 49408),
            VOCAB_SIZE,
        ),
    )


def import_checkpoint(path: str | Path, m=None) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    for key, message in checkpoint_problems(path, m) if m is not None else []:
        raise ExportError(f"{key}: {message}")
    theirs = model_fields_of(_read(path))
    return theirs, from_open_clip_state(load_file(str(Path(path) / WEIGHTS)), SimpleNamespace(**theirs))
