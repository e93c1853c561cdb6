"""Where a name points: parsed once, the scheme case-insensitively, before anything is read or written.

`locate(text)` gives a `Location`: `kind` is `local` (a path: plain, or a `file://` URL made one),
`s3`, `http` or `https`, and `uri` the canonical form (`S3://b/k` -> `s3://b/k`, `HTTP://h/x` ->
`http://h/x`, `file:///a/b` -> `/a/b`). Any other `scheme://` (gs://, hdfs://, ftp://, ...) is an
`UnsupportedScheme` naming the scheme; an input never becomes a local folder named `S3:`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE = ("s3", "http", "https")


class UnsupportedScheme(ValueError):
    """A name whose scheme this tool cannot read or write; `scheme` is it, lower-cased."""

    def __init__(self, scheme: str, message: str):
        super().__init__(message)
        self.scheme = scheme


@dataclass(frozen=True)
class Location:
    kind: str  # local | s3 | http | https
    uri: str  # the canonical form: a local path, or scheme://rest with the scheme lower-cased


def short(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: an error quotes a value's prefix, never all of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def file_url_path(url: str) -> str:
    """The local path of a `file://` URL (`file:///abs/path`, `file://localhost/abs/path`,
    percent-escapes decoded), as img2dataset's inputs write them."""
    parsed = urlsplit(url)
    if parsed.netloc.lower() not in ("", "localhost"):
        raise UnsupportedScheme(
            "file", f"{short(url)}: a file:// URL on another host ({parsed.netloc}) cannot be read here"
        )
    return unquote(parsed.path)


def locate(text: str, allowed: tuple[str, ...] = ("local",) + REMOTE, what: str = "") -> Location:
    """The Location of `text`; a scheme outside `allowed` (or unknown) is UnsupportedScheme."""
    m = _SCHEME.match(text)
    scheme = m.group(1).lower() if m else ""
    if not m:
        kind, uri = "local", text
    elif scheme == "file":
        kind, uri = "local", file_url_path(text)
    elif scheme in REMOTE:
        kind, uri = scheme, scheme + text[m.end(1) :]
    else:
        kind, uri = scheme, text
    if kind not in allowed:
        names = ", ".join("a local path (or file://)" if k == "local" else f"{k}://" for k in allowed)
        raise UnsupportedScheme(
            scheme, f"{what + ': ' if what else ''}{short(text)}: unsupported scheme '{scheme}://' (supported: {names})"
        )
    return Location(kind, uri)


def canonical(text: str, allowed: tuple[str, ...] = ("local",) + REMOTE, what: str = "") -> str:
    return locate(text, allowed, what).uri
