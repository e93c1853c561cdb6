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
