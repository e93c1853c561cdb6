"""Image-text sources: list records on the driver, read their bytes inside Ray tasks.

A record is a plain dict: {"key", "src" (path or URL), "caption" (str or None), "meta" (dict)}.
- a folder of images with same-stem `.txt` (the caption) or `.json` (`caption`/`text` + metadata,
  optionally `alt_captions`: more captions of the same image, which training can sample)
- a manifest `.csv` / `.parquet` / `.jsonl` with a path-or-URL column and a caption column
  (img2dataset's convention: `url` and `caption`); other columns become metadata
- an S3 prefix laid out like such a folder, or an S3 manifest file (`s3://bucket/pairs.parquet`);
  manifests may list s3:// URLs too
- `demo:emoji`: the Noto emoji rendered with their Unicode names; `demo:animal-mnist`: labelled
  silhouettes without captions (see data/reading/demo.py)
- images in sub-folders (`<class>/<image>`) get the metadata `folder: <class>`
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from data.reading.demo import demo_folder
from data.reading.fetch import FetchError, fetch_bytes, read_local
from data.reading.manifest_rows import _manifest_records
from data.reading.source_error import SourceError
from infra.storage import StorageError, Store, s3_client, split_s3
from infra.uris import UnsupportedScheme, canonical

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIDECAR_MAX_BYTES = 1 << 20


def _sanitise(text: str) -> str:
    """`text` with every run of characters other than letters, digits, '_' and '-' made one '_'."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def _slug(text: str) -> str:
    """The sanitised `text` (a hash when nothing is left); not one-to-one, so not for sample keys."""
    return _sanitise(text) or hashlib.sha1(text.encode()).hexdigest()[:12]


def _safe_key(text: str) -> str:
    """A WebDataset sample key for the name `text`: free of dots and slashes (WebDataset splits keys
    at the first dot of a member name) and distinct for distinct names: when sanitising changes the
    name, a short hash of the original name is appended ('a b' -> 'a_b_<hash>', 'a_b' -> 'a_b')."""
    key = _sanitise(text)
    if key == text:
        return key
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{key}_{digest[:10]}" if key else digest[:12]


def _unique_keys(records: list[dict]) -> list[dict]:
    """Keys stay unique even when a name looks like another's sanitised form: repeats get a hash
    of their source."""
    seen: set[str] = set()
    for r in records:
        if r["key"] in seen:
            r["key"] = f"{r['key']}_{hashlib.sha1(r['src'].encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"
        seen.add(r["key"])
    return records


def read_caption_text(data: bytes, name: str) -> str:
    """A caption file's text: UTF-8 (a leading BOM is dropped); anything else is refused, naming the
    file (the sample is rejected as `unreadable_caption`), never stored with replacement characters."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{name}: not UTF-8 ({e.reason} at byte {e.start})") from None


def _sidecar_caption(
    json_name: str, read_json: Optional[Callable[[], bytes]], txt_name: str, read_txt: Optional[Callable[[], bytes]]
) -> tuple[Optional[str], dict, Optional[tuple]]:
    """Caption (as read: type-checked by the shard task), metadata and reject ((reason, detail) when
    a sidecar cannot be read) of an image from its sidecars: the `.json` (`caption` or `text`,
    scalar fields as metadata, `alt_captions`) first, else the `.txt`."""
    caption, meta = None, {}
    try:
        if read_json is not None:
            try:
                obj = json.loads(read_caption_text(read_json(), json_name))
            except RecursionError:
                raise SourceError(f"{json_name}: JSON nested too deeply") from None
            except ValueError as e:
                if isinstance(e, SourceError):
                    raise
                raise SourceError(f"{json_name}: not valid JSON: {e}") from None
            if isinstance(obj, dict):
                caption = obj.pop("caption", obj.pop("text", None))
                meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
                if "alt_captions" in obj:
                    meta["alt_captions"] = obj["alt_captions"]
        if caption is None and read_txt is not None:
            caption = read_caption_text(read_txt(), txt_name)
    except FetchError as e:
        return None, meta, ("not_a_file" if e.reason == "not_a_file" else "unreadable_caption", str(e))
    except (SourceError, OSError) as e:
        return None, meta, ("unreadable_caption", str(e))
    return caption, meta, None


def _sidecar_reader(path: Path):
    """A reader of sidecar `path` (None when there is none): a regular file of at most
    SIDECAR_MAX_BYTES; a FIFO or device is never opened for a blocking read."""
    if not (path.exists() or path.is_symlink()):
        return None
    return lambda: read_local(str(path), SIDECAR_MAX_BYTES)


def _with_folder(meta: dict, folder: str) -> dict:
    """ImageFolder layout: an image under `<class>/` gets the metadata `folder: <class>` (a label
    for fine-tuning and probes) unless its sidecar says otherwise."""
    if folder not in (".", ""):
        meta.setdefault("folder", folder)
    return meta


def _outside(path: Path, real_root: Path) -> bool:
    """Whether `path` (a symbolic link, or under one) leads out of the source folder."""
    try:
        path.resolve().relative_to(real_root)
        return False
    except ValueError:
        return True


def _folder_records(root: Path) -> list[dict]:
    """Images under `root` with their sidecars. A file or sidecar that is a symbolic link leading
    out of the folder is never read: its record carries `reject` ("outside_source")."""
    records = []
    real_root = root.resolve()
    # every name with an image suffix but a folder: a FIFO or device among them is read as
    # nothing and rejected (`not_a_file`), a dangling link is `not_found`: counted, not skipped
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and not p.is_dir()):
        rel = path.relative_to(root).with_suffix("")
        txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
        escaped = [p.name for p in (path, txt, js) if p.exists() and _outside(p, real_root)]
        record: dict[str, Any] = {"key": _safe_key(str(rel)), "src": str(path), "caption": None, "meta": {}}
        if escaped:
            record["reject"] = ("outside_source", f"{', '.join(escaped)}: a symbolic link out of the source folder")
        else:
            caption, meta, reject = _sidecar_caption(str(js), _sidecar_reader(js), str(txt), _sidecar_reader(txt))
            record.update(caption=caption, meta=_with_folder(meta, rel.parent.as_posix()))
            if reject:
                record["reject"] = reject
        records.append(record)
    return _unique_keys(records)


def _s3_listing(prefix_uri: str) -> list[tuple[str, int, str]]:
    """(key relative to the prefix, size, etag) of every object under an s3:// prefix."""

    bucket, prefix = split_s3(prefix_uri.rstrip("/"))
    prefix = prefix + "/" if prefix else ""
    out = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [(o["Key"][len(prefix) :], o["Size"], o.get("ETag", "")) for o in page.get("Contents", [])]
    return sorted(out)


