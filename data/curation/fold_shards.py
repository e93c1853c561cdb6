"""The training set fold teacher k trains on (data/curation/folds.py): the training shards without
fold k's samples, sample bytes unchanged, with a manifest in the shard step's format."""

from __future__ import annotations

import json

from data.curation.folds import fold_of
from data.curation.write import write_shards
from data.writing.shard_io import read_manifest
from infra.storage import Store


class _InFold:
    """The keys of fold `fold` (a Container for write_shards' removed keys)."""

    def __init__(self, fold: int, folds: int):
        self.fold, self.folds = fold, folds

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and fold_of(key, self.folds) == self.fold


def write_fold_shards(src_manifest: str, urls: list[str], fold: int, folds: int, out: str) -> str:
    """Under `out`: the training shards of `urls` without fold `fold`'s samples and a manifest in
    the shard step's format (the held-out split the source's own, by full names); returns the
    manifest's path. Shards complete from an earlier run are not written again."""
    entries = write_shards(urls, lambda i: _InFold(fold, folds), out)
    source = read_manifest(src_manifest)
    parent = src_manifest.rpartition("/")[0]
    held_out = source["splits"].get("eval", {"samples": 0, "shards": []})
    kept = sum(e["samples"] for e in entries)
    manifest = {
        "source": f"fold {fold} of {folds} left out of {src_manifest}",
        "samples": kept + held_out["samples"],
        "rejected": {},
        "rejected_total": 0,
        "fold": {"left_out": fold, "folds": folds},
        "splits": {
            "train": {"shards": entries, "samples": kept},
            "eval": {
                "samples": held_out["samples"],
                "shards": [dict(s, name=f"{parent}/{s['name']}") for s in held_out["shards"]],
            },
        },
    }
    Store(out).write_text("manifest.json", json.dumps(manifest, indent=1))
    return f"{out}/manifest.json"
