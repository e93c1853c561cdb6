"""Where curation's scorer comes from (`curate.scorer`, its forms in pipelines/curate_config.py), found
and checked before any expensive work; every refusal is a ConfigError naming `curate.scorer` and the
value.

- `hf:<dir>` and `open_clip:<dir>`: a local folder, checked when the recipe loads (its config files
  only: the model type has image and text embeddings, the tokenizer is there, its preprocessing makes
  images of its vision tower's size; open_clip's towers are ones this project computes, since the
  open_clip package is not a dependency) and again when the workflow is built.
- `models:/<name>/<version>`: checked when the workflow is built (it needs the recipe's tracking URI):
  the version is in the registry, its `model_kind` tag names a model with image and text towers, and
  its model.pt is found as `make pull` / `make export` find it, the final model of the workflow its
  `workflow_id` tag names, under this recipe's storage; failing that, the copy the registry itself
  holds (the pyfunc's `artifacts/model.pt`) where that is a local folder or s3:// (a tracking server
  proxying artifacts over HTTP is not read: register from a workflow under this storage).

`resolve_scorer` returns what curate's ScorerFactory loads and a record of it: the curate step's
config (a changed scorer, or a changed folder, reruns curate) and its MLflow parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from config.typed import ConfigError
from data.loading.tokenizer import VOCAB_SIZE
from data.reading.source_fingerprint import source_fingerprint
from families.clip import openclip
from families.clip.curate import KEY, hf_norm, open_clip_norm
from families.errors import ExportError
from infra.storage import Store
from pipelines.curate_config import scorer_form
from pipelines.recipe import check_workflow_id
from pipelines.register import final_outputs, workflow_of_version

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


def hf_problems(path: Path) -> list[str]:
    """Why transformers folder `path` cannot score (its config files only, no weights read)."""
    if not (path / "config.json").is_file():
        return [f"no config.json in {path} (not a transformers save_pretrained folder)"]
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        cls: Any = MODEL_MAPPING[type(cfg)]  # a model class (typed as a pair of them)
    except (ValueError, OSError, KeyError) as e:
        return [
            f"its config.json names no transformers model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ]
    missing = [m for m in ("get_image_features", "get_text_features") if not hasattr(cls, m)]
    vision = getattr(cfg, "vision_config", None)
    if missing or vision is None or getattr(cfg, "text_config", None) is None:
        return [f"a {cls.__name__} has no image and text embeddings to score with (a CLIP or SigLIP model has)"]
    out = []
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        out.append(f"no tokenizer in {path} ({', '.join(TOKENIZER_FILES)}): captions are tokenized by the model's own")
    if not list(path.glob("*.safetensors")) and not (path / "pytorch_model.bin").is_file():
        out.append(f"no weights in {path} (model.safetensors)")
    size = hf_norm(path)[2]
    if size is not None and size != vision.image_size:
        out.append(f"its preprocessor makes {size} px images; its vision tower takes {vision.image_size} px")
    return out


def open_clip_problems(path: Path) -> list[str]:
    """Why open_clip folder `path` cannot score here: it is read without open_clip, into this
    project's CLIP towers, and tokenized with CLIP's BPE."""
    if not (path / openclip.CONFIG).is_file() or not (path / openclip.WEIGHTS).is_file():
        return [
            f"needs {openclip.CONFIG} and {openclip.WEIGHTS} in {path} (make export FORMAT=open_clip writes them; "
            f"a pickled open_clip_pytorch_model.bin is not read)"
        ]
    try:
        cfg = json.loads((path / openclip.CONFIG).read_text())
        model_cfg = cfg.get("model_cfg", cfg)
        fields = openclip.model_fields_of(model_cfg)
    except (ExportError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{e} (open_clip folders are read here without open_clip, into this project's CLIP towers)"]
    text = model_cfg.get("text_cfg", {})
    out = []
    if text.get("hf_tokenizer_name") or text.get("tokenizer_kwargs"):
        out.append("its text_cfg names another tokenizer; the scorer tokenizes with CLIP's BPE")
    if text.get("vocab_size", 49408) != VOCAB_SIZE:
        out.append(f"its text_cfg.vocab_size is {text['vocab_size']}; the CLIP tokenizer here has {VOCAB_SIZE}")
    size = open_clip_norm(path)[2]
    if size is not None and size not in (fields["image_size"], [fields["image_size"]] * 2):
        out.append(f"its preprocess_cfg.size is {size}; its vision tower takes {fields['image_size']} px")
    return out


def folder_problems(value: str) -> list[tuple[str, str]]:
    """(curate.scorer, why) for an hf:<dir> or open_clip:<dir> scorer that cannot score (none for
    other forms: a malformed value is CurateConfig's to report, models:/ the workflow's)."""
    try:
        form, path = scorer_form(value)
    except ValueError:
        return []
    if form not in ("hf", "open_clip"):
        return []
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return [(KEY, f"{value!r}: no folder {folder}")]
    check = hf_problems if form == "hf" else open_clip_problems
    return [(KEY, f"{value!r}: {why}") for why in check(folder)]


def _registry_copy(client, name: str, version: str) -> str | None:
    """The model.pt the registry holds for the version (its pyfunc's artifacts), where readable."""
    where = client.get_model_version_download_uri(name, version).rstrip("/")
    url = urlparse(where)
    base = unquote(url.path) if url.scheme == "file" else where if url.scheme in ("s3", "") else None
    if base is None:
        return None
    store = Store(f"{base}/artifacts")
    return store.uri("model.pt") if store.exists("model.pt") else None


def registered_model(value: str, tracking_uri: str, root: str, model_classes: dict) -> tuple[str, str, str]:
    """(the model.pt of registered version `value`, its model kind, its workflow id): first its
    `model_kind` tag, one of `model_classes` (kind -> config class) with image and text towers (an
    image_size and a context_length in its config), then its model file."""
    from mlflow.tracking import MlflowClient

    try:
        workflow = check_workflow_id(workflow_of_version(value, tracking_uri), f"{value}: tag workflow_id")
    except (ValueError, ConfigError) as e:
        raise ConfigError(f"{KEY}: {e} (registry at {tracking_uri})", KEY) from None
    name, _, version = value[len("models:/") :].rpartition("/")
    client = MlflowClient(tracking_uri)
    kind = client.get_model_version(name, version).tags.get("model_kind", "")
    towers = sorted(
        k for k, c in model_classes.items() if {"image_size", "context_length"} <= set(c.__dataclass_fields__)
    )
    if kind not in towers:
        raise ConfigError(
            f"{KEY}: {value} is a {kind or 'untagged'} model: only a model with image and text towers "
            f"scores (a {' or '.join(towers)} model)",
            KEY,
        )
    try:
        final, outputs = final_outputs(workflow, root)
        parent, _, file = outputs[final]["model"].rpartition("/")
        model = Store(parent).uri(file) if Store(parent).exists(file) else None
    except (ValueError, KeyError):
        model = None
    model = model or _registry_copy(client, name, version)
    if model is None:
        raise ConfigError(
            f"{KEY}: {value}: its model file is found neither as the final model of workflow {workflow} under "
            f"{root} nor in the registry's own copy of it (a local folder or s3:// only)",
            KEY,
        )
    return model, kind, workflow


def resolve_scorer(value: str, tracking_uri: str, root: str, model_classes: dict) -> tuple[str, dict]:
    """(what curate's ScorerFactory loads, the record of the scorer) for a scorer other than the
    teacher; `model_classes`: model kind -> config class, of the registered families."""
    try:
        form, path = scorer_form(value)
    except ValueError as e:
        raise ConfigError(f"{KEY}: {e}", KEY) from None
    if form == "teacher":
        raise ValueError("the teacher is a step of the workflow, not resolved here")
    for key, why in folder_problems(value):
        raise ConfigError(f"{key}: {why}", key)
    if form in ("hf", "open_clip"):
        folder = Path(path).expanduser().resolve()
        fp = source_fingerprint(str(folder), KEY)  # names, sizes, modification times: a changed folder rescores
        return f"{form}:{folder}", {"scorer": value, "folder": str(folder), "folder_fingerprint": fp}
    model, kind, workflow = registered_model(value, tracking_uri, root, model_classes)
    return model, {"scorer": value, "model": model, "kind": kind, "workflow": workflow}
