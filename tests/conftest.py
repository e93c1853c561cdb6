import io
import os
import random

import pytest
from PIL import Image

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_local():
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
