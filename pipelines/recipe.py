"""What every recipe holds, whatever its family: its name, where it runs and stores, the model
section, `train` and `tracking`. A family's recipe class subclasses `Recipe`: it fixes the model
section's class and adds that family's own sections (`data`, `eval`, `finetune`, ...), so a recipe
carries exactly its family's sections and its MLflow parameters are exactly its own."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from config.typed import ConfigError, config_class
from pipelines.data_configs import canonical_fields, scheme_problems
from training.checkpoint.model_file import split_init_from
from training.config import TrainConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@config_class
class TrackingConfig:
    tracking_uri: str = ""  # "" : sqlite file under the runs folder
    experiment: str = "pretrain"


# a workflow id (and so a recipe name) is one path segment: it names a folder under runs_dir / storage
WORKFLOW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_workflow_id(value: str, key: str = "--workflow-id") -> str:
    if not WORKFLOW_ID.match(value or "") or ".." in value:
        raise ConfigError(
            f"{key}: {value!r} is not a workflow id: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (it names one folder)",
            key,
        )
    return value


@config_class
class Recipe:
    """The shared sections; `family` (a pipelines.family.Family) is set on each family's subclass."""

    family: ClassVar[Any] = None
    name: str = "clip"
    runs_dir: str = "runs"  # local folder: scratch, and everything when `storage` is ""
    storage: str = ""  # s3://bucket/prefix: shards, checkpoints, records, artifacts
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        canonical_fields(self, ("storage",))
        canonical_fields(self, ("runs_dir",), ("local",))

    def problems(self):
        yield from scheme_problems(self, ("storage",))
        yield from scheme_problems(self, ("runs_dir",), ("local",))
        if not WORKFLOW_ID.match(self.name) or ".." in self.name:
            yield (
                "name",
                (
                    f"{self.name!r} is not a workflow id (the default one): use 1-128 letters, digits, "
                    f"'.', '_' or '-', starting with a letter or digit"
                ),
            )
        if hasattr(self.model, "train_problems"):  # a family's rules between its model and train
            yield from self.model.train_problems(self.train)
        if self.train.init_from and self.family is not None:  # a checkpoint the family starts from, fitting
            yield from init_problems(self.family.starts, self.model, self.train.init_from)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())


SHARED_SECTIONS = tuple(f.name for f in dataclasses.fields(Recipe))


def init_problems(starts: dict, mcfg, init_from: str):
    """Why `train.init_from` cannot start model section `mcfg`, as (key, message) pairs; `starts`:
    format ("" a model.pt) -> the function listing a checkpoint's problems (None: none checked)."""
    fmt, path = split_init_from(init_from)
    if fmt not in starts:
        have = [f"{p}:<path>" if p else "a model.pt" for p in starts]
        yield (
            "train.init_from",
            (
                f"{init_from}: a {mcfg.kind} model starts from "
                + (" or ".join(have) if have else "no checkpoint (train it from scratch)")
            ),
        )
    elif starts[fmt] is not None:
        yield from starts[fmt](path, mcfg)


def own_sections(recipe_cls: type) -> dict[str, type]:
    """The sections a family's recipe class adds to the shared ones: name -> config class."""

    hints = typing.get_type_hints(recipe_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(recipe_cls) if f.name not in SHARED_SECTIONS}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def fingerprint(obj: Any) -> str:
    """Stable short hash of plain data (dicts, lists, dataclasses)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(cast("DataclassInstance", obj))  # plain data: a dataclass instance
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
