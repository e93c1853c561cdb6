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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, cast

from data.reading.input_files import open_input
from data.reading.manifest_rows import MAX_LINE, json_row, manifest_record
from data.reading.sources import MANIFEST_EXTS, SourceError, list_records
from infra.uris import short


@dataclass
class Table:
    """A manifest file and what a task needs to read its rows (small: travels to every task)."""

    uri: str
    fmt: str  # csv | jsonl | parquet
    columns: tuple  # the columns read: (url, caption) of an image manifest, (text,) of a corpus
    base: str  # relative paths in the manifest resolve against this
    width: int  # digits of the sample keys (the row index)
    header: Optional[list] = None  # csv: the column names


@dataclass
class Plan:
    """The shard tasks: `ranges[i]` = (first row, end row, first byte, end byte) of task i over
    `table`, or `listed[i]` = the records of task i of a listed source."""

    source: str
    total: int  # input records
    table: Optional[Table] = None
    ranges: list = field(default_factory=list)
    listed: list = field(default_factory=list)

    @property
    def tasks(self) -> int:
        return len(self.ranges) if self.table else len(self.listed)

    def rows_of(self, i: int) -> int:
        return self.ranges[i][1] - self.ranges[i][0] if self.table else len(self.listed[i])


csv.field_size_limit(MAX_LINE)  # not the csv module's 128 KiB: one long caption is one record's reject


def _lines(f, end: int = 1 << 62) -> Iterator[bytes | None]:
    """The lines of binary file `f` up to byte `end`; a line longer than MAX_LINE is skipped
    without being held and given as None."""
    pos = f.tell()
    while pos < end:
        raw = f.readline(min(MAX_LINE + 1, end - pos))
        if not raw:
            return
        pos += len(raw)
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while pos < end and not raw.endswith(b"\n"):
                raw = f.readline(min(1 << 20, end - pos))
                if not raw:
                    break
                pos += len(raw)
            yield None
            continue
        yield raw


def _decoded_lines(f, label: str, pos: list, fmt: str) -> Iterator[str | None]:
    """The lines of binary file `f` as text (None: a line too long to read); `pos[0]`: bytes
    consumed so far. Not UTF-8 is a SourceError naming the file, the byte and the line."""
    for lineno, raw in enumerate(_lines(f), 1):
        if raw is None:
            if fmt == "csv":
                raise SourceError(f"{label}: line {lineno} is longer than {MAX_LINE >> 20} MiB")
            pos[0] = f.tell()
            yield None
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(
                f"{label}: not UTF-8 text ({e.reason} at byte {pos[0] + e.start}, line {lineno}): "
                f"save the manifest as UTF-8"
            ) from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        pos[0] += len(raw)
        yield text


def _csv_row(reader, label: str):
    try:
        return next(reader, None)
    except csv.Error as e:
        raise SourceError(f"{label}: not a readable CSV file: {e} (lines end in \\n or \\r\\n)") from None


def _check_columns(label: str, columns, wanted: list[tuple[str, str]]) -> None:
    """`wanted`: (column, the config key naming it)."""
    for col, key in wanted:
        if col not in columns:
            raise SourceError(
                f"{label}: no column '{col}' ({key}); columns: {short(sorted(c for c in columns if c), 200)}"
            )


def _scan_text(f, label: str, fmt: str, wanted: list, every: int, limit: int, every_bytes: int = 0):
    """(header, rows in the file, (row, byte offset) of each task's first row up to `limit` rows,
    then (rows, end of the last of those rows)). A task starts every `every` rows, or (when
    `every_bytes`) at the first row after `every_bytes` bytes of the previous task's."""
    pos = [0]
    lines = _decoded_lines(f, label, pos, fmt)
    header = None
    if fmt == "csv":
        reader = csv.reader(cast("Iterator[str]", lines))  # csv: an overlong line raises, never a None
        header = _csv_row(reader, label) or []
        rows: Iterator = reader
    else:
        rows = lines
    count, end, checked = 0, None, False
    starts: list[tuple[int, int]] = []
    while True:
        start = pos[0]
        row = _csv_row(rows, label) if fmt == "csv" else next(rows, None)
        if row is None:
            break
        if fmt == "jsonl":
            if row is not None and not row.strip():
                continue
            if not checked:  # the columns of the first record that is a JSON object
                obj = json_row(row)
                if "__reject__" not in obj:
                    _check_columns(label, obj, wanted)
                    checked = True
        elif not row:
            continue  # a blank line: csv.DictReader skips it too
        elif count == 0:
            _check_columns(label, header, wanted)
        if count < limit:
            if not starts or (start - starts[-1][1] >= every_bytes if every_bytes else count % every == 0):
                starts.append((count, start))
            end = pos[0]
        count += 1
    return header, count, starts + ([(min(count, limit), end)] if starts else [])


