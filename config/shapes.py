"""Shape checks of model configs: each yields (key, message, related key) for `problems()`."""

from __future__ import annotations


def divisible(width_key: str, width: int, heads_key: str, heads: int):
    if width % heads:
        yield width_key, f"{width} is not divisible by model.{heads_key} {heads}", heads_key


def whole_patches(image_size: int, patch_size: int):
    if image_size % patch_size:
        yield "image_size", f"{image_size} is not a multiple of model.patch_size {patch_size}", "patch_size"
