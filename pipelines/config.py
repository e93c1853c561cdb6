"""Recipe files (YAML) validated into typed, frozen config objects.

An unknown or mistyped key, or a value of the wrong type, is a ConfigError naming the file and the
dotted key. `--set a.b=value` overrides go through the same checks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DataConfig:
    source: str = "demo:emoji"          # folder | .csv/.parquet/.jsonl manifest | s3://... | demo:emoji
    url_column: str = "url"             # manifest column with a path or http(s) URL (img2dataset's name)
    caption_column: str = "caption"
    image_size: int = 80                # shorter side after resize
    resize_mode: Literal["center_crop", "keep_aspect"] = "center_crop"
    max_aspect: float = 3.0             # keep_aspect: reject images more elongated than this
    min_image_size: int = 16            # reject when the shorter side of the original is smaller
    max_caption_chars: int = 300
    jpeg_quality: int = 90
    shard_samples: int = 500            # records per shard (a shard holds fewer if some are rejected)
    holdout_fraction: float = 0.1       # share of groups written to the held-out `eval` split
    split_by: Optional[str] = "base"    # metadata field grouping samples for the split (None: each key)
    http_timeout_s: float = 10.0
    http_retries: int = 3
    max_parallel_tasks: int = 0         # Ray tasks in flight at once (0: one per CPU of the cluster)
    limit: int = 0                      # keep only the first N records of the source (0: all)
    require_caption: bool = True        # false: image-only sources (MAE); captions kept when present
    label_field: str = ""               # metadata field whose values are counted per split (classes)


@dataclass(frozen=True)
class TextDataConfig:
    """A text corpus for language-model pretraining, and prompt/response pairs for SFT."""
    source: str = "demo:shakespeare"    # folder or s3:// prefix of .txt/.md/.rst | .jsonl/.csv/.parquet | demo:shakespeare
    text_column: str = "text"           # of a table source
    sft_source: str = "demo:wordnet"    # .jsonl/.csv/.parquet of pairs | demo:wordnet ("" : no SFT)
    prompt_column: str = "prompt"
    response_column: str = "response"
    vocab_size: int = 4096              # byte-level BPE trained on the train split
    seq_len: int = 128                  # tokens per packed pretraining sequence
    sft_seq_len: int = 64               # prompt + response + EOS padding
    holdout_fraction: float = 0.1       # documents (and pairs) hashed to the held-out split
    shard_chars: int = 500_000          # characters of text per pretraining shard
    shard_sequences: int = 5000         # pairs per SFT shard
    min_chars: int = 1                  # shorter documents are rejected
    limit: int = 0                      # first N documents (0: all)
    sft_limit: int = 0                  # N pairs, a fixed pseudo-random sample (0: all)
    max_parallel_tasks: int = 0         # Ray tasks in flight (0: one per CPU of the cluster)


@dataclass(frozen=True)
class ClipModelConfig:
    kind: Literal["clip"] = "clip"
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 192
    vision_layers: int = 4
    vision_heads: int = 3
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 2
    context_length: int = 32
    mlp_ratio: float = 4.0
    init_temperature: float = 0.07


ModelConfig = ClipModelConfig   # the default model kind


@dataclass(frozen=True)
class MAEModelConfig:
    """Masked autoencoder (He et al. 2022): ViT encoder on the visible patches, light decoder."""
    kind: Literal["mae"] = "mae"
    image_size: int = 28
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    decoder_width: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 2
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True          # targets: pixels normalised per patch (mean 0, variance 1)


@dataclass(frozen=True)
class BlipModelConfig:
    """BLIP: ViT + a text transformer that is unimodal encoder, image-grounded encoder and
    image-grounded decoder (shared but for self-attention); ITC (momentum distillation) + ITM + LM."""
    kind: Literal["blip"] = "blip"
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 2
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 2
    context_length: int = 24
    mlp_ratio: float = 4.0
    init_temperature: float = 0.07
    queue_size: int = 1024              # momentum features kept for ITC (a multiple of the global batch)
    momentum: float = 0.995             # EMA of the momentum encoders
    alpha: float = 0.4                  # weight of the momentum model's soft targets in ITC
    itm_weight: float = 1.0
    lm_weight: float = 1.0
    label_smoothing: float = 0.1        # LM
    lm_vocab: tuple[int, ...] = ()      # LM output tokens (set from the training captions; () = all)


@dataclass(frozen=True)
class MDLMModelConfig:
    """A transformer language model over BPE tokens: `diffusion` is a masked-diffusion model
    (LLaDA: bidirectional, predicts masked tokens), `autoregressive` the same network with a causal
    mask predicting the next token (the baseline). `vocab_size`/`mask_id` come from the tokenizer."""
    kind: Literal["mdlm"] = "mdlm"
    objective: Literal["diffusion", "autoregressive"] = "diffusion"
    vocab_size: int = 0                 # 0: the shard step's tokenizer
    mask_id: int = -1                   # -1: the tokenizer's <|mask|>
    context_length: int = 128           # longest sequence (pretraining seq_len, SFT sft_seq_len)
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    eps: float = 1e-3                   # diffusion: p_mask = (1 - eps) t + eps, t ~ U(0, 1)
    random_length_prob: float = 0.01    # diffusion: share of batches cut to a random length


@dataclass(frozen=True)
class ViTClassifierConfig:
    """A ViT with a classification head on its mean-pooled patch tokens; built by the fine-tuning
    steps from the pretrained encoder's shape."""
    kind: Literal["vit_classifier"] = "vit_classifier"
    image_size: int = 28
    patch_size: int = 4
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    classes: tuple[str, ...] = ()
    pos_embed: Literal["learned", "sincos"] = "sincos"
    ln_pre: bool = False


