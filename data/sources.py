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
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class SourceError(ValueError):
    pass


def _safe_key(text: str) -> str:
    # WebDataset splits keys at the first dot of a member name: keep keys free of dots and slashes
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or hashlib.sha1(text.encode()).hexdigest()[:12]


def _sidecar_caption(json_name: str, read_json: Optional[Callable[[], str]],
                     read_txt: Optional[Callable[[], str]]) -> tuple[Optional[str], dict]:
    """Caption and metadata of an image from its sidecars: the `.json` (`caption` or `text`,
    scalar fields as metadata, `alt_captions`) first, else the `.txt`."""
    caption, meta = None, {}
    if read_json is not None:
        try:
            obj = json.loads(read_json())
        except ValueError as e:  # includes UnicodeDecodeError
            obj = {"_caption_error": f"{json_name}: {e}"}
        if isinstance(obj, dict):
            caption = obj.pop("caption", obj.pop("text", None))
            meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
            alts = obj.get("alt_captions")
            if isinstance(alts, list) and all(isinstance(a, str) for a in alts):
                meta["alt_captions"] = alts
    if caption is None and read_txt is not None:
        caption = read_txt()
    return caption, meta


def _with_folder(meta: dict, folder: str) -> dict:
    """ImageFolder layout: an image under `<class>/` gets the metadata `folder: <class>` (a label
    for fine-tuning and probes) unless its sidecar says otherwise."""
    if folder not in (".", ""):
        meta.setdefault("folder", folder)
    return meta


def _folder_records(root: Path) -> list[dict]:
    records = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        rel = path.relative_to(root).with_suffix("")
        txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
        caption, meta = _sidecar_caption(
            js.name, (lambda: js.read_text(encoding="utf-8")) if js.exists() else None,
            (lambda: txt.read_text(encoding="utf-8", errors="replace")) if txt.exists() else None)
        records.append({"key": _safe_key(str(rel)), "src": str(path), "caption": caption,
                        "meta": _with_folder(meta, rel.parent.as_posix())})
    return records


def _manifest_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise SourceError(f"{path}: line {i} is not JSON: {e}") from None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    raise SourceError(f"{path}: unsupported manifest type '{suffix}' (use .csv, .parquet or .jsonl)")


def _manifest_records(path: Path, url_col: str, caption_col: str, base: str | None = None) -> list[dict]:
    """Records of a manifest file; relative paths resolve against `base` (default: its folder)."""
    rows = _manifest_rows(path)
    if rows and url_col not in rows[0]:
        raise SourceError(f"{path}: no column '{url_col}' (data.url_column); columns: {sorted(rows[0])}")
    if rows and caption_col not in rows[0]:
        raise SourceError(f"{path}: no column '{caption_col}' (data.caption_column); "
                          f"columns: {sorted(rows[0])}")
    records = []
    base = base or str(path.parent)
    width = len(str(len(rows)))
    for i, row in enumerate(rows):
        src = str(row.get(url_col) or "")
        if src and not re.match(r"^(https?|s3)://", src) and not Path(src).is_absolute():
            src = f"{base.rstrip('/')}/{src}"
        meta = {k: v for k, v in row.items() if k not in (url_col, caption_col)
                and isinstance(v, (str, int, float, bool))}
        records.append({"key": f"{i:0{width}d}", "src": src, "caption": row.get(caption_col), "meta": meta})
    return records


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
            return _manifest_records(local, url_col, caption_col, base=parent)
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
        caption, meta = _sidecar_caption(js, (lambda: store.read_text(js)) if js in keys else None,
                                         (lambda: store.read_text(txt)) if txt in keys else None)
        return {"key": _safe_key(stem), "src": store.uri(key), "caption": caption,
                "meta": _with_folder(meta, str(Path(key).parent))}

    with ThreadPoolExecutor(16) as pool:
        records = list(pool.map(record, images))
    if not records:
        raise SourceError(f"data.source: S3 prefix '{uri}' holds no images ({sorted(IMAGE_EXTS)})")
    return records


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


def source_fingerprint(source: str) -> str:
    """Changes when the source's content may have changed (file names, sizes, modification times;
    a demo set's version), so the workflow reshards."""
    if source.startswith("demo:"):
        from data.demo import DEMOS
        return f"{source}:{DEMOS.get(source[5:], ('?',))[0]}"
    if source.startswith("s3://"):
        if Path(source).suffix.lower() in (".csv", ".jsonl", ".ndjson", ".parquet"):
            from infra.storage import s3_client, split_s3
            bucket, key = split_s3(source)
            listing = s3_client().head_object(Bucket=bucket, Key=key).get("ETag", "")
        else:
            listing = _s3_listing(source)
        return hashlib.sha256(repr((source, listing)).encode()).hexdigest()[:16]
    path = Path(source).expanduser()
    if not path.exists():
        return source
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def read_bytes(src: str, timeout_s: float = 10.0, retries: int = 3) -> bytes:
    """Bytes of a local path or an http(s) URL; URL errors retry with backoff, 4xx do not."""
    if not src:
        raise OSError("empty path/URL")
    if src.startswith("s3://"):  # botocore retries throttling, 5xx and dropped connections
        from infra.storage import Store
        parent, _, name = src.rpartition("/")
        return Store(parent).read_bytes(name)
    if src.startswith(("http://", "https://")):
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                req = urllib.request.Request(src, headers={"User-Agent": "pretrain-pipeline/0.1"})
                with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                    return resp.read()
            except urllib.error.HTTPError as e:
                last = e
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = e
            if attempt < retries:
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        raise OSError(f"{src}: {last}")
    return Path(src).read_bytes()
