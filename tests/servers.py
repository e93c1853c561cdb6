"""For tests that start servers (MLflow, S3, Ray nodes, gloo): a free port, and waiting for one to come up."""
import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            self.times.append(time.time())   # counted before the client can see the close
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()
