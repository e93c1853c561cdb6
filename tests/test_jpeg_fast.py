"""The sharder's JPEG path through libjpeg-turbo (data/writing/jpeg_fast.py) gives Pillow's pixels: at full
scale and at every DCT scale Pillow's draft would pick, for colour and grey JPEGs; what it does not
handle (CMYK, truncated, not a JPEG) goes to Pillow, which decodes or rejects it as before."""

import io

import numpy as np
import pytest
from PIL import Image

from data.writing import imageops, jpeg_fast
from tests.conftest import image_bytes


def _both(raw: bytes, size: int, monkeypatch) -> tuple:
    fast = imageops._decoded_rgb(raw, size, 8)
    with monkeypatch.context() as m:
        m.setattr(jpeg_fast, "simplejpeg", None)
        slow = imageops._decoded_rgb(raw, size, 8)
    return fast, slow


@pytest.mark.parametrize(
    "dims, size",
    [((96, 80), 64), ((320, 240), 64), ((640, 480), 64), ((1000, 300), 72), ((130, 129), 64), ((96, 80), 16)],
)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_same_pixels_as_pillow(dims, size, mode, monkeypatch):
    img = Image.open(io.BytesIO(image_bytes(sum(dims), size=dims))).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    (a, aw, ah), (b, bw, bh) = _both(buf.getvalue(), size, monkeypatch)
    assert (aw, ah) == (bw, bh) == dims and a.size == b.size and a.mode == b.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    if min(dims) >= 2 * size:
        assert min(a.size) < min(dims)  # decoded at a reduced DCT scale, as Pillow's draft does


def test_what_it_does_not_handle_goes_to_pillow(monkeypatch):
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 64), (10, 200, 30, 5)).save(cmyk, "JPEG")
    assert jpeg_fast.header(cmyk.getvalue()) is None
    (a, *_), (b, *_) = _both(cmyk.getvalue(), 32, monkeypatch)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    truncated = image_bytes(5)[:400]
    with pytest.raises(imageops.Rejected, match="undecodable"):
        imageops.process_image(truncated, 32, "center_crop", 8, 3.0, 90)
    p = imageops.process_image(image_bytes(6, size=(200, 100)), 32, "center_crop", 8, 3.0, 90)
    assert (p.width, p.height, p.orig_width, p.orig_height) == (32, 32, 200, 100)
    assert Image.open(io.BytesIO(p.jpeg)).format == "JPEG"
