"""Built-in demo sets, built once from registry packages and cached; each is a regular folder
source, so it goes through the same sharder as user data.

`demo:emoji`: the Noto Color Emoji font rendered with the emoji's Unicode names.

`demo_folder("emoji")` returns a folder of `<n>.png` images with same-stem `.json` captions
({"caption": "thumbs up: medium skin tone (hand fingers closed)", "group", "subgroup",
"base": "thumbs up", "alt_captions": ["thumbs up: medium skin tone", "an emoji of hand fingers
closed"]}; "base" drops
skin tones only, so "kiss: woman, man, dark skin tone" has base "kiss: woman, man"): a regular
folder source, so the demo goes through the same sharder as user data. Built once, then cached.

`demo:emoji-noisy`: the emoji with known noise (captions swapped, jittered copies; data/reading/
noisy_demo.py), for measuring curation.

`demo:animal-mnist`: 10,000 28x28 animal silhouettes (10 classes, from the `animal-mnist` wheel's
data files; the package itself is never imported) as an image-only folder in the ImageFolder
layout `<class>/<n>.png`: no captions; the class is the `folder` metadata of each record.
"""

from __future__ import annotations

import gzip
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.reading.assets import cache_dir, check_sha256, debian_package, pypi_member
from data.reading.noisy_demo import render_emoji_noisy

FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "usr/share/unicode/emoji/emoji-test.txt"
VERSION = 4  # bump when the rendering or the metadata change: the cache folder is versioned
SKIN_TONE = re.compile(r"^(light|medium-light|medium|medium-dark|dark) skin tone$")


def base_name(name: str) -> str:
    """The emoji's name without skin tones: every skin tone of one emoji shares a base (and so a
    side of the held-out split), while "flag: France" and "flag: Peru" stay apart."""
    head, _, tail = name.partition(":")
    parts = [p.strip() for p in tail.split(",") if p.strip() and not SKIN_TONE.match(p.strip())]
    return f"{head.strip()}: {', '.join(parts)}" if parts else head.strip()


def parse_emoji_test(text: str) -> list[dict]:
    """Fully-qualified emoji of Unicode's emoji-test.txt with their group, subgroup and name."""
    out, group, subgroup = [], "", ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and "#" in line:
            codes = line.split(";", 1)[0].split()
            comment = line.split("#", 1)[1].strip().split(" ", 2)  # emoji, E<version>, name
            name = comment[2] if len(comment) == 3 else comment[-1]
            # the caption names the emoji and its subgroup in words, as alt text names a category:
            # "vampire: dark skin tone (person fantasy)"
            words = subgroup.replace("-", " ")
            caption = f"{name} ({words})"
            out.append(
                {
                    "chars": "".join(chr(int(c, 16)) for c in codes),
                    "caption": caption,
                    "alt_captions": [name, f"an emoji of {words}"],
                    "group": group,
                    "subgroup": subgroup,
                    "base": base_name(name),
                }
            )
    return out


def render_emoji(dest: Path) -> int:

    font_pkg = debian_package("fonts-noto-color-emoji")
    data_pkg = debian_package("unicode-data")
    entries = parse_emoji_test((data_pkg / EMOJI_TEST).read_text(encoding="utf-8"))
    # The font is a bitmap font: Pillow renders it only at size 109 (glyphs 136x128).
    font = ImageFont.truetype(str(font_pkg / FONT), 109)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    width = len(str(len(entries)))
    for i, e in enumerate(entries):
        # ints without a stroke: Pillow types the box float for the sake of a fractional stroke_width
        left, top, right, bottom = cast("tuple[int, int, int, int]", font.getbbox(e["chars"]))
        img = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        ImageDraw.Draw(img).text((-left, -top), e["chars"], font=font, embedded_color=True)
        stem = tmp / f"{i:0{width}d}"
        img.save(stem.with_suffix(".png"), compress_level=1)
        meta = {k: e[k] for k in ("caption", "alt_captions", "group", "subgroup", "base")}
        stem.with_suffix(".json").write_text(json.dumps(meta, ensure_ascii=False))
    tmp.rename(dest)
    return len(entries)


ANIMAL_MNIST = "animal-mnist==0.4"
ANIMAL_FILES = "animal_mnist/data/Animal_MNIST/animal_{}_version_3.gz"
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
# the package's data files are pickles: the wheel and each file are pinned by hash, and even then
# only numpy arrays may come out of them (NumpyUnpickler)
ANIMAL_WHEEL_SHA256 = "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce"
ANIMAL_SHA256 = {
    "data": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "label": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global a pickle names (a function to call
    on load, say) is an UnpicklingError, so a tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file (only numpy arrays)")
        return super().find_class(module, name)


def render_animal_mnist(dest: Path) -> int:

    def load(kind: str):
        path = pypi_member(ANIMAL_MNIST, ANIMAL_FILES.format(kind), ANIMAL_WHEEL_SHA256)
        with gzip.open(check_sha256(path, ANIMAL_SHA256[kind])) as f:
            return np.asarray(NumpyUnpickler(f).load())

    images, labels = load("data"), load("label")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise RuntimeError(f"{ANIMAL_MNIST}: unexpected data shapes {images.shape}, {labels.shape}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ANIMAL_CLASSES:
        (tmp / name).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img.astype(np.uint8), mode="L").save(tmp / ANIMAL_CLASSES[int(label)] / f"{i:05d}.png")
    tmp.rename(dest)
    return len(images)


NOISY_VERSION = 1  # of data/reading/noisy_demo.py's noise; the folder also names the emoji's version
DEMOS = {
    "emoji": (f"emoji-v{VERSION}", render_emoji),
    "emoji-noisy": (
        f"emoji-noisy-v{NOISY_VERSION}-of-v{VERSION}",
        lambda dest: render_emoji_noisy(dest, demo_folder("emoji")),
    ),
    "animal-mnist": ("animal-mnist-v1", render_animal_mnist),
}


def demo_folder(name: str) -> Path:
    if name not in DEMOS:
        raise ValueError(
            f"data.source: unknown demo set 'demo:{name}' (available: {', '.join('demo:' + d for d in DEMOS)})"
        )
    folder, render = DEMOS[name]
    dest = cache_dir() / "demo" / folder
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        render(dest)
    return dest


if __name__ == "__main__":
    import sys
    import time

    for name in sys.argv[1:] or ["emoji"]:
        t = time.time()
        folder = demo_folder(name)
        print(f"demo set ready: {folder} ({len(list(folder.rglob('*.png')))} images, {time.time() - t:.1f}s)")
