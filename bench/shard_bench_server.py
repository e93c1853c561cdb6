"""The loopback image server of bench/bench_shard_scale.py: a separate process (so it does not share
the GIL with the measured code) serving a folder's first N JPEGs from memory at /img/<name>.jpg,
after a set latency per request, and counting the requests."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


class ImageServer(ThreadingHTTPServer):
    request_queue_size = 2048
    daemon_threads = True

    def __init__(self, images: dict[str, bytes], latency_s: float):
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.images = images
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.errors = 0

    def count(self, path: str) -> None:
        with self.lock:
            self.counts[path] += 1

    def stats(self, per_path: bool) -> dict:
        with self.lock:
            out = {
                "total": sum(self.counts.values()),
                "distinct": len(self.counts),
                "max_per_path": max(self.counts.values(), default=0),
                "errors": self.errors,
                "latency_ms": self.latency_s * 1000,
            }
            if per_path:
                out["paths"] = dict(self.counts)
        return out

    def reset(self, latency_ms: str | None) -> None:
        with self.lock:
            self.counts.clear()
            self.errors = 0
            if latency_ms is not None:
                self.latency_s = float(latency_ms) / 1000

    def handle_error(self, request, client_address):  # a client that hung up: counted, not printed
        with self.lock:
            self.errors += 1


class ImageHandler(BaseHTTPRequestHandler):
    """GET /img/<name>.jpg (counted, after the latency); /__stats[?paths=1]; /__reset[?latency_ms=]."""

    protocol_version = "HTTP/1.1"  # keep-alive for clients that pool connections
    disable_nagle_algorithm = True  # headers and body in one go: no delayed-ACK stalls on kept-alive connections

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, kind: str, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _image(self, head: bool) -> None:
        url = urlsplit(self.path)
        srv: ImageServer = self.server
        if url.path.startswith("/__"):
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/__stats":
                return self._send(200, json.dumps(srv.stats(query.get("paths") == "1")).encode(), "application/json")
            if url.path == "/__reset":
                srv.reset(query.get("latency_ms"))
                return self._send(200, b"{}", "application/json")
        srv.count(url.path)
        if srv.latency_s:
            time.sleep(srv.latency_s)
        body = srv.images.get(url.path)
        if body is None:
            return self._send(404, b"not found", "text/plain", head)
        self._send(200, body, "image/jpeg", head)

    def do_GET(self):
        self._image(head=False)

    def do_HEAD(self):
        self._image(head=True)


def _serve(image_dir: str, names: list[str], conn) -> None:
    images = {f"/img/{name}": (Path(image_dir) / name).read_bytes() for name in names}
    server = ImageServer(images, 0.0)
    conn.send(server.server_address[1])
    server.serve_forever(poll_interval=0.5)


def start_server(image_dir: Path, names: list[str]) -> tuple[mp.Process, str]:
    """Serve these files of `image_dir` at /img/<name>; the process and the base URL."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(str(image_dir), names, child), daemon=True, name="image-server")
    proc.start()
    if not parent.poll(120):
        proc.terminate()
        raise SystemExit("the image server did not start")
    return proc, f"http://127.0.0.1:{parent.recv()}"


def stop_server(proc: mp.Process) -> None:
    proc.terminate()
    proc.join(10)


def server_call(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())