def _s3_records(uri: str, url_col: str, caption_col: str) -> list[dict]:
    """An S3 prefix laid out like a folder source, or an S3 manifest file."""

    parent, _, name = uri.rstrip("/").rpartition("/")
    if Path(name).suffix.lower() in (".csv", ".jsonl", ".ndjson", ".parquet"):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            try:
                Store(parent).download(name, local)
            except Exception as e:
                raise SourceError(f"data.source: cannot read '{uri}': {e}") from None
            return _manifest_records(local, url_col, caption_col, base=parent, label=uri)
    try:
        Store(uri).check()
    except StorageError as e:
        raise SourceError(f"data.source: {e}") from None
    listing = _s3_listing(uri)
    keys = {k for k, _, _ in listing}
    store = Store(uri)

    images = [k for k in sorted(keys) if Path(k).suffix.lower() in IMAGE_EXTS]

    def record(key: str) -> dict:
        stem = str(Path(key).with_suffix(""))
        js, txt = f"{stem}.json", f"{stem}.txt"
        caption, meta, reject = _sidecar_caption(
            store.uri(js),
            (lambda: fetch_bytes(store.uri(js), max_bytes=SIDECAR_MAX_BYTES)) if js in keys else None,
            store.uri(txt),
            (lambda: fetch_bytes(store.uri(txt), max_bytes=SIDECAR_MAX_BYTES)) if txt in keys else None,
        )
        r: dict[str, Any] = {
            "key": _safe_key(stem),
            "src": store.uri(key),
            "caption": caption,
            "meta": _with_folder(meta, str(Path(key).parent)),
        }
        if reject:
            r["reject"] = reject
        return r

    with ThreadPoolExecutor(16) as pool:
        records = list(pool.map(record, images))
    if not records:
        raise SourceError(f"data.source: S3 prefix '{uri}' holds no images ({sorted(IMAGE_EXTS)})")
    return _unique_keys(records)


def list_records(source: str, url_col: str = "url", caption_col: str = "caption") -> list[dict]:
    try:
        source = canonical(source, ("local", "s3"), "data.source")
    except UnsupportedScheme as e:
        raise SourceError(str(e)) from None
    if source.startswith("demo:"):
        return _folder_records(demo_folder(source.split(":", 1)[1]))
    if source.startswith("s3://"):
        return _s3_records(source, url_col, caption_col)
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"data.source: '{source}' does not exist")
    if path.is_dir():
        records = _folder_records(path)
        if not records:
            raise SourceError(f"data.source: folder '{source}' holds no images ({sorted(IMAGE_EXTS)})")
        return records
    return _manifest_records(path, url_col, caption_col)


MANIFEST_EXTS = (".csv", ".jsonl", ".ndjson", ".parquet")