def plan_table(
    uri: str,
    label: str,
    wanted: list[tuple[str, str]],
    every: int,
    limit: int,
    every_bytes: int = 0,
    key: str = "data.source",
) -> Plan:
    """The tasks over one CSV, JSONL or Parquet file: `every` rows each, or about `every_bytes` bytes
    of the first wanted column each (for text: characters per shard)."""
    suffix = Path(uri).suffix.lower()
    fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}[suffix]
    base = uri.rpartition("/")[0] if uri.startswith("s3://") else str(Path(uri).parent)
    try:
        f = open_input(uri)
    except Exception as e:
        raise SourceError(f"{key}: cannot read '{uri}': {e}") from None
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
                _check_columns(label, meta.schema.names, wanted)
            if every_bytes and count:  # rows per task from the column's size in the metadata
                col = meta.schema.names.index(wanted[0][0])
                size = sum(meta.row_group(g).column(col).total_uncompressed_size for g in range(meta.num_row_groups))
                every = max(1, round(every_bytes * count / max(1, size)))
            n = min(count, limit)
            bounds = [(a, min(a + every, n), 0, 0) for a in range(0, n, every)]
        else:
            header, count, starts = _scan_text(f, label, fmt, wanted, every, limit or 1 << 62, every_bytes)
            n = min(count, limit)
            bounds = [(r0, r1, b0, b1) for (r0, b0), (r1, b1) in zip(starts, starts[1:])]
    table = Table(uri, fmt, tuple(c for c, _ in wanted), base, len(str(count)), header)
    return Plan(uri, n, table=table, ranges=bounds)


def plan_inputs(
    source: str, url_col: str, caption_col: str, shard_samples: int, limit: int = 0, lister=list_records
) -> Plan:
    """The shard tasks of `source` (the first `limit` records when limit > 0); `lister` lists a
    folder, S3 prefix or demo set."""
    limit = limit or 1 << 62
    wanted = [(url_col, "data.url_column"), (caption_col, "data.caption_column")]
    is_table = Path(source.rstrip("/")).suffix.lower() in MANIFEST_EXTS
    if is_table and not source.startswith(("s3://", "demo:")):
        path = Path(source).expanduser()
        if not path.exists():
            raise SourceError(f"data.source: '{source}' does not exist")
        if path.is_file():
            return plan_table(str(path), str(path), wanted, shard_samples, limit)
    elif is_table and source.startswith("s3://"):
        return plan_table(source, source, wanted, shard_samples, limit)
    records = lister(source, url_col, caption_col)[:limit]
    for order, r in enumerate(records):
        r["order"] = order
    records.sort(key=lambda r: hashlib.sha1(r["key"].encode()).digest())
    return Plan(
        source, len(records), listed=[records[i : i + shard_samples] for i in range(0, len(records), shard_samples)]
    )


def read_rows(table: Table, first: int, end: int, byte_start: int, byte_end: int) -> list[dict]:
    """Rows [first, end) of `table`, as read (a dict of columns each)."""
    with open_input(table.uri, buffer=1 << 20) as f:
        if table.fmt == "parquet":
            rows = _parquet_rows(f, first, end, table.uri)
        else:
            f.seek(byte_start)
            if byte_start == 0 and f.read(3) != "\ufeff".encode():  # a BOM at byte 0 is dropped
                f.seek(0)
            if table.fmt == "csv":
                text = f.read(byte_end - f.tell()).decode("utf-8")
                rows = list(csv.DictReader(io.StringIO(text, newline=""), fieldnames=table.header))
            else:  # lines end at \n only, as the planner counted them (not at U+2028 and the like)
                rows = []
                for line in _lines(f, byte_end):
                    text = None if line is None else line.decode("utf-8")
                    if text is None or text.strip():
                        rows.append(json_row(text))
    if len(rows) != end - first:
        raise SourceError(
            f"{table.uri}: rows {first}-{end} read back as {len(rows)} rows: the manifest changed while sharding"
        )
    return rows


def read_range(table: Table, first: int, end: int, byte_start: int, byte_end: int) -> list[dict]:
    """The image records of rows [first, end) of `table` (each with `order`: its row index)."""
    records = []
    url_col, caption_col = table.columns
    for i, row in enumerate(read_rows(table, first, end, byte_start, byte_end), first):
        r = manifest_record(i, row, url_col, caption_col, table.base, table.width, table.fmt)
        r["order"] = i
        records.append(r)
    return records


_row_group_cache: dict = {}


def _row_group(pf, uri: str, g: int):
    """Row group `g` of a Parquet file, decoded: the last one stays cached in the worker process, so
    the tasks that split one large row group (pyarrow writes up to a million rows in one) read and
    decode it once per worker, not once each."""
    meta = pf.metadata
    key = (uri, g, meta.num_rows, meta.serialized_size, meta.row_group(g).total_byte_size)  # a rewritten file misses
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
