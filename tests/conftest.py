import io
import os
import random

import pytest
from PIL import Image

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1; the standard AWS variables point at it.
    Started before Ray, so Ray's workers inherit the variables."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    class Server:
        url = f"http://127.0.0.1:{port}"

        def start(self):
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self.moto.start()

        def stop(self):  # the data stays: moto keeps it in this process, like a restarted real server
            self.moto.stop()

    server = Server()
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=server.url, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray instance for the whole session (starting Ray costs seconds)."""
    import ray

    from infra.ray_cluster import init_ray
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def image_bytes(seed: int, size=(96, 80), fmt="JPEG") -> bytes:
    """A distinct, decodable image: random coloured blocks."""
    rng = random.Random(seed)
    img = Image.new("RGB", size)
    for x in range(0, size[0], 16):
        for y in range(0, size[1], 16):
            img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 16, y + 16))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