AnyModelConfig = Union[ClipModelConfig, MAEModelConfig, BlipModelConfig, MDLMModelConfig, ViTClassifierConfig]


def model_config(d: dict) -> AnyModelConfig:
    """A model config from its dict form (as stored with a checkpoint), chosen by `kind`."""
    return _coerce(AnyModelConfig, dict(d), "model")


@dataclass(frozen=True)
class AugmentConfig:
    scale_min: float = 0.6              # random-resized-crop area range
    scale_max: float = 1.0
    ratio_min: float = 0.8
    ratio_max: float = 1.25
    color_jitter: float = 0.2
    alt_caption_prob: float = 0.0       # train on one of a sample's `alt_captions` this often
    hflip: bool = False                 # random horizontal flips (not for text-bearing images)


@dataclass(frozen=True)
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False     # optimizer state in CPU memory (ZeRO-Offload)
    offload_params: bool = False        # parameters in CPU memory (ZeRO-3 only)


@dataclass(frozen=True)
class TrainConfig:
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    num_workers: int = 2                # Ray Train workers
    use_gpu: bool = False
    cpus_per_worker: int = 1
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"   # workers on as few / as many nodes
    batch_size: int = 128               # per worker, per micro-batch
    grad_accum: int = 1
    epoch_samples: int = 0              # samples per epoch (0: the train split's size)
    epochs: int = 20
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 50
    clip_grad: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = False  # recompute transformer blocks in backward (both strategies)
    checkpoint_every: int = 50          # optimizer steps
    log_every: int = 10
    picture_every: int = 0              # MLflow picture of progress every N steps (MAE: reconstructions)
    loader_workers: int = 1             # DataLoader worker processes per Ray Train worker
    shuffle_buffer: int = 1000
    seed: int = 0
    max_failures: int = 1               # Ray Train restarts of the worker group
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass(frozen=True)
class EvalConfig:
    label_field: str = "subgroup"       # metadata field holding the class of a held-out image
    label_format: Literal["as_is", "hyphen_to_space"] = "hyphen_to_space"
    templates: tuple[str, ...] = ("{}", "an emoji of {}", "a picture of {}")
    batch_size: int = 256
    rerank_k: int = 16                  # BLIP: ITM re-ranks the top k of each retrieval query
    caption_samples: int = 25           # BLIP: rows of the sample-caption table in MLflow
    lm_sequences: int = 256             # MDLM: held-out sequences for the likelihood (0: all)
    mc_samples: int = 16                # MDLM: Monte Carlo draws of the masking per sequence
    gen_samples: int = 12               # MDLM: samples in MLflow (held-out prompts, SFT prompts)
    prompt_tokens: int = 16             # MDLM: continuation prompts: the first tokens of held-out text
    gen_length: int = 48                # MDLM: generated tokens
    block_length: int = 16              # MDLM: semi-autoregressive blocks (gen_length / block_length)
    gen_steps: int = 48                 # MDLM: denoising steps in all (a multiple of the blocks)
    temperature: float = 0.0            # MDLM: Gumbel noise on the logits (0: greedy)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning and linear probing of a pretrained image encoder on labelled images (MAE)."""
    label_field: str = "label"          # metadata field with each image's class
    epochs: int = 10
    batch_size: int = 128               # per worker
    lr: float = 1e-3                    # peak lr of the head; block i gets lr * layer_decay^(L+1-i)
    min_lr: float = 1e-5
    warmup_steps: int = 20
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    label_smoothing: float = 0.1
    scratch_baseline: bool = True       # also train the same ViT from random weights, same budget
    probe_epochs: int = 100             # linear probe: full-batch logistic regression on features
    probe_weight_decay: float = 1e-4


