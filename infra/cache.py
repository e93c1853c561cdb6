"""The local cache folder (demo sets, tokenizers, unpacked packages): $PRETRAIN_CACHE, by default
~/.cache/pretrain-pipeline; forwarded to Ray workers so every process uses the same one."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("PRETRAIN_CACHE", Path.home() / ".cache" / "pretrain-pipeline"))
    root.mkdir(parents=True, exist_ok=True)
    return root
