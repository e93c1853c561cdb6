"""Image-text sources: list records on the driver, read their bytes inside Ray tasks.

A record is a plain dict: {"key", "src" (path or URL), "caption" (str or None), "meta" (dict)}.
- a folder of images with same-stem `.txt` (the caption) or `.json` (`caption`/`text` + metadata,
  optionally `alt_captions`: more captions of the same image, which training can sample)
- a manifest `.csv` / `.parquet` / `.jsonl` with a path-or-URL column and a caption column
  (img2dataset's convention: `url` and `caption`); other columns become metadata
- an S3 prefix laid out like such a folder, or an S3 manifest file (`s3://bucket/pairs.parquet`);
  manifests may list s3:// URLs too
- `demo:emoji`: the Noto emoji rendered with their Unicode names; `demo:animal-mnist`: labelled
  silhouettes without captions (see data/demo.py)
- images in sub-folders (`<class>/<image>`) get the metadata `folder: <class>`
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Callable, Optional

from data.fetch import fetch_bytes, file_url_path

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class SourceError(ValueError):
    pass


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


def _sidecar_caption(json_name: str, read_json: Optional[Callable[[], bytes]], txt_name: str,
                     read_txt: Optional[Callable[[], bytes]]) -> tuple[Optional[str], dict, str]:
    """Caption, metadata and error ("" or why a sidecar cannot be read) of an image from its
    sidecars: the `.json` (`caption` or `text`, scalar fields as metadata, `alt_captions`) first,
    else the `.txt`."""
    caption, meta = None, {}
    try:
        if read_json is not None:
            try:
                obj = json.loads(read_caption_text(read_json(), json_name))
            except ValueError as e:
                if isinstance(e, SourceError):
                    raise
                raise SourceError(f"{json_name}: not valid JSON: {e}") from None
            if isinstance(obj, dict):
                caption = obj.pop("caption", obj.pop("text", None))
                meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
                alts = obj.get("alt_captions")
                if isinstance(alts, list) and all(isinstance(a, str) for a in alts):
                    meta["alt_captions"] = alts
        if caption is None and read_txt is not None:
            caption = read_caption_text(read_txt(), txt_name)
    except (SourceError, OSError) as e:
        return None, meta, str(e)
    return caption, meta, ""


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
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        rel = path.relative_to(root).with_suffix("")
        txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
        escaped = [p.name for p in (path, txt, js) if p.exists() and _outside(p, real_root)]
        record = {"key": _safe_key(str(rel)), "src": str(path), "caption": None, "meta": {}}
        if escaped:
            record["reject"] = ("outside_source", f"{', '.join(escaped)}: a symbolic link out of the source folder")
        else:
            caption, meta, error = _sidecar_caption(
                str(js), js.read_bytes if js.exists() else None, str(txt), txt.read_bytes if txt.exists() else None)
            record.update(caption=caption, meta=_with_folder(meta, rel.parent.as_posix()))
            if error:
                record["reject"] = ("unreadable_caption", error)
        records.append(record)
    return _unique_keys(records)


def _manifest_text(path: Path, label: str = "") -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise SourceError(f"{label or path}: not UTF-8 text ({e.reason} at byte {e.start}, line {line}): "
                          f"save the manifest as UTF-8") from None


def _manifest_rows(path: Path, label: str = "") -> list[dict]:
    """Rows of a .csv / .jsonl / .parquet manifest (`label`: its name in errors, default the path)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(_manifest_text(path, label), newline="")))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(_manifest_text(path, label).splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise SourceError(f"{label or path}: line {i} is not JSON: {e}") from None
        return rows
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{label or path}: not a readable Parquet file: {e}") from None
    raise SourceError(f"{label or path}: unsupported manifest type '{suffix}' (use .csv, .parquet or .jsonl)")


def _manifest_records(path: Path, url_col: str, caption_col: str, base: str | None = None,
                      label: str = "") -> list[dict]:
    """Records of a manifest file; relative paths resolve against `base` (default: its folder)."""
    label = label or str(path)
    rows = _manifest_rows(path, label)
    if rows and url_col not in rows[0]:
        raise SourceError(f"{label}: no column '{url_col}' (data.url_column); columns: {sorted(rows[0])}")
    if rows and caption_col not in rows[0]:
        raise SourceError(f"{label}: no column '{caption_col}' (data.caption_column); "
                          f"columns: {sorted(rows[0])}")
    base = base or str(path.parent)
    width = len(str(len(rows)))
    return [manifest_record(i, row, url_col, caption_col, base, width) for i, row in enumerate(rows)]


def manifest_record(i: int, row: dict, url_col: str, caption_col: str, base: str, width: int) -> dict:
    """The record of row `i` of a manifest: key `i` zero-padded to `width` digits, `src` a URL or a
    path (file:// URLs made local paths, relative paths resolved against `base`), the other scalar
    columns as metadata."""
    src = str(row.get(url_col) or "")
    if src.startswith("file://"):
        try:
            src = file_url_path(src)
        except OSError:
            pass   # the read says why, as an `unreadable` reject
    elif src and not re.match(r"^(https?|s3)://", src) and not Path(src).is_absolute():
        src = f"{base.rstrip('/')}/{src}"
    meta = {k: v for k, v in row.items() if k not in (url_col, caption_col)
            and isinstance(k, str) and isinstance(v, (str, int, float, bool))}
    return {"key": f"{i:0{width}d}", "src": src, "caption": row.get(caption_col), "meta": meta}


def _s3_listing(prefix_uri: str) -> list[tuple[str, int, str]]:
    """(key relative to the prefix, size, etag) of every object under an s3:// prefix."""
    from infra.storage import s3_client, split_s3
    bucket, prefix = split_s3(prefix_uri.rstrip("/"))
    prefix = prefix + "/" if prefix else ""
    out = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [(o["Key"][len(prefix):], o["Size"], o.get("ETag", "")) for o in page.get("Contents", [])]
    return sorted(out)


def _s3_records(uri: str, url_col: str, caption_col: str) -> list[dict]:
    """An S3 prefix laid out like a folder source, or an S3 manifest file."""
    import tempfile

    from infra.storage import Store, StorageError
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
    from concurrent.futures import ThreadPoolExecutor

    images = [k for k in sorted(keys) if Path(k).suffix.lower() in IMAGE_EXTS]

    def record(key: str) -> dict:
        stem = str(Path(key).with_suffix(""))
        js, txt = f"{stem}.json", f"{stem}.txt"
        caption, meta, error = _sidecar_caption(store.uri(js), (lambda: store.read_bytes(js)) if js in keys else None,
                                                store.uri(txt), (lambda: store.read_bytes(txt)) if txt in keys else None)
        r = {"key": _safe_key(stem), "src": store.uri(key), "caption": caption,
             "meta": _with_folder(meta, str(Path(key).parent))}
        if error:
            r["reject"] = ("unreadable_caption", error)
        return r

    with ThreadPoolExecutor(16) as pool:
        records = list(pool.map(record, images))
    if not records:
        raise SourceError(f"data.source: S3 prefix '{uri}' holds no images ({sorted(IMAGE_EXTS)})")
    return _unique_keys(records)


def list_records(source: str, url_col: str = "url", caption_col: str = "caption") -> list[dict]:
    if source.startswith("demo:"):
        from data.demo import demo_folder
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


def read_bytes(src: str, timeout_s: float = 10.0, retries: int = 3) -> bytes:
    """Bytes of a local path, an s3:// object or an http(s) URL (see data.fetch.fetch_bytes)."""
    return fetch_bytes(src, timeout_s, retries)
