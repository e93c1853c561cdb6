"""CLIP to and from Hugging Face `transformers` (`CLIPModel`): a `save_pretrained` folder with
config.json, safetensors weights, CLIP's BPE tokenizer files and the image processor settings of
the recipe's evaluation preprocessing; and back, for `init_from: hf:<dir>`.

The two networks are the same computation: pre-norm blocks with exact GELU, a class token, a
pre-LayerNorm, the post-LayerNorm on the class token, the text pooled at its end token, bias-free
projections. Our patch convolution has a bias and HF's has none: adding a bias to every patch token
is adding it to every patch position embedding, so it is folded there (exact). A checkpoint that
computes something else (quick GELU, another norm epsilon) is refused, naming the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import torch

from data.loading.pixels import MEAN, STD
from data.loading.tokenizer import VOCAB_SIZE, get_tokenizer
from families.errors import ExportError, mismatches

if TYPE_CHECKING:
    from transformers import CLIPTextConfig

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, what every tower here uses


def _blocks(prefix_ours: str, prefix_hf: str, layers: int, width: int, sd: dict, out: dict) -> None:
    for i in range(layers):
        o, h = f"{prefix_ours}.blocks.{i}", f"{prefix_hf}.layers.{i}"
        q, k, v = sd[f"{o}.attn.qkv.weight"].split(width)
        qb, kb, vb = sd[f"{o}.attn.qkv.bias"].split(width)
        out.update(
            {
                f"{h}.self_attn.q_proj.weight": q,
                f"{h}.self_attn.k_proj.weight": k,
                f"{h}.self_attn.v_proj.weight": v,
                f"{h}.self_attn.q_proj.bias": qb,
                f"{h}.self_attn.k_proj.bias": kb,
                f"{h}.self_attn.v_proj.bias": vb,
            }
        )
        for ours, hf in (
            ("attn.proj", "self_attn.out_proj"),
            ("ln1", "layer_norm1"),
            ("ln2", "layer_norm2"),
            ("mlp.0", "mlp.fc1"),
            ("mlp.2", "mlp.fc2"),
        ):
            for p in ("weight", "bias"):
                out[f"{h}.{hf}.{p}"] = sd[f"{o}.{ours}.{p}"]


def _blocks_back(prefix_ours: str, prefix_hf: str, layers: int, sd: dict, out: dict) -> None:
    for i in range(layers):
        o, h = f"{prefix_ours}.blocks.{i}", f"{prefix_hf}.layers.{i}"
        for p in ("weight", "bias"):
            out[f"{o}.attn.qkv.{p}"] = torch.cat([sd[f"{h}.self_attn.{x}_proj.{p}"] for x in "qkv"])
        for ours, hf in (
            ("attn.proj", "self_attn.out_proj"),
            ("ln1", "layer_norm1"),
            ("ln2", "layer_norm2"),
            ("mlp.0", "mlp.fc1"),
            ("mlp.2", "mlp.fc2"),
        ):
            for p in ("weight", "bias"):
                out[f"{o}.{ours}.{p}"] = sd[f"{h}.{hf}.{p}"]


def to_hf_state(sd: dict, m) -> dict:
    """Our CLIP state dict in CLIPModel's key names."""
    sd = {k: v.detach().float().cpu() for k, v in sd.items()}
    out = {
        "vision_model.embeddings.class_embedding": sd["visual.cls_token"].reshape(-1),
        "vision_model.embeddings.patch_embedding.weight": sd["visual.patch_embed.weight"],
        "vision_model.embeddings.position_embedding.weight": torch.cat(
            [  # the patch bias, folded
                sd["visual.pos_embed"][0, :1],
                sd["visual.pos_embed"][0, 1:] + sd["visual.patch_embed.bias"],
            ]
        ),
        "text_model.embeddings.token_embedding.weight": sd["text.token_embed.weight"],
        "text_model.embeddings.position_embedding.weight": sd["text.pos_embed"][0],
        "visual_projection.weight": sd["image_proj.weight"],
        "text_projection.weight": sd["text_proj.weight"],
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    for ours, hf in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("text.ln_final", "text_model.final_layer_norm"),
    ):
        for p in ("weight", "bias"):
            out[f"{hf}.{p}"] = sd[f"{ours}.{p}"]
    _blocks("visual.transformer", "vision_model.encoder", m.vision_layers, m.vision_width, sd, out)
    _blocks("text.transformer", "text_model.encoder", m.text_layers, m.text_width, sd, out)
    return out


