"""Curation measured against a source's known noise: noise.json's image stems map to the sample keys
the sharder gives a folder's images (data/reading/known_noise.py), and precision and recall by
reason count what they say (data/curation/noise_metrics.py)."""

import json

import pytest

from data.curation.noise_metrics import noise_metrics
from data.reading.known_noise import known_noise, parse_noise
from data.reading.sources import list_records
from tests.conftest import image_bytes


def test_noise_stems_are_the_keys_the_sharder_gives_the_folders_images(tmp_path):
    stems = ["0006", "0006-copy", "0007", "cats/a b", "cats/a b-copy", "x.y"]
    for i, stem in enumerate(stems):
        (tmp_path / stem).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"{stem}.png").write_bytes(image_bytes(i, fmt="PNG"))
        (tmp_path / f"{stem}.json").write_text(json.dumps({"caption": f"thing {i}"}))
    truth = {
        "swapped": {"0007": {"caption_of": "x.y"}, "x.y": {}},
        "copies": {"0006-copy": "0006", "cats/a b-copy": "cats/a b"},
    }
    (tmp_path / "noise.json").write_text(json.dumps(truth))
    by_src = {r["src"]: r["key"] for r in list_records(str(tmp_path))}
    key = {s: by_src[str(tmp_path / f"{s}.png")] for s in stems}
    assert key["cats/a b"] != "cats/a b" and "." not in key["x.y"]  # sanitised: the mapping matters
    noise = known_noise(str(tmp_path))
    assert noise == {
        "swapped": {key["0007"], key["x.y"]},
        "copies": {key["0006-copy"]: key["0006"], key["cats/a b-copy"]: key["cats/a b"]},
    }
    assert parse_noise(json.dumps({"swapped": ["0007"]})) == {"swapped": {"0007"}, "copies": {}}
    (tmp_path / "noise.json").unlink()
    assert known_noise(str(tmp_path)) is None  # a source that declares no noise
    assert known_noise("demo:no-such-set") is None and known_noise(str(tmp_path / "pairs.csv")) is None
    with pytest.raises(ValueError, match="'copies' an object"):
        parse_noise(json.dumps({"copies": ["a"]}))


def test_precision_and_recall_by_reason():
    keys = [f"k{i}" for i in range(20)]
    noise = {
        "swapped": {"k0", "k1", "k2", "k3", "held-out"},  # not scored: not counted
        "copies": {"k10": "k11", "k12": "k13", "k14": "k15", "k16": "k17", "k18": "gone"},
    }
    low = {k: {"reason": "low_clip_score", "score": 0.1} for k in ("k0", "k1", "k5", "k16")}
    dup = {
        "k10": {"reason": "semantic_duplicate", "score": 0.3, "duplicate_of": "k11"},  # a copy
        "k13": {
            "reason": "semantic_duplicate",
            "score": 0.3,
            "duplicate_of": "k12",
        },  # an original: its copy came first
        "k8": {"reason": "semantic_duplicate", "score": 0.3, "duplicate_of": "k7"},  # no known pair
    }
    m = noise_metrics(keys, {**low, **dup}, noise)
    assert m["known_swapped_captions"] == 4 and m["known_copy_pairs"] == 4  # k18's original is not scored
    assert m["low_clip_score_precision"] == 2 / 4 and m["low_clip_score_recall"] == 2 / 4
    assert m["semantic_duplicate_precision"] == 2 / 3
    # the pair (k16, k17) lost k16 to the score filter: dedup could see 3 pairs and found 2
    assert m["semantic_duplicate_recall"] == 2 / 3

    none = noise_metrics(keys, low, {"swapped": set(), "copies": {}})
    assert "semantic_duplicate_precision" not in none and "low_clip_score_recall" not in none  # undefined: left out
    assert none["low_clip_score_precision"] == 0.0 and "semantic_duplicate_recall" not in none
