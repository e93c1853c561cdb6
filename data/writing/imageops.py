"""Decode, validate, resize and re-encode one image; validate one caption.

Every check returns a rejection reason (a short string) instead of raising, so the sharder counts
bad inputs and goes on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.reading.text_values import NotText, caption_text
from data.writing import jpeg_fast

# A decompression bomb is an input error like any other: an image of more than this many pixels is
# rejected as `too_large` (decode() checks the header; PIL's own limit, set here too, only warns
# between 1x and 2x of it)
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# a warning between 1x and 2x of PIL's limit: decode() rejects those images itself (set once: a
# catch_warnings() around each open cost more than reading the file)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class Rejected(Exception):
    """A sample the sharder drops; `reason` is the counter it goes to."""

    fetch_reason: str  # set only on a failed read (the shard task's fetch); absent otherwise

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Processed:
    jpeg: bytes
    width: int
    height: int
    orig_width: int
    orig_height: int


def check_caption(caption, max_chars: int) -> str:
    """The caption as stored (see data.reading.text_values.caption_text); raises Rejected."""
    try:
        return caption_text(caption, max_chars)
    except NotText as e:
        raise Rejected(e.reason, str(e)) from None


def check_size(w: int, h: int, min_size: int = 0) -> None:
    """`too_large` above MAX_PIXELS, `too_small` when the shorter side is under `min_size`."""
    if w * h > MAX_PIXELS:
        raise Rejected("too_large", f"{w}x{h} = {w * h} pixels > {MAX_PIXELS}")
    if min(w, h) < min_size:
        raise Rejected("too_small", f"{w}x{h} < {min_size}")


def decode(raw: bytes, min_short: int = 0) -> Image.Image:
    """The fully decoded image; more than MAX_PIXELS pixels is `too_large`, judged from the header
    before any pixel is decoded (PIL itself would only refuse above twice its limit). `min_short`:
    a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's own downscaling,
    several times faster) as long as its shorter side stays at least this; `.size` is then the
    decoded size, `orig_size` what the file holds."""
    try:
        img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as e:
        raise Rejected("too_large", str(e)) from None
    except Exception as e:  # PIL raises many types for corrupt input
        raise Rejected("undecodable", f"{type(e).__name__}: {e}") from None
    w, h = img.size
    check_size(w, h)
    img.orig_size = (w, h)  # type: ignore[attr-defined]  # our own attribute on the PIL image, read below
    if min_short and img.format == "JPEG" and min(w, h) >= 2 * min_short:
        short = min(w, h)
        img.draft(img.mode, (-(-w * min_short // short), -(-h * min_short // short)))  # sizes rounded up
    try:
        img.load()  # forces a full decode: truncated files fail here, not later
    except Exception as e:
        raise Rejected("undecodable", f"{type(e).__name__}: {e}") from None
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """Grey levels deeper than 8 bits scaled to 0-255 (PIL's own conversion clips them: a 16-bit
    PNG would come out nearly all white): 16-bit (`I;16*`, and `I` holding 16-bit values) by
    255/65535; floating point (`F`) from 0-1 when its values lie there, else clipped to 0-255."""
    x = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        x = x * 255.0 if x.size and x.min() >= 0.0 and x.max() <= 1.0 else x
    else:
        x = np.clip(x, 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB on a white background (transparent PNG/emoji keep their look)."""
    if img.mode == "RGB":  # convert() would copy it
        return img
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def resize(img: Image.Image, size: int, mode: str, max_aspect: float) -> Image.Image:
    w, h = img.size
    short = min(w, h)
    if mode == "keep_aspect" and max(w, h) / short > max_aspect:
        raise Rejected("bad_aspect", f"{w}x{h} exceeds aspect {max_aspect}")
    if mode == "center_crop":  # the centred square, cut in the source: an elongated image never grows
        left, top = (w - short) / 2, (h - short) / 2
        return img.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + short, top + short), reducing_gap=3.0
        )
    scale = size / short
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)


def _decoded_rgb(raw: bytes, size: int, min_size: int) -> tuple[Image.Image, int, int]:
    """(RGB image at the smallest DCT scale keeping its shorter side >= size, original w, h):
    a plain JPEG through libjpeg-turbo directly (data.writing.jpeg_fast: the same pixels), else Pillow."""
    dims = jpeg_fast.header(raw)
    if dims is not None:
        ow, oh = dims
        check_size(ow, oh, min_size)
        pixels = jpeg_fast.decode(raw, ow, oh, size)
        if pixels is not None:
            return Image.fromarray(pixels, "RGB"), ow, oh
    img = decode(raw, min_short=size)
    ow, oh = img.orig_size  # type: ignore[attr-defined]  # set on the image by decode()
    check_size(ow, oh, min_size)
    return to_rgb(img), ow, oh


def process_image(raw: bytes, size: int, mode: str, min_size: int, max_aspect: float, quality: int) -> Processed:
    img, ow, oh = _decoded_rgb(raw, size, min_size)
    out = resize(img, size, mode, max_aspect)
    if jpeg_fast.simplejpeg is not None:
        jpeg = jpeg_fast.encode(np.asarray(out), quality)
    else:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=quality)
        jpeg = buf.getvalue()
    return Processed(jpeg, out.size[0], out.size[1], ow, oh)
