"""The data sections of a recipe: an image-text source (`data`) and a text corpus (`text`)."""

from __future__ import annotations

from typing import Literal, Optional

from config.typed import Float, bounded, config_class
from infra.uris import UnsupportedScheme, canonical

SOURCE_SCHEMES = ("local", "s3")


def canonical_fields(obj, names: tuple[str, ...], allowed: tuple[str, ...] = SOURCE_SCHEMES) -> None:
    """Each field of `names` in its canonical form (`S3://b/k` -> `s3://b/k`, `file:///a` -> `/a`),
    parsed once when the config is built; a name whose scheme is not allowed is left as it is for
    `scheme_problems` to name."""
    for name in names:
        try:
            object.__setattr__(obj, name, canonical(getattr(obj, name), allowed))
        except UnsupportedScheme:
            pass


def scheme_problems(obj, names: tuple[str, ...], allowed: tuple[str, ...] = SOURCE_SCHEMES):
    for name in names:
        try:
            canonical(getattr(obj, name), allowed)
        except UnsupportedScheme as e:
            yield name, str(e)


@config_class
class DataConfig:
    source: str = "demo:emoji"  # folder | .csv/.parquet/.jsonl manifest | s3://... | demo:emoji
    url_column: str = "url"  # manifest column with a path or http(s) URL (img2dataset's name)
    caption_column: str = "caption"
    image_size: int = bounded(80, ge=1)  # shorter side after resize
    resize_mode: Literal["center_crop", "keep_aspect"] = "center_crop"
    max_aspect: Float = bounded(3.0, ge=1.0)  # keep_aspect: reject images more elongated than this
    min_image_size: int = bounded(16, ge=1)  # reject when the shorter side of the original is smaller
    max_caption_chars: int = bounded(300, ge=1)
    jpeg_quality: int = bounded(90, ge=1, le=100)
    shard_samples: int = bounded(
        500, ge=1
    )  # input records per shard (rows [i*n, (i+1)*n)); fewer samples if some are rejected
    holdout_fraction: Float = bounded(0.1, ge=0.0, le=1.0)  # share of groups written to the held-out `eval` split
    split_by: Optional[str] = "base"  # metadata field grouping samples for the split (None: each key)
    http_timeout_s: Float = bounded(
        10.0, gt=0.0
    )  # one try of a URL, the whole body included; a record gets (http_retries + 1) x this
    http_retries: int = bounded(3, ge=0)
    max_parallel_tasks: int = bounded(0, ge=0)  # Ray tasks in flight at once (0: one per CPU of the cluster)
    fetch_concurrency: int = bounded(256, ge=1, le=4096)  # reads (HTTP, S3, files) in flight per shard task
    fetch_per_host: int = bounded(0, ge=0)  # of those, at most this many to one host (0: no limit)
    limit: int = bounded(0, ge=0)  # keep only the first N records of the source (0: all)
    require_caption: bool = True  # false: image-only sources (MAE); captions kept when present
    label_field: str = ""  # metadata field whose values are counted per split (classes)
    max_record_bytes: int = bounded(
        32 << 20, ge=1024
    )  # a larger image (file, object or HTTP body) is `record_too_large`

    def __post_init__(self):
        canonical_fields(self, ("source",))

    def problems(self):
        if not self.source.strip():
            yield "source", "is empty (a folder, a .csv/.parquet/.jsonl manifest, an s3:// prefix or demo:emoji)"
        yield from scheme_problems(self, ("source",))


@config_class
class TextDataConfig:
    """A text corpus for language-model pretraining, and prompt/response pairs for SFT."""

    source: str = (
        "demo:shakespeare"  # folder or s3:// prefix of .txt/.md/.rst | .jsonl/.csv/.parquet | demo:shakespeare
    )
    text_column: str = "text"  # of a table source
    sft_source: str = "demo:wordnet"  # .jsonl/.csv/.parquet of pairs | demo:wordnet ("" : no SFT)
    prompt_column: str = "prompt"
    response_column: str = "response"
    vocab_size: int = bounded(4096, ge=260, le=1 << 20)  # byte-level BPE (256 bytes + specials) on the train split
    seq_len: int = bounded(128, ge=2)  # tokens per packed pretraining sequence
    sft_seq_len: int = bounded(64, ge=3)  # prompt + response + EOS padding
    holdout_fraction: Float = bounded(0.1, ge=0.0, lt=1.0)  # documents (and pairs) hashed to the held-out split
    shard_chars: int = bounded(500_000, ge=1)  # characters of text per pretraining shard (one task's)
    tokenizer_chars: int = bounded(50_000_000, ge=1)  # the BPE is trained on the first N characters of train documents
    shard_sequences: int = bounded(5000, ge=1)  # pairs per SFT shard
    min_chars: int = bounded(1, ge=0)  # shorter documents are rejected
    limit: int = bounded(0, ge=0)  # first N documents (0: all)
    sft_limit: int = bounded(0, ge=0)  # N pairs sampled by key hash, rejects counted out of them (0: all)
    max_parallel_tasks: int = bounded(0, ge=0)  # Ray tasks in flight (0: one per CPU of the cluster)

    def __post_init__(self):
        canonical_fields(self, ("source", "sft_source"))

    def problems(self):
        if not self.source.strip():
            yield "source", "is empty (a folder or s3:// prefix of text files, a table, or demo:shakespeare)"
        yield from scheme_problems(self, ("source", "sft_source"))
