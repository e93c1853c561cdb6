"""Read the bytes of many records at once: http(s) URLs, s3:// objects and local files alike.

`fetch_bytes` reads one source, bounded in time (data.http_timeout_s per try of a URL, connecting,
redirects and the whole body included; (http_retries + 1) x that for the record, waits included) and in bytes (data.max_record_bytes), with
retries (exponential backoff with jitter, or the server's Retry-After; a 4xx other than 408/429 is
not retried), and raises `FetchError` with a short `reason` for the manifest's `fetch_errors` counts
(`http_404`, `timeout`, `record_too_large`, `not_a_file`, `unsupported_url`, `not_found`, ...).
Only regular files are read: a FIFO, a device or a socket is `not_a_file`, never waited on.
`ordered_map` runs a function over items on a thread pool with at most `concurrency` calls in
flight, at most `per_host` of them holding a connection to one host, and yields the results in
input order (a slow request holds back what is yielded, never what is fetched: up to
`2 * concurrency` results wait for it). Threads suffice: urllib waits on sockets without the GIL,
and Pillow decodes, resizes and encodes without it.
"""

from __future__ import annotations

import errno
import http.client
import os
import random
import socket
import threading
import time
import urllib.error
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from data.reading.http_get import BodyTooLarge, DeadlinePassed, HTTPStatus, http_get
from infra import local_files
from infra.local_files import NotRegularFile
from infra.storage import s3_client, split_s3
from infra.uris import UnsupportedScheme, file_url_path, locate, short

MAX_RECORD_BYTES = 32 << 20  # data.max_record_bytes's default
__all__ = [
    "FetchError",
    "fetch_bytes",
    "read_local",
    "open_regular",
    "file_url_path",
    "host_of",
    "HostLimiter",
    "ordered_map",
]