def from_hf_state(sd: dict, m) -> dict:
    """CLIPModel's state dict in our key names (the patch bias zero: HF has none)."""
    pos = sd["vision_model.embeddings.position_embedding.weight"]
    out = {
        "visual.cls_token": sd["vision_model.embeddings.class_embedding"].reshape(1, 1, -1),
        "visual.patch_embed.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.patch_embed.bias": torch.zeros(m.vision_width),
        "visual.pos_embed": pos[None],
        "text.token_embed.weight": sd["text_model.embeddings.token_embedding.weight"],
        "text.pos_embed": sd["text_model.embeddings.position_embedding.weight"][None],
        "image_proj.weight": sd["visual_projection.weight"],
        "text_proj.weight": sd["text_projection.weight"],
        "logit_scale": sd["logit_scale"].reshape(1),
    }
    for ours, hf in (
        ("visual.ln_pre", "vision_model.pre_layrnorm"),
        ("visual.ln_post", "vision_model.post_layernorm"),
        ("text.ln_final", "text_model.final_layer_norm"),
    ):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"{hf}.{p}"]
    _blocks_back("visual.transformer", "vision_model.encoder", m.vision_layers, sd, out)
    _blocks_back("text.transformer", "text_model.encoder", m.text_layers, sd, out)
    return out


def hf_config(m, vocab_size: int, sot: int, eot: int) -> dict:
    common = {"hidden_act": "gelu", "layer_norm_eps": LN_EPS, "projection_dim": m.embed_dim, "attention_dropout": 0.0}
    return {
        "projection_dim": m.embed_dim,
        "logit_scale_init_value": 1.0,  # the weights carry the trained value
        "text_config": {
            **common,
            "vocab_size": vocab_size,
            "hidden_size": m.text_width,
            "intermediate_size": int(m.text_width * m.mlp_ratio),
            "num_hidden_layers": m.text_layers,
            "num_attention_heads": m.text_heads,
            "max_position_embeddings": m.context_length,
            "bos_token_id": sot,
            "eos_token_id": eot,
            "pad_token_id": eot,
        },
        "vision_config": {
            **common,
            "hidden_size": m.vision_width,
            "intermediate_size": int(m.vision_width * m.mlp_ratio),
            "num_hidden_layers": m.vision_layers,
            "num_attention_heads": m.vision_heads,
            "image_size": m.image_size,
            "patch_size": m.patch_size,
            "num_channels": 3,
        },
    }


