"""One HTTP(S) GET with a deadline and a byte limit, on kept-alive connections.

- The deadline covers everything of one try: connecting, every redirect and the whole body (the
  caller, data.reading.fetch, gives each try one and the record a total). A server that drips
  one byte a second is cut at the deadline by one watchdog thread per process, which shuts the
  socket down (a socket timeout alone only bounds the gap between two bytes).
- At most `max_bytes` are read: a larger Content-Length is refused before the body, a body without
  one is cut as soon as it passes the limit.
- Redirects may lead to http(s) only (5 at most).
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from email.utils import parsedate_to_datetime
from typing import Optional
from urllib.parse import urljoin, urlsplit

from infra.uris import UnsupportedScheme, locate, short

USER_AGENT = "pretrain-pipeline/0.1"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
HOSTS_KEPT = 8  # kept-alive connections per thread (least recently used closed first)
CHUNK = 256 << 10


class BodyTooLarge(Exception):
    pass


class HTTPStatus(Exception):
    """An answer with an error status; `retry_after`: the seconds its Retry-After asks for, or None."""

    def __init__(self, url: str, code: int, reason: str, retry_after: float | None):
        super().__init__(f"{short(url, 200)}: HTTP {code} {reason}")
        self.code, self.retry_after = code, retry_after


class DeadlinePassed(Exception):
    pass


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Watchdog:
    """Shuts down the socket of a request whose deadline passes (one thread for the process)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: Optional[threading.Thread] = None

    def watch(self, deadline: float, conn) -> list:
        token = [conn]  # emptied by the owner when the request is over
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadline", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (deadline, next(self._ids), token))
            self._cond.notify()
        return token

    def _run(self):
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, token = heapq.heappop(self._heap)
            try:  # the owner empties the token once its request is over
                sock = token[0].sock
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
            except (IndexError, AttributeError, OSError):
                pass


_watchdog = _Watchdog()
_local = threading.local()
_ssl_context = None
_proxies = None


def _proxied(scheme: str) -> bool:
    """Whether the environment names a proxy for `scheme` (read once per process)."""
    global _proxies
    if _proxies is None:
        _proxies = urllib.request.getproxies()
    return bool(_proxies.get(scheme))


def _connection(scheme: str, netloc: str, timeout_s: float, fresh: bool):
    """This thread's kept-alive connection to `netloc` (no TCP or TLS handshake per image)."""
    global _ssl_context
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = OrderedDict()
    conn = conns.pop((scheme, netloc), None)
    if conn is None or fresh:
        if conn is not None:
            conn.close()
        if scheme == "https":
            if _ssl_context is None:
                _ssl_context = ssl.create_default_context()  # one CA store for all connections
            conn = http.client.HTTPSConnection(netloc, timeout=timeout_s, context=_ssl_context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=timeout_s)
    conns[(scheme, netloc)] = conn
    while len(conns) > HOSTS_KEPT:  # a manifest of a million hosts keeps few sockets open
        conns.popitem(last=False)[1].close()
    conn.timeout = timeout_s
    if conn.sock is not None:
        conn.sock.settimeout(timeout_s)
    return conn


def _read_body(resp, deadline: float, max_bytes: int, url: str) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise BodyTooLarge(
            f"{short(url, 200)}: Content-Length {int(length)} > {max_bytes} bytes (data.max_record_bytes)"
        )
    parts, total = [], 0
    while True:
        chunk = resp.read(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise BodyTooLarge(f"{short(url, 200)}: body longer than {max_bytes} bytes (data.max_record_bytes)")
        parts.append(chunk)
        if time.monotonic() > deadline:
            raise DeadlinePassed()
    if time.monotonic() >= deadline:  # the watchdog may have cut what looks like a whole answer
        raise DeadlinePassed()
    if resp.length:  # the server closed before the Content-Length it announced
        raise http.client.IncompleteRead(b"", resp.length)
    return b"".join(parts)


def _proxy_get(url: str, deadline: float, max_bytes: int):
    """(status, Location, body, Retry-After, reason), as _direct_get. Behind http_proxy/https_proxy
    urllib does the work; its redirects are refused here (the caller checks and follows each hop)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    try:
        resp = opener.open(req, timeout=max(0.01, deadline - time.monotonic()))
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location"), b"", e.headers.get("Retry-After"), e.reason
    with resp:
        return resp.status, resp.headers.get("Location"), _read_body(resp, deadline, max_bytes, url), None, ""


def _direct_get(url: str, deadline: float, max_bytes: int):
    """(status, Location, body, Retry-After, reason) of one GET on this thread's kept-alive connection."""
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # urlsplit keeps ;params
    for attempt in (0, 1):  # a kept-alive connection the server has closed: once more, fresh
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed()
        conn = _connection(parts.scheme, parts.netloc, remaining, fresh=attempt == 1)
        reused = conn.sock is not None
        token = _watchdog.watch(deadline, conn)
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if time.monotonic() >= deadline:
                raise DeadlinePassed()
            if resp.status >= 300:  # no body wanted: the connection is not reused
                answer = (resp.status, resp.getheader("Location"), b"", resp.getheader("Retry-After"), resp.reason)
                conn.close()
                return answer
            return resp.status, None, _read_body(resp, deadline, max_bytes, url), None, ""
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.BadStatusLine) as e:
            conn.close()
            if time.monotonic() >= deadline:
                raise DeadlinePassed() from None
            if not reused or attempt:
                raise urllib.error.URLError(e) from None
        except BaseException:
            conn.close()
            if time.monotonic() >= deadline:
                raise DeadlinePassed() from None
            raise
        finally:
            token.clear()
    raise AssertionError("unreachable")


def http_get(url: str, deadline: float, max_bytes: int) -> bytes:
    """The body of `url` (following up to MAX_REDIRECTS redirects to http(s) URLs); raises
    HTTPStatus, BodyTooLarge, DeadlinePassed, UnsupportedScheme or what the socket raised."""
    for _ in range(MAX_REDIRECTS + 1):
        scheme = urlsplit(url).scheme.lower()
        get = _proxy_get if _proxied(scheme) else _direct_get
        status, location, body, wait, reason = get(url, deadline, max_bytes)
        if status in REDIRECTS and location:
            target = urljoin(url, location.strip())
            url = locate(target, ("http", "https"), f"redirect from {short(url, 200)}").uri
            continue
        if status >= 400 or status in REDIRECTS:
            raise HTTPStatus(url, status, reason or "", retry_after(wait))
        return body
    raise urllib.error.URLError(f"more than {MAX_REDIRECTS} redirects from {short(url, 200)}")


__all__ = ["http_get", "HTTPStatus", "BodyTooLarge", "DeadlinePassed", "UnsupportedScheme", "retry_after"]
