"""Plan sharding as ranges of input rows; read one range inside a Ray task.

The driver never holds a manifest's rows. Shard task i reads rows [i*n, (i+1)*n) (img2dataset's
convention; n = data.shard_samples):
- Parquet (local or s3://): the row count comes from the file's metadata; a task reads the row
  groups holding its rows (S3 through ranged GETs: the footer and those row groups only).
- CSV and JSONL (local or s3://): one streaming pass in the driver checks the text is UTF-8 (and
  JSON), checks the columns, counts the rows and keeps the byte offset of every task's first row;
  a task reads its byte range only. Memory: one offset per task.
- Folders, S3 prefixes and demo sets are listed (their names are the input); the listing is put in
  a fixed pseudo-random order by key hash (a class-sorted folder does not give one-class shards)
  and cut into tasks, each record keeping its listing position (`order`) for "first wins" dedup.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from data.sources import MANIFEST_EXTS, SourceError, list_records, manifest_record


class _S3RangeFile(io.RawIOBase):
    """A seekable read-only file over one S3 object: each read is a ranged GET."""

    def __init__(self, uri: str):
        from infra.storage import s3_client, split_s3
        self.bucket, self.key = split_s3(uri)
        self.client = s3_client()
        self.size = self.client.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"]
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data = self.client.get_object(Bucket=self.bucket, Key=self.key,
                                      Range=f"bytes={self.pos}-{self.pos + n - 1}")["Body"].read()
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


def open_input(uri: str, buffer: int = 8 << 20):
    """A seekable binary file: a local path, or an S3 object read in `buffer`-sized ranges."""
    if uri.startswith("s3://"):
        return io.BufferedReader(_S3RangeFile(uri), buffer_size=buffer)
    return open(uri, "rb")


@dataclass
class Table:
    """A manifest file and what a task needs to read its rows (small: travels to every task)."""
    uri: str
    fmt: str                          # csv | jsonl | parquet
    url_col: str
    caption_col: str
    base: str                         # relative paths in the manifest resolve against this
    width: int                        # digits of the sample keys (the row index)
    header: Optional[list] = None     # csv: the column names


@dataclass
class Plan:
    """The shard tasks: `ranges[i]` = (first row, end row, first byte, end byte) of task i over
    `table`, or `listed[i]` = the records of task i of a listed source."""
    source: str
    total: int                                    # input records
    table: Optional[Table] = None
    ranges: list = field(default_factory=list)
    listed: list = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return len(self.ranges) if self.table else len(self.listed)

    def rows_of(self, i: int) -> int:
        return self.ranges[i][1] - self.ranges[i][0] if self.table else len(self.listed[i])


def _decoded_lines(f, label: str, pos: list) -> Iterator[str]:
    """The lines of binary file `f` as text; `pos[0]`: bytes consumed so far. Not UTF-8 is a
    SourceError naming the file, the byte and the line."""
    for lineno, raw in enumerate(f, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{label}: not UTF-8 text ({e.reason} at byte {pos[0] + e.start}, line {lineno}): "
                              f"save the manifest as UTF-8") from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        pos[0] += len(raw)
        yield text


def _csv_row(reader, label: str):
    try:
        return next(reader, None)
    except csv.Error as e:
        raise SourceError(f"{label}: not a readable CSV file: {e} (lines end in \\n or \\r\\n)") from None


def _check_columns(label: str, columns, url_col: str, caption_col: str) -> None:
    for col, key in ((url_col, "data.url_column"), (caption_col, "data.caption_column")):
        if col not in columns:
            raise SourceError(f"{label}: no column '{col}' ({key}); columns: {sorted(c for c in columns if c)}")


def _scan_text(f, label: str, fmt: str, url_col: str, caption_col: str, every: int, limit: int):
    """(header, rows in the file, byte offsets of every `every`-th row's start up to `limit` rows
    and the end of the last of those rows)."""
    pos = [0]
    lines = _decoded_lines(f, label, pos)
    header = None
    if fmt == "csv":
        reader = csv.reader(lines)
        header = _csv_row(reader, label) or []
        rows: Iterator = reader
    else:
        rows = lines
    count, offsets, end = 0, [], None
    while True:
        start = pos[0]
        row = _csv_row(rows, label) if fmt == "csv" else next(rows, None)
        if row is None:
            break
        if fmt == "jsonl":
            if not row.strip():
                continue
            try:
                obj = json.loads(row)
            except ValueError as e:
                raise SourceError(f"{label}: line {count + 1} is not JSON: {e}") from None
            if not isinstance(obj, dict):
                raise SourceError(f"{label}: line {count + 1} is not a JSON object")
            if count == 0:
                _check_columns(label, obj, url_col, caption_col)
        elif not row:
            continue                        # a blank line: csv.DictReader skips it too
        elif count == 0:
            _check_columns(label, header, url_col, caption_col)
        if count < limit:
            if count % every == 0:
                offsets.append(start)
            end = pos[0]
        count += 1
    return header, count, offsets + ([end] if offsets else [])


def _plan_table(uri: str, label: str, url_col: str, caption_col: str, every: int, limit: int) -> Plan:
    suffix = Path(uri).suffix.lower()
    fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}[suffix]
    base = uri.rpartition("/")[0] if uri.startswith("s3://") else str(Path(uri).parent)
    try:
        f = open_input(uri)
    except Exception as e:
        raise SourceError(f"data.source: cannot read '{uri}': {e}") from None
    with f:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            try:
                meta = pq.ParquetFile(f).metadata
            except (pa.ArrowException, OSError) as e:
                raise SourceError(f"{label}: not a readable Parquet file: {e}") from None
            count, header = meta.num_rows, None
            if count:
                _check_columns(label, meta.schema.names, url_col, caption_col)
            n = min(count, limit)
            bounds = [(a, min(a + every, n), 0, 0) for a in range(0, n, every)]
        else:
            header, count, offsets = _scan_text(f, label, fmt, url_col, caption_col, every, limit or 1 << 62)
            n = min(count, limit)
            bounds = [(k * every, min((k + 1) * every, n), offsets[k], offsets[k + 1])
                      for k in range(len(offsets) - 1)]
    table = Table(uri, fmt, url_col, caption_col, base, len(str(count)), header)
    return Plan(uri, n, table=table, ranges=bounds)


def plan_inputs(source: str, url_col: str, caption_col: str, shard_samples: int, limit: int = 0,
                lister=list_records) -> Plan:
    """The shard tasks of `source` (the first `limit` records when limit > 0); `lister` lists a
    folder, S3 prefix or demo set."""
    limit = limit or 1 << 62
    is_table = Path(source.rstrip("/")).suffix.lower() in MANIFEST_EXTS
    if is_table and not source.startswith(("s3://", "demo:")):
        path = Path(source).expanduser()
        if not path.exists():
            raise SourceError(f"data.source: '{source}' does not exist")
        if path.is_file():
            return _plan_table(str(path), str(path), url_col, caption_col, shard_samples, limit)
    elif is_table and source.startswith("s3://"):
        return _plan_table(source, source, url_col, caption_col, shard_samples, limit)
    records = lister(source, url_col, caption_col)[:limit]
    for order, r in enumerate(records):
        r["order"] = order
    records.sort(key=lambda r: hashlib.sha1(r["key"].encode()).digest())
    return Plan(source, len(records),
                listed=[records[i:i + shard_samples] for i in range(0, len(records), shard_samples)])


def read_range(table: Table, first: int, end: int, byte_start: int, byte_end: int) -> list[dict]:
    """The records of rows [first, end) of `table` (each with `order`: its row index)."""
    with open_input(table.uri, buffer=1 << 20) as f:
        if table.fmt == "parquet":
            rows = _parquet_rows(f, first, end, table.uri)
        else:
            f.seek(byte_start)
            text = f.read(byte_end - byte_start).decode("utf-8")
            if byte_start == 0 and text.startswith("\ufeff"):
                text = text[1:]
            if table.fmt == "csv":
                rows = list(csv.DictReader(io.StringIO(text, newline=""), fieldnames=table.header))
            else:   # lines end at \n only, as the planner counted them (not at U+2028 and the like)
                rows = [json.loads(line) for line in text.split("\n") if line.strip()]
    if len(rows) != end - first:
        raise SourceError(f"{table.uri}: rows {first}-{end} read back as {len(rows)} rows: "
                          f"the manifest changed while sharding")
    records = []
    for i, row in enumerate(rows, first):
        r = manifest_record(i, row, table.url_col, table.caption_col, table.base, table.width)
        r["order"] = i
        records.append(r)
    return records


_row_group_cache: dict = {}


def _row_group(pf, uri: str, g: int):
    """Row group `g` of a Parquet file, decoded: the last one stays cached in the worker process, so
    the tasks that split one large row group (pyarrow writes up to a million rows in one) read and
    decode it once per worker, not once each."""
    meta = pf.metadata
    key = (uri, g, meta.num_rows, meta.serialized_size, meta.row_group(g).total_byte_size)   # a rewritten file misses
    if key not in _row_group_cache:
        _row_group_cache.clear()
        _row_group_cache[key] = pf.read_row_group(g)
    return _row_group_cache[key]


def _parquet_rows(f, first: int, end: int, uri: str = "") -> list[dict]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(f)
    rows, start = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = max(first, start), min(end, start + n)
        if lo < hi:
            rows += _row_group(pf, uri, g).slice(lo - start, hi - lo).to_pylist()
        start += n
        if start >= end:
            break
    return rows
