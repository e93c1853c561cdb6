"""A model family as one typed object (`Family`): everything the workflow engine, the CLI, the
Model Registry and the exporters need of it, as real classes and functions (never module names in
strings). Each `families/<x>/family.py` builds its own; `register` adds one to the process's
registry (families/registry.py registers the built-in ones), and a family defined anywhere else,
a test module included, runs through the same generic workflow after one `register` call."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, cast

from config.typed import ConfigError, build, closest_key
from pipelines.recipe import Recipe, own_sections
from training.checkpoint.model_file import kind_of
from training.checkpoint.model_file import load_model as load

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# what a family's pieces look like (a recipe is the family's Recipe subclass)
StepsFn = Callable[[Any, str, tuple], list]  # (recipe, tracking URI, callbacks) -> [Step]
SummaryFn = Callable[[dict], list]  # the steps' outputs -> lines printed at the end
ExportFn = Callable[[Any, Any, Any], Any]  # (model, model config, dest folder) -> the folder
ProblemsFn = Callable[[str, Any], Iterable[tuple]]  # (checkpoint path, model config) -> (key, message)


def _pretrain(recipe) -> str:
    return "pretrain"


def _no_step(recipe) -> Optional[str]:
    return None


def _no_artifacts(recipe, inputs: dict, scratch) -> dict:
    return {}


# the distributions every pyfunc of the project imports: mlflow (the PythonModel), torch and numpy
# (the models), pandas (tables in and out), pydantic and pyyaml (the config classes, config/)
PYFUNC_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pydantic", "pyyaml")


@dataclass(frozen=True)
class Pyfunc:
    """The family's MLflow pyfunc: `python_model(model_config_class)` is the PythonModel logged;
    `model_step(recipe)` the step whose model it serves (None: the workflow's final model);
    `extra_artifacts(recipe, inputs, scratch)` more files it loads (name -> path or URI);
    `requirements` the distributions its load_context and predict import (their pip names), the
    model's requirements.txt (pinned as pyproject.toml pins them: pipelines/register.py)."""

    python_model: Callable[[type], Any]
    signature: Callable[[], Any]
    example_input: Callable[[], Any]
    model_step: Callable[[Any], Optional[str]] = _no_step
    extra_artifacts: Callable[[Any, dict, Any], dict] = _no_artifacts
    requirements: tuple[str, ...] = PYFUNC_REQUIREMENTS


@dataclass(frozen=True)
class Family:
    recipe: type  # its Recipe subclass: the model section's class and its own sections
    steps: StepsFn  # its workflow (pipelines.workflow.Step objects)
    summary: SummaryFn
    final_model_step: Callable[[Any], str] = _pretrain  # the step whose model it evaluates (and `make pull`s)
    models: tuple = ()  # more model config classes its steps train (MAE's classifier)
    exports: Mapping[str, ExportFn] = field(default_factory=dict)  # `make export FORMAT=`
    # what `train.init_from` may name: "" a model.pt of this project, "<format>" for <format>:<path>;
    # each with the function listing why a checkpoint cannot start the model (None: nothing to check)
    starts: Mapping[str, Optional[ProblemsFn]] = field(default_factory=lambda: {"": None})
    serve: Optional[Pyfunc] = None  # registered in the Model Registry when set
    # the workflow run's metrics (`<step>/<metric>`) a user compares first: the columns of the
    # experiment's saved MLflow view, the numbers `make status` shows
    headline: tuple[str, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.recipe, type) and issubclass(self.recipe, Recipe)):
            raise TypeError(f"Family.recipe: {self.recipe!r} is not a subclass of pipelines.recipe.Recipe")
        type.__setattr__(self.recipe, "family", self)

    @property
    def kind(self) -> str:
        return kind_of(self.model)

    @property
    def model(self) -> type[DataclassInstance]:
        # a recipe's `model` field has its config class as default_factory
        return cast(
            "type[DataclassInstance]", {f.name: f for f in dataclasses.fields(self.recipe)}["model"].default_factory
        )

    @property
    def sections(self) -> dict[str, type]:
        return own_sections(self.recipe)

    def model_configs(self) -> tuple:
        return (self.model, *self.models)


_FAMILIES: dict[str, Family] = {}


def register(*families: Family) -> dict[str, Family]:
    """Add families to the registry (by their model kind); registering one again replaces it."""
    for f in families:
        _FAMILIES[f.kind] = f
    return _FAMILIES


def unregister(kind: str) -> None:
    """Remove the family of model kind `kind` from the registry (a test's family, when it ends)."""
    _FAMILIES.pop(kind, None)


def families() -> dict[str, Family]:
    return dict(_FAMILIES)


def family(kind: str, key: str = "model.kind") -> Family:
    if kind not in _FAMILIES:
        close = closest_key(str(kind), _FAMILIES)
        hint = f" (did you mean '{close}'?)" if close else ""
        raise ConfigError(
            f"{key}: {kind!r} is not one of {sorted(_FAMILIES)}{hint} (the registered model families)", key
        )
    return _FAMILIES[kind]


def family_of_model(kind: str) -> Family:
    """The family whose steps build model kind `kind` (a family's own, or e.g. MAE's classifier)."""
    for f in _FAMILIES.values():
        if any(kind_of(c) == kind for c in f.model_configs()):
            return f
    raise ValueError(f"no registered family builds a model of kind {kind!r} (have {sorted(model_classes())})")


def model_classes() -> dict[str, type]:
    return {kind_of(c): c for f in _FAMILIES.values() for c in f.model_configs()}


def model_config(d: dict):
    """A model config from its dict form (as stored with a checkpoint), chosen by `kind`."""

    kind: Any = d.get("kind")  # parsed data: anything, looked up as it is
    cls = model_classes().get(kind)
    if cls is None:
        raise ConfigError(f"model.kind: {d.get('kind')!r} is not one of {sorted(model_classes())}", "model.kind")
    return build(cls, dict(d), "model")


def load_model(model_path):
    """An exported model file (local or s3://) of any registered family, in eval mode, with its config."""

    return load(model_path, *model_classes().values())


def sections_elsewhere(name: str) -> list[str]:
    """The registered families whose recipes hold section `name`."""
    return sorted(k for k, f in _FAMILIES.items() if name in f.sections)
