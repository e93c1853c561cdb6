"""`make recipe-schema`: the JSON Schemas of the families' recipes are up to date with the recipe
dataclasses, every shipped recipe names its family's schema on its first line and validates against
it, and the schema flags what the loader refuses key by key (an unknown key, another family's
section, a wrong type, a value out of range)."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from families.registry import FAMILIES
from pipelines.config import load_recipe
from pipelines.schema import OUT, recipe_schema

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_shipped_schemas_are_those_the_dataclasses_give():
    for kind, family in FAMILIES.items():
        path = OUT / f"{kind}.json"
        assert path.is_file(), f"{path} missing: run make recipe-schema"
        assert json.loads(path.read_text()) == recipe_schema(family), f"{path} is stale: run make recipe-schema"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_each_recipe_names_its_schema_and_validates(path):
    kind = load_recipe(path).model.kind
    assert path.read_text().splitlines()[0] == f"# yaml-language-server: $schema=schema/{kind}.json"
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads((OUT / f"{kind}.json").read_text()))


@pytest.mark.parametrize(
    "change, where",
    [
        ({"train": {"lr": 0}}, "exclusiveMinimum"),  # out of range: the loader says 'must be > 0.0'
        ({"train": {"epohcs": 3}}, "Additional properties"),  # a typo
        ({"capfilt": {"threshold": 0.3}}, "Additional properties"),  # BLIP's section in a CLIP recipe
        ({"model": {"vision_layers": "four"}}, "is not of type 'integer'"),
        ({"train": {"betas": [0.9, 1.5]}}, "exclusiveMaximum"),
    ],
)
def test_the_schema_flags_what_the_loader_refuses(change, where):
    raw = yaml.safe_load((ROOT / "configs/clip_small.yaml").read_text())
    for section, values in change.items():
        raw.setdefault(section, {}).update(values)
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.validate(raw, json.loads((OUT / "clip.json").read_text()))
    assert where in str(e.value) or where == e.value.validator, str(e.value)[:300]
    overrides = [f"{s}.{k}={json.dumps(v)}" for s, vs in change.items() for k, v in vs.items()]
    with pytest.raises(Exception, match="config|must be|unknown key|section|expected"):
        load_recipe(ROOT / "configs/clip_small.yaml", overrides)