def model_fields_of(cfg) -> dict:
    """Our model section's fields (families/clip/config.py) for a CLIPConfig, refusing what our
    towers do not compute."""
    t, v = cfg.text_config, cfg.vision_config
    for name, c in (("text_config", t), ("vision_config", v)):
        if c.hidden_act != "gelu":
            raise ExportError(
                f"{name}.hidden_act {c.hidden_act!r}: the transformer blocks here use exact GELU "
                f"(models/transformer.py Block.mlp); no counterpart for {c.hidden_act!r}"
            )
        if abs(c.layer_norm_eps - LN_EPS) > 1e-12:
            raise ExportError(f"{name}.layer_norm_eps {c.layer_norm_eps}: every LayerNorm here uses {LN_EPS}")
        if c.intermediate_size % c.hidden_size:
            raise ExportError(
                f"{name}.intermediate_size {c.intermediate_size} is not a multiple of hidden_size "
                f"{c.hidden_size}: one mlp_ratio serves both towers here"
            )
    ratio = t.intermediate_size / t.hidden_size
    if v.intermediate_size / v.hidden_size != ratio:
        raise ExportError(
            f"vision_config.intermediate_size / hidden_size {v.intermediate_size / v.hidden_size} "
            f"differs from the text tower's {ratio}: one model.mlp_ratio serves both towers here"
        )
    return dict(
        embed_dim=cfg.projection_dim,
        image_size=v.image_size,
        patch_size=v.patch_size,
        vision_width=v.hidden_size,
        vision_layers=v.num_hidden_layers,
        vision_heads=v.num_attention_heads,
        text_width=t.hidden_size,
        text_layers=t.num_hidden_layers,
        text_heads=t.num_attention_heads,
        context_length=t.max_position_embeddings,
        mlp_ratio=ratio,
    )


def export_hf(model, m, dest: Path) -> Path:
    """Write `dest` as a CLIPModel / CLIPProcessor `save_pretrained` folder."""
    from transformers import CLIPConfig, CLIPModel

    tok = get_tokenizer(m.context_length)
    hf = CLIPModel(CLIPConfig(**hf_config(m, tok.vocab_size, tok.sot, tok.eot))).eval()
    hf.load_state_dict(to_hf_state(model.state_dict(), m), strict=True)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(dest, safe_serialization=True)
    _save_tokenizer(tok, m.context_length, dest)
    (dest / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "processor_class": "CLIPProcessor",
                "do_convert_rgb": True,
                "do_resize": True,
                "size": {"shortest_edge": m.image_size},
                "resample": 2,
                "do_center_crop": True,
                "crop_size": {"height": m.image_size, "width": m.image_size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [float(x) for x in MEAN],
                "image_std": [float(x) for x in STD],
            },
            indent=1,
        )
    )
    return dest


def _save_tokenizer(tok, context_length: int, dest: Path) -> None:
    from transformers import CLIPTokenizer

    hf_tok = CLIPTokenizer(
        vocab=dict(tok.vocab),
        merges=[tuple(p) for p in tok.merges],  # type: ignore[misc]  # typed list[str]; BPE takes pairs
        model_max_length=context_length,
    )
    hf_tok.save_pretrained(dest)


def checkpoint_problems(path: str | Path, m) -> list[tuple[str, str]]:
    """Why a CLIPModel folder cannot start model section `m` (reads its config.json only): the key
    of each mismatched field, or of train.init_from."""
    where = f"the checkpoint hf:{path}"
    if not (Path(path) / "config.json").is_file():
        return [("train.init_from", f"hf:{path}: no config.json there (not a transformers save_pretrained folder)")]
    from transformers import CLIPConfig

    try:
        cfg = CLIPConfig.from_pretrained(str(path))
        theirs = model_fields_of(cfg)
    except (ExportError, ValueError, OSError, TypeError) as e:
        return [("train.init_from", f"hf:{path}: {e}")]
    return mismatches(
        m,
        theirs,
        where,
        # a CLIPConfig makes its text_config a CLIPTextConfig (typed dict | CLIPTextConfig | None)
        (
            "text_config.vocab_size",
            cast("CLIPTextConfig", cfg.text_config).vocab_size,
            VOCAB_SIZE,
        ),
    )


def import_checkpoint(path: str | Path, m=None) -> tuple[dict, dict]:
    """(our model section's fields, our state dict) of a CLIPModel folder; checked against model
    section `m` when given."""
    from transformers import CLIPModel

    for key, message in checkpoint_problems(path, m) if m is not None else []:
        raise ExportError(f"{key}: {message}")
    hf = CLIPModel.from_pretrained(str(path))
    theirs = model_fields_of(hf.config)
    return theirs, from_hf_state(hf.state_dict(), SimpleNamespace(**theirs))
