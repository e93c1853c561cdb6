"""A loopback HTTP server that misbehaves on purpose, as a hostile or careless image host would.

Paths (every request is counted in `counts`):
- /ok/<n>.jpg         a distinct JPEG
- /drip               Content-Length 100000, then one byte every 0.2 s
- /drip-headers       a status line, then one header byte every 0.2 s, forever
- /endless            200 with no Content-Length, 64 KiB chunks until the client hangs up
- /huge-length        Content-Length 10 GiB, then the same endless body
- /short              Content-Length 5000, 100 bytes, then the connection closes
- /reset              the connection is reset (RST) before any answer
- /loop               a redirect to itself
- /chain/<n>          a redirect to /chain/<n-1>; /chain/0 is a JPEG
- /to-file, /to-ftp   a redirect to file:///etc/passwd, ftp://127.0.0.1/x.jpg
- /429-once/<n>.jpg   429 with Retry-After: 1 on the first request, then the JPEG
- /503-long           503 with Retry-After: 3600
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import image_bytes


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def handle_error(self, request, client_address):  # a client that hung up: expected here
        pass

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, code: int, body: bytes = b"", **headers):
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _forever(self):
        chunk = b"\xff" * 65536
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:
            self.close_connection = True

    def do_GET(self):  # noqa: C901 - one branch per misbehaviour
        srv: HostileServer = self.server
        path = self.path
        with srv.lock:
            srv.counts[path] += 1
            seen = srv.counts[path]
        if path.startswith("/ok/") or path == "/chain/0":
            return self._answer(200, image_bytes(zlib.crc32(path.encode())), Content_Type="image/jpeg")
        if path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if path == "/drip-headers":
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while True:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return
        if path in ("/endless", "/huge-length"):
            self.send_response(200)
            if path == "/huge-length":
                self.send_header("Content-Length", str(10 << 30))
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            return self._forever()
        if path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"y" * 100)
            self.close_connection = True
            return
        if path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if path == "/loop":
            return self._answer(302, Location="/loop")
        if path.startswith("/chain/"):
            return self._answer(302, Location=f"/chain/{int(path.rsplit('/', 1)[1]) - 1}")
        if path == "/to-file":
            return self._answer(302, Location="file:///etc/passwd")
        if path == "/to-ftp":
            return self._answer(302, Location="ftp://127.0.0.1/x.jpg")
        if path.startswith("/429-once/"):
            if seen == 1:
                return self._answer(429, b"slow down", Retry_After="1")
            return self._answer(200, image_bytes(zlib.crc32(path.encode())), Content_Type="image/jpeg")
        if path == "/503-long":
            return self._answer(503, b"later", Retry_After="3600")
        self._answer(404, b"no")
