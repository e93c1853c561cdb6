"""For tests that start servers (MLflow, S3, Ray nodes, gloo): a free port, and waiting for one to come up."""

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_ranks(worker, world: int, results: int = 1, timeout: float = 120) -> list:
    """Run `worker(rank, port, queue)` in `world` spawned processes (a gloo group on `port`);
    the first `results` items they put on the queue, after every process exited cleanly."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=worker, args=(r, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=timeout) for _ in range(results)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"rank process exited with {p.exitcode}"
    return out


def wait_for(what, fn, timeout=120, every=1.0):
    """fn()'s first true value, polled every `every` s; its exceptions count as "not yet" until the
    timeout, when the last one is raised (an AssertionError at once: the test has failed)."""
    end = time.time() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001  (not up yet)
            if time.time() > end:
                raise
        if time.time() > end:
            raise TimeoutError(f"waited {timeout}s for {what}")
        time.sleep(every)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class ClosingListener:
    """Listens on 127.0.0.1:port, accepts every connection and closes it at once (a server that is
    down behind a port that still answers); `times` holds when each connection was accepted, so a
    test can count the attempts a client really made."""

    def __init__(self, port: int):
        import threading

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.times: list[float] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.times.append(time.time())  # counted before the client can see the close
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


class ImageServer:
    """A threaded HTTP server on 127.0.0.1 serving `files` {path: bytes} (404 for other paths),
    sleeping `latency_s` per request and `slow` {path: seconds} for chosen paths; `counts` holds the
    requests per path, so a test can see what a client really fetched."""

    def __init__(self, files: dict, latency_s: float = 0.0, slow: dict | None = None):
        import http.server
        import threading
        from collections import Counter

        server = self
        self.files, self.latency_s, self.slow = files, latency_s, slow or {}
        self.counts: Counter = Counter()
        self.active = self.max_active = 0  # requests being answered now, and at most
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts
            disable_nagle_algorithm = True

            def do_GET(self):
                with server._lock:
                    server.counts[self.path] += 1
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                time.sleep(server.slow.get(self.path, server.latency_s))
                with server._lock:
                    server.active -= 1
                body = server.files.get(self.path)
                try:
                    if body is None:
                        self.send_error(404, "File not found")
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *a):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 512
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