@dataclass(frozen=True)
class CapfiltConfig:
    """BLIP's caption bootstrapping: a synthetic caption per training image, the ITM filter."""
    top_p: float = 0.9                  # nucleus sampling of the synthetic captions
    threshold: float = 0.5              # keep a text when its ITM match probability reaches this
    batch_size: int = 256
    shard_samples: int = 500
    second_pretrain: bool = True        # continue pretraining on the bootstrapped shards
    epochs: int = 5                     # of that second pretraining


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning of the masked-diffusion LM on prompt/response pairs."""
    epochs: int = 2
    batch_size: int = 64                # per worker
    lr: float = 3e-4
    min_lr: float = 1e-5
    warmup_steps: int = 20
    weight_decay: float = 0.1


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str = ""              # "" : sqlite file under the runs folder
    experiment: str = "pretrain"


@dataclass(frozen=True)
class Recipe:
    name: str = "clip"
    runs_dir: str = "runs"              # local folder: scratch, and everything when `storage` is ""
    storage: str = ""                   # s3://bucket/prefix: shards, checkpoints, records, artifacts
    data: DataConfig = field(default_factory=DataConfig)
    model: AnyModelConfig = field(default_factory=ClipModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    capfilt: CapfiltConfig = field(default_factory=CapfiltConfig)
    text: TextDataConfig = field(default_factory=TextDataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())


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
        obj = dataclasses.asdict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        kinds = {a.__dataclass_fields__["kind"].default: a for a in args
                 if dataclasses.is_dataclass(a) and "kind" in a.__dataclass_fields__}
        if kinds and isinstance(value, dict):   # a tagged union: `kind` picks the config class
            kind = value.get("kind", next(iter(kinds)))
            if kind not in kinds:
                raise ConfigError(f"{where}.kind: {kind!r} is not one of {list(kinds)}")
            return _build(kinds[kind], value, where)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, values: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = [n for n in names if n.replace("_", "") == str(key).replace("_", "").lower()]
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {sorted(names)}"
            raise ConfigError(f"unknown key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    d[parts[-1]] = value


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (or the defaults when path is None) and apply `key=value` overrides."""
    raw: dict = {}
    label = "<defaults>"
    if path is not None:
        label = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{label}: recipe file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{label}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{label}: the top level must be a mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, text = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(text))
    try:
        return _build(Recipe, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from None