class FetchError(OSError):
    """A source that could not be read; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _reason(e: BaseException) -> str:
    if isinstance(e, HTTPStatus):
        return f"http_{e.code}"
    if isinstance(e, http.client.IncompleteRead):
        return "incomplete_body"
    if isinstance(e, UnsupportedScheme):
        return "unsupported_url"
    inner = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(inner, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(inner, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(inner, ConnectionResetError):
        return "connection_reset"
    if isinstance(inner, socket.gaierror):
        return "dns_error"
    if isinstance(inner, FileNotFoundError) or getattr(inner, "errno", None) == errno.ENOENT:
        return "not_found"
    if isinstance(inner, OSError) and type(inner) is not OSError:
        return type(inner).__name__
    return "connection_error" if isinstance(e, urllib.error.URLError) else type(e).__name__


def _retryable(e: BaseException) -> bool:
    if isinstance(e, HTTPStatus):
        return not (400 <= e.code < 500) or e.code in (408, 429)
    if isinstance(e, (BodyTooLarge, DeadlinePassed, UnsupportedScheme, FileNotFoundError)):
        return False
    return isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException))


def open_regular(path: str):
    """infra.local_files.open_regular with its failures as FetchError: a FIFO, device, socket or
    folder is `not_a_file`, a NUL byte in the path `bad_path`, the others their reason."""
    try:
        return local_files.open_regular(path)
    except NotRegularFile as e:
        raise FetchError("not_a_file", f"{short(path, 200)}: {e.kind}, not a regular file") from None
    except ValueError as e:  # a NUL byte in the path
        raise FetchError("bad_path", f"{type(e).__name__}: {e}") from None
    except OSError as e:
        raise FetchError(_reason(e), f"{type(e).__name__}: {e}") from None


def read_local(path: str, max_bytes: int) -> bytes:
    """The bytes of regular file `path`, at most `max_bytes` (else `record_too_large`)."""
    with open_regular(path) as f:
        try:  # the size it has, +1 to see it grow (reading max_bytes would allocate that much each time)
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, max_bytes) + 1)
            if size < len(data) <= max_bytes:  # it grew, or claims no size (/proc)
                data += f.read(max_bytes + 1 - len(data))
        except OSError as e:
            raise FetchError(_reason(e), f"{type(e).__name__}: {e}") from None
    if len(data) > max_bytes:
        raise FetchError(
            "record_too_large", f"{short(path, 200)}: larger than {max_bytes} bytes (data.max_record_bytes)"
        )
    return data


def _read_s3(uri: str, max_bytes: int) -> bytes:
    """botocore retries throttling, 5xx and dropped connections itself."""

    try:
        bucket, key = split_s3(uri)
        obj = s3_client().get_object(Bucket=bucket, Key=key)
        if obj.get("ContentLength", 0) > max_bytes:
            obj["Body"].close()
            raise FetchError(
                "record_too_large", f"{uri}: {obj['ContentLength']} bytes > {max_bytes} (data.max_record_bytes)"
            )
        return obj["Body"].read()
    except FetchError:
        raise
    except Exception as e:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        raise FetchError(
            "not_found" if code in ("NoSuchKey", "404") else "s3_error", f"{uri}: {type(e).__name__}: {e}"
        ) from None


def _read_http(url: str, timeout_s: float, retries: int, max_bytes: int) -> bytes:
    """Each try has `timeout_s` for everything (connecting, redirects, the whole body); tries back
    off exponentially with jitter or wait the server's Retry-After, all of it within the record's
    total deadline of (retries + 1) * timeout_s."""
    start = time.monotonic()
    total = start + timeout_s * (retries + 1)
    for attempt in range(retries + 1):
        deadline = min(total, time.monotonic() + timeout_s)
        try:
            return http_get(url, deadline, max_bytes)
        except Exception as e:  # noqa: BLE001 - every failure of a URL is a reject, not a crash
            timed_out = isinstance(e, DeadlinePassed) or time.monotonic() >= deadline
            if isinstance(e, BodyTooLarge):
                raise FetchError("record_too_large", str(e)) from None
            if timed_out:
                e = TimeoutError(f"timed out: no complete answer within {timeout_s:g} s (data.http_timeout_s)")
            if not _retryable(e) or attempt == retries:
                raise FetchError(_reason(e), f"{short(url, 200)}: {e}") from None
            wait = min(0.2 * 2**attempt, 5.0) * (0.5 + random.random())
            asked = getattr(e, "retry_after", None)
            if asked is not None:
                wait = max(wait, asked)
            if time.monotonic() + wait >= total:
                more = f" (Retry-After {asked:g} s passes the record's deadline)" if asked is not None else ""
                raise FetchError(_reason(e), f"{short(url, 200)}: {e}{more}") from None
            time.sleep(wait)
    raise AssertionError("unreachable")


def fetch_bytes(src: str, timeout_s: float = 10.0, retries: int = 3, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The bytes of a local path, a file:// URL, an s3:// object or an http(s) URL; the scheme
    is read case-insensitively, any other is `unsupported_url`."""
    if not src:
        raise FetchError("empty_url", "empty path/URL")
    try:
        where = locate(src)
    except UnsupportedScheme as e:
        raise FetchError("unsupported_url", str(e)) from None
    if where.kind == "s3":
        return _read_s3(where.uri, max_bytes)
    if where.kind == "local":
        return read_local(where.uri, max_bytes)
    return _read_http(where.uri, timeout_s, retries, max_bytes)


def host_of(src: str) -> str | None:
    """The host a source's read connects to (None: a local file, never limited)."""
    scheme = src[:8].lower()
    if scheme.startswith(("http://", "https://")):
        return urlsplit(src).netloc.lower()
    if scheme.startswith("s3://"):
        return "s3:" + src[5:].split("/", 1)[0]
    return None


class HostLimiter:
    """At most `per_host` concurrent holders per host (0: no limit)."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self._sems: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    def slot(self, src: str):
        host = host_of(src)
        if not self.per_host or host is None:
            return nullcontext()
        with self._lock:
            sem = self._sems.get(host)
            if sem is None:
                sem = self._sems[host] = threading.BoundedSemaphore(self.per_host)
        return sem


def ordered_map(fn: Callable, items: Iterable, concurrency: int) -> Iterator[tuple[object, object]]:
    """(item, fn(item) or the exception it raised) for each item, in input order, with at most
    `concurrency` calls running and `2 * concurrency` results waiting to be yielded."""

    def call(item):
        try:
            return fn(item)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            return e

    window: deque = deque()
    it = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch") as pool:
        for item in it:
            window.append((item, pool.submit(call, item)))
            if len(window) >= 2 * concurrency:
                first, fut = window.popleft()
                yield first, fut.result()
        while window:
            first, fut = window.popleft()
            yield first, fut.result()
