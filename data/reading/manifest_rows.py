"""Rows of a manifest (CSV, JSONL, Parquet) and the record of one row: a line that is not a record
costs that record (`bad_record`), never the manifest; a URL's scheme is read case-insensitively;
captions are kept as read for the shard task to type-check."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from data.reading.fetch import FetchError, open_regular
from data.reading.source_error import SourceError
from data.reading.text_values import csv_list
from infra.uris import UnsupportedScheme, locate, short

MAX_LINE = 64 << 20  # a manifest line (a JSONL record, a CSV cell) longer than this is not read whole


def json_row(line: str | None) -> dict:
    """One JSONL record; a line that is not a JSON object (or is nested too deep, or too long) is a
    row carrying its reject, so that it costs one record, not the manifest."""
    if line is None:
        return {"__reject__": ("bad_record", f"a line longer than {MAX_LINE >> 20} MiB")}
    try:
        obj = json.loads(line)
    except ValueError as e:
        return {"__reject__": ("bad_record", f"not JSON: {e}")}
    except RecursionError:
        return {"__reject__": ("bad_record", "JSON nested too deeply")}
    if not isinstance(obj, dict):
        return {"__reject__": ("bad_record", f"not a JSON object: {short(obj)}")}
    return obj


def _manifest_text(path: Path, label: str = "") -> str:
    try:
        with open_regular(str(path)) as f:
            data = f.read()
    except FetchError as e:
        raise SourceError(f"{label or path}: {e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SourceError(
            f"{label or path}: not UTF-8 text ({e.reason} at byte {e.start}, line {line}): save the manifest as UTF-8"
        ) from None


def _manifest_rows(path: Path, label: str = "") -> list[dict]:
    """Rows of a .csv / .jsonl / .parquet manifest (`label`: its name in errors, default the path)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        csv.field_size_limit(MAX_LINE)
        return list(csv.DictReader(io.StringIO(_manifest_text(path, label), newline="")))
    if suffix in (".jsonl", ".ndjson"):
        return [json_row(line) for line in _manifest_text(path, label).split("\n") if line.strip()]
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{label or path}: not a readable Parquet file: {e}") from None
    raise SourceError(f"{label or path}: unsupported manifest type '{suffix}' (use .csv, .parquet or .jsonl)")


def _manifest_records(
    path: Path, url_col: str, caption_col: str, base: str | None = None, label: str = ""
) -> list[dict]:
    """Records of a manifest file; relative paths resolve against `base` (default: its folder)."""
    label = label or str(path)
    rows = _manifest_rows(path, label)
    first = next((r for r in rows if "__reject__" not in r), None)
    for col, key in ((url_col, "data.url_column"), (caption_col, "data.caption_column")):
        if first is not None and col not in first:
            raise SourceError(f"{label}: no column '{col}' ({key}); columns: {short(sorted(first), 200)}")
    base = base or str(path.parent)
    width = len(str(len(rows)))
    fmt = path.suffix.lower().lstrip(".")
    return [manifest_record(i, row, url_col, caption_col, base, width, fmt) for i, row in enumerate(rows)]


def manifest_record(i: int, row: dict, url_col: str, caption_col: str, base: str, width: int, fmt: str = "") -> dict:
    """The record of row `i` of a manifest: key `i` zero-padded to `width` digits, `src` a URL or a
    path (the scheme read case-insensitively, file:// URLs made local paths, relative paths
    resolved against `base`, another scheme a reject), the caption as read (type-checked by the
    shard task), the other scalar columns and `alt_captions` as metadata."""
    record: dict[str, Any] = {"key": f"{i:0{width}d}", "src": "", "caption": None, "meta": {}}
    if "__reject__" in row:  # a JSONL line that is not a record
        return dict(record, reject=row["__reject__"])
    src = row.get(url_col)
    if src is not None and not isinstance(src, str):
        return dict(record, src=short(src), reject=("bad_url", f"the {url_col} is not text: {short(src)}"))
    src = src or ""
    try:
        where = locate(src) if src else None
    except UnsupportedScheme:  # the read rejects it (`unreadable`, counted as `unsupported_url`)
        where = None
    if where is not None:
        src = where.uri
        if where.kind == "local" and not Path(src).is_absolute():
            src = f"{base.rstrip('/')}/{src}"
    meta = {
        k: v
        for k, v in row.items()
        if k not in (url_col, caption_col) and isinstance(k, str) and isinstance(v, (str, int, float, bool))
    }
    if row.get("alt_captions") is not None:
        meta["alt_captions"] = csv_list(row["alt_captions"]) if fmt == "csv" else row["alt_captions"]
        if meta["alt_captions"] is None:
            del meta["alt_captions"]
    return dict(record, src=src, caption=row.get(caption_col), meta=meta)
