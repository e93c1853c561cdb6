"""A source that declares its known noise: a folder source (local, an S3 prefix, or a demo set) with
`noise.json` at its root, as `demo:emoji-noisy` has (data/reading/noisy_demo.py). It lists, by
image stem (the image's path under the folder without its suffix):

- `swapped`: the images whose caption belongs to another image ({stem: anything} or [stem, ...]);
- `copies`: {copy stem: original stem}, the near-duplicates planted in the data.

`known_noise(source)` gives them as sample keys, the names the sharder gives those images
(data/reading/sources.py: a folder image's key is its sanitised stem), so a curation step can
measure what it removed against them. A key the sharder changed to keep keys unique (two names
that sanitise alike) is not mapped. A demo set not rendered on this machine is not rendered for
this: its noise counts as unknown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from data.reading.assets import cache_dir
from data.reading.demo import DEMOS
from data.reading.noisy_demo import NOISE_FILE
from data.reading.sources import _safe_key
from infra.storage import Store
from infra.uris import UnsupportedScheme, canonical


def noise_file_text(source: str) -> Optional[str]:
    """The text of the source's `noise.json`, or None when it declares none (a manifest-file
    source, a folder without one, an unrendered demo set, an unknown demo name)."""
    if source.startswith("demo:"):
        demo = DEMOS.get(source.partition(":")[2])
        path = cache_dir() / "demo" / demo[0] / NOISE_FILE if demo else None
        return path.read_text(encoding="utf-8") if path and path.is_file() else None
    try:
        uri = canonical(source, ("local", "s3"), "data.source")
    except UnsupportedScheme:
        return None
    if uri.startswith("s3://"):
        store = Store(uri)
        return store.read_text(NOISE_FILE) if store.exists(NOISE_FILE) else None
    path = Path(uri).expanduser() / NOISE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def parse_noise(text: str, label: str = NOISE_FILE) -> dict:
    """{"swapped": set of sample keys, "copies": {copy key: original key}} of a noise.json text."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{label}: not valid JSON: {e}") from None
    swapped, copies = (obj.get("swapped", {}), obj.get("copies", {})) if isinstance(obj, dict) else (None, None)
    if not isinstance(swapped, (dict, list)) or not isinstance(copies, dict):
        raise ValueError(f"{label}: 'swapped' must be a list or an object of image stems, 'copies' an object")
    return {
        "swapped": {_safe_key(str(s)) for s in swapped},
        "copies": {_safe_key(str(c)): _safe_key(str(o)) for c, o in copies.items()},
    }


def known_noise(source: str) -> Optional[dict]:
    """The known noise of `source` by sample key (parse_noise), or None when it declares none."""
    text = noise_file_text(source)
    return parse_noise(text, f"{source}/{NOISE_FILE}") if text is not None else None
