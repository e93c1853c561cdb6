"""Built-in demo set: the Noto Color Emoji font rendered with the emoji's Unicode names.

`demo_folder("emoji")` returns a folder of `<n>.png` images with same-stem `.json` captions
({"caption": "thumbs up: medium skin tone (hand fingers closed)", "group", "subgroup",
"base": "thumbs up", "alt_captions": ["thumbs up: medium skin tone", "an emoji of hand fingers
closed"]}; "base" drops
skin tones only, so "kiss: woman, man, dark skin tone" has base "kiss: woman, man"): a regular
folder source, so the demo goes through the same sharder as user data. Built once, then cached.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from data.assets import cache_dir, debian_package

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
            out.append({"chars": "".join(chr(int(c, 16)) for c in codes), "caption": caption,
                        "alt_captions": [name, f"an emoji of {words}"],
                        "group": group, "subgroup": subgroup, "base": base_name(name)})
    return out


def render_emoji(dest: Path) -> int:
    from PIL import Image, ImageDraw, ImageFont

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
        left, top, right, bottom = font.getbbox(e["chars"])
        img = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        ImageDraw.Draw(img).text((-left, -top), e["chars"], font=font, embedded_color=True)
        stem = tmp / f"{i:0{width}d}"
        img.save(stem.with_suffix(".png"), compress_level=1)
        meta = {k: e[k] for k in ("caption", "alt_captions", "group", "subgroup", "base")}
        stem.with_suffix(".json").write_text(json.dumps(meta, ensure_ascii=False))
    tmp.rename(dest)
    return len(entries)


def demo_folder(name: str) -> Path:
    if name != "emoji":
        raise ValueError(f"data.source: unknown demo set 'demo:{name}' (available: demo:emoji)")
    dest = cache_dir() / "demo" / f"emoji-v{VERSION}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        render_emoji(dest)
    return dest


if __name__ == "__main__":
    import time
    t = time.time()
    folder = demo_folder("emoji")
    print(f"demo set ready: {folder} ({len(list(folder.glob('*.png')))} images, {time.time() - t:.1f}s)")
