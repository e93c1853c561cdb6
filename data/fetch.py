"""Read the bytes of many records at once: http(s) URLs, s3:// objects and local files alike.

`fetch_bytes` reads one source with a timeout and retries (exponential backoff with jitter; a 4xx
other than 408/429 is not retried) and raises `FetchError` with a short `reason` for the manifest's
`fetch_errors` counts (`http_404`, `timeout`, `connection_refused`, `not_found`, ...).
`ordered_map` runs a function over items on a thread pool with at most `concurrency` calls in
flight, at most `per_host` of them holding a connection to one host, and yields the results in
input order (a slow request holds back what is yielded, never what is fetched: up to
`2 * concurrency` results wait for it). Threads suffice: urllib waits on sockets without the GIL,
and Pillow decodes, resizes and encodes without it.
"""
from __future__ import annotations

import errno
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

USER_AGENT = "pretrain-pipeline/0.1"


class FetchError(OSError):
    """A source that could not be read; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"http_{e.code}"
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
    if isinstance(e, urllib.error.HTTPError):
        return not (400 <= e.code < 500) or e.code in (408, 429)
    return isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError, OSError)) \
        and not isinstance(e, FileNotFoundError)


_local = threading.local()
REDIRECTS = (301, 302, 303, 307, 308)
HOSTS_KEPT = 8          # kept-alive connections per thread (least recently used closed first)
_ssl_context = None


_proxies = None


def _proxied(scheme: str) -> bool:
    """Whether the environment names a proxy for `scheme` (read once per process: it scans the
    whole environment, and this runs for every request)."""
    global _proxies
    if _proxies is None:
        _proxies = urllib.request.getproxies()
    return bool(_proxies.get(scheme))


def _connection(scheme: str, netloc: str, timeout_s: float, fresh: bool):
    """This thread's kept-alive connection to `netloc` (HTTP/1.1 keep-alive: no TCP or TLS
    handshake per image when a host serves many)."""
    import http.client
    global _ssl_context
    from collections import OrderedDict
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = OrderedDict()
    conn = conns.pop((scheme, netloc), None)
    if conn is None or fresh:
        if conn is not None:
            conn.close()
        if scheme == "https":
            if _ssl_context is None:
                import ssl
                _ssl_context = ssl.create_default_context()   # one CA store for all connections
            conn = http.client.HTTPSConnection(netloc, timeout=timeout_s, context=_ssl_context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=timeout_s)
    conns[(scheme, netloc)] = conn
    while len(conns) > HOSTS_KEPT:       # a manifest of a million hosts keeps few sockets open
        conns.popitem(last=False)[1].close()
    conn.timeout = timeout_s
    if conn.sock is not None:
        conn.sock.settimeout(timeout_s)
    return conn


def _http_get(url: str, timeout_s: float) -> bytes:
    """GET `url` on a kept-alive connection, following up to 5 redirects; an HTTP error status is
    raised as urllib's HTTPError. Behind a proxy (http_proxy/https_proxy), urllib does the work."""
    import http.client
    from urllib.parse import urljoin
    for _ in range(6):
        parts = urlsplit(url)
        if _proxied(parts.scheme):
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.read()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")   # urlsplit keeps ;params
        for attempt in (0, 1):   # a kept-alive connection the server has closed: once more, fresh
            conn = _connection(parts.scheme, parts.netloc, timeout_s, fresh=attempt == 1)
            reused = conn.sock is not None
            try:
                conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
                resp = conn.getresponse()
                body = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.BadStatusLine) as e:
                conn.close()
                if not reused or attempt:
                    raise urllib.error.URLError(e) from None
            except Exception:
                conn.close()
                raise
        if resp.status in REDIRECTS and resp.getheader("Location"):
            url = urljoin(url, resp.getheader("Location"))
            continue
        if resp.status >= 400:
            raise urllib.error.HTTPError(url, resp.status, resp.reason, resp.headers, None)
        return body
    raise urllib.error.URLError(f"more than 5 redirects from {url}")


def file_url_path(url: str) -> str:
    """The local path of a `file://` URL (`file:///abs/path`, `file://localhost/abs/path`,
    percent-escapes decoded), as img2dataset's inputs write them."""
    from urllib.parse import unquote
    parsed = urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        raise OSError(f"{url}: a file:// URL on another host ({parsed.netloc}) cannot be read here")
    return unquote(parsed.path)


def fetch_bytes(src: str, timeout_s: float = 10.0, retries: int = 3) -> bytes:
    """The bytes of a local path, a file:// URL, an s3:// object or an http(s) URL."""
    if not src:
        raise FetchError("empty_url", "empty path/URL")
    if src.startswith("s3://"):   # botocore retries throttling, 5xx and dropped connections itself
        from infra.storage import Store
        parent, _, name = src.rpartition("/")
        try:
            return Store(parent).read_bytes(name)
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            raise FetchError("not_found" if code in ("NoSuchKey", "404") else "s3_error",
                             f"{src}: {type(e).__name__}: {e}") from None
    if src.startswith("file://"):
        try:
            src = file_url_path(src)
        except OSError as e:
            raise FetchError("unsupported_url", str(e)) from None
    if not src.startswith(("http://", "https://")):
        try:
            return Path(src).read_bytes()
        except (OSError, ValueError) as e:   # ValueError: a NUL byte in the path
            raise FetchError(_reason(e) if isinstance(e, OSError) else "bad_path", f"{type(e).__name__}: {e}") from None
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            return _http_get(src, timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure of a URL is a reject, not a crash
            last = e
            if not _retryable(e):
                break
        if attempt < retries:
            time.sleep(min(0.2 * 2 ** attempt, 5.0) * (0.5 + random.random()))
    raise FetchError(_reason(last), f"{src}: {last}")


def host_of(src: str) -> str | None:
    """The host a source's read connects to (None: a local file, never limited)."""
    if src.startswith(("http://", "https://")):
        return urlsplit(src).netloc.lower()
    if src.startswith("s3://"):
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
