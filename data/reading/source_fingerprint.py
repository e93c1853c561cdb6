"""A short hash of what a source holds, so a workflow reshards only when its source changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from data.reading.demo import DEMOS
from data.reading.sources import MANIFEST_EXTS, SourceError, _s3_listing
from infra.storage import s3_client, s3_error, split_s3


def _s3_fingerprint(source: str, key_name: str) -> str:
    """Of an S3 manifest (its ETag) or prefix (its listing); missing credentials, a missing bucket
    or object, or refused access are SourceErrors naming `key_name`, before any work."""

    try:
        if Path(source).suffix.lower() in MANIFEST_EXTS:
            bucket, key = split_s3(source)
            listing = s3_client().head_object(Bucket=bucket, Key=key).get("ETag", "")
        else:
            listing = _s3_listing(source)
    except Exception as e:
        clear = s3_error(source, e)
        if clear is None:
            raise
        raise SourceError(f"{key_name}: {clear}") from None
    return hashlib.sha256(repr((source, listing)).encode()).hexdigest()[:16]


def source_fingerprint(source: str, key_name: str = "data.source") -> str:
    """Changes when the source's content may have changed (file names, sizes, modification times;
    a demo set's version), so the workflow reshards. A source that does not exist or cannot be
    reached is a SourceError naming `key_name`: called when the workflow is built, before Ray starts."""
    if source.startswith("demo:"):
        if source[5:] not in DEMOS:
            raise SourceError(
                f"{key_name}: unknown demo set '{source}' (available: {', '.join('demo:' + d for d in DEMOS)})"
            )
        return f"{source}:{DEMOS[source[5:]][0]}"
    if source.startswith("s3://"):
        return _s3_fingerprint(source, key_name)
    if "://" in source:
        raise SourceError(
            f"{key_name}: '{source}': a source is a local path, an s3:// URI or demo:<name> "
            f"(http(s) URLs go inside a manifest)"
        )
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{key_name}: '{source}' does not exist")
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
