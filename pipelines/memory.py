"""Per-GPU memory estimate of a recipe: model states under its strategy plus activations.

Model states for Psi parameters over N data-parallel GPUs (ZeRO paper, mixed precision with fp32
master weights and Adam; fp32 training keeps no separate master copy):

    bf16: params 2 Psi, grads 2 Psi, optimizer 12 Psi (fp32 master + m + v)
    fp32: params 4 Psi, grads 4 Psi, optimizer 8 Psi (m + v)
    ZeRO-1 divides the optimizer by N, ZeRO-2 also the grads, ZeRO-3 also the params;
    CPU offload moves the optimizer (and with ZeRO-3 the params) to host memory.

Activations per sample and transformer layer follow Korthikanti et al. (2022): T d (34 + 5 h T / d)
bytes for 16-bit activations (T tokens, width d, h heads; doubled for fp32); with activation
checkpointing only each block's input (2 T d bytes) is kept, plus one block's full activations
during recomputation. The model is built on the `meta` device: nothing is allocated.

    python -m pipelines.memory configs/clip_vitb32.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys

import torch

from families.clip.model import CLIP

GiB = 1024**3


def count_params(recipe) -> int:

    with torch.device("meta"):
        model = CLIP(recipe.model, 49408)
    return sum(p.numel() for p in model.parameters())


def model_state_bytes(
    n_params: int,
    gpus: int,
    precision: str,
    strategy: str,
    stage: int,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict:
    p: float
    g: float
    o: float
    if precision in ("bf16", "auto"):  # auto: bf16 on any recent GPU
        p, g, o = 2 * n_params, 2 * n_params, 12 * n_params
    else:
        p, g, o = 4 * n_params, 4 * n_params, 8 * n_params
    if strategy == "deepspeed":
        if stage >= 1:
            o /= gpus
        if stage >= 2:
            g /= gpus
        if stage >= 3:
            p /= gpus
        if offload_optimizer:
            o = 0
        if offload_params and stage == 3:
            p = 0
    return {"params": p, "grads": g, "optimizer": o}


def tower_activation_bytes(
    tokens: int, width: int, heads: int, layers: int, bytes_per: int, checkpointing: bool
) -> float:
    per_layer = tokens * width * (34 + 5 * heads * tokens / width) * bytes_per / 2
    if checkpointing:
        return layers * 2 * tokens * width * bytes_per / 2 + per_layer
    return layers * per_layer


def activation_bytes_per_sample(recipe) -> float:
    m, t = recipe.model, recipe.train
    b = 2 if t.precision in ("bf16", "auto") else 4
    ck = t.activation_checkpointing
    vision_tokens = (m.image_size // m.patch_size) ** 2 + 1
    return tower_activation_bytes(
        vision_tokens, m.vision_width, m.vision_heads, m.vision_layers, b, ck
    ) + tower_activation_bytes(m.context_length, m.text_width, m.text_heads, m.text_layers, b, ck)


def estimate(recipe) -> dict:
    t = recipe.train
    n = count_params(recipe)
    states = model_state_bytes(
        n,
        t.num_workers,
        t.precision,
        t.strategy,
        t.deepspeed.zero_stage,
        t.deepspeed.offload_optimizer,
        t.deepspeed.offload_params,
    )
    act = activation_bytes_per_sample(recipe) * t.batch_size
    # contrastive logits: [local batch, global batch] per direction, fp32
    logits = 2 * t.batch_size * t.batch_size * t.num_workers * 4 * 2
    total = sum(states.values()) + act + logits
    return {"n_params": n, **states, "activations": act, "logits": logits, "total": total}


def main(argv=None) -> int:
    from pipelines.config import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    for path in args.recipes:
        r = load_recipe(path, args.set)
        t = r.train
        e = estimate(r)
        how = f"deepspeed ZeRO-{t.deepspeed.zero_stage}" if t.strategy == "deepspeed" else "ddp"
        print(
            f"{path}: {e['n_params'] / 1e6:.1f}M parameters, {how}, {t.precision}, {t.num_workers} GPUs, "
            f"batch {t.batch_size}/GPU, activation checkpointing {'on' if t.activation_checkpointing else 'off'}"
        )
        for k in ("params", "grads", "optimizer", "activations", "logits", "total"):
            print(f"  {k:<12} {e[k] / GiB:8.2f} GiB per GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
