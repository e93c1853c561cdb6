"""One small interface over a local folder or an S3 prefix (any S3-compatible store, via boto3).

The endpoint and credentials come from the standard AWS environment / config files
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `~/.aws/...`), never from a recipe. Transient errors
(throttling, 5xx, dropped connections) are retried by botocore's adaptive retry mode; a missing
bucket or refused credentials fail at once in `Store.check()`.

Writes are all-or-nothing: locally a temporary name is renamed; on S3 an object (or a multipart
upload) only becomes visible once complete, and uploads carry a SHA-256 checksum that the server
verifies, then size and recorded hash are checked with a HEAD request.
"""

from __future__ import annotations

import base64
import builtins
import os
import shutil
from pathlib import Path
from typing import Optional

from infra.s3 import MULTIPART_CHUNK, StorageError, is_s3, open_s3, s3_client, s3_error, sha256_file, split_s3
from infra.uris import canonical

__all__ = [
    "Store",
    "StorageError",
    "is_s3",
    "join",
    "open_s3",
    "s3_client",
    "s3_error",
    "sha256_file",
    "split_s3",
    "MULTIPART_CHUNK",
]


def join(base: str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


class Store:
    """Files named relative to `root` (a folder path or an s3://bucket/prefix URI)."""

    def __init__(self, root: str | Path):
        # parsed once: S3://b/p is s3://b/p, file:///a is /a, gs://... is refused (never a folder `gs:`)
        self.root = canonical(str(root), ("local", "s3"), "storage").rstrip("/")
        self.s3 = is_s3(self.root)
        if not self.s3:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def uri(self, name: str) -> str:
        return join(self.root, name)

    def _key(self, name: str) -> tuple[str, str]:
        return split_s3(self.uri(name))

    # -- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        """Fail fast (before any work) when the bucket is missing or access is refused."""
        if not self.s3:
            return
        bucket, prefix = split_s3(self.root)
        try:
            s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except Exception as e:
            clear = s3_error(self.root, e)
            if clear is None:
                raise
            raise clear from None

    # -- reads ------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        if not self.s3:
            return Path(self.uri(name)).exists()
        from botocore.exceptions import ClientError

        bucket, key = self._key(name)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read_bytes(self, name: str) -> bytes:
        if not self.s3:
            return Path(self.uri(name)).read_bytes()
        bucket, key = self._key(name)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def _pages(self):
        """(prefix, page) of a one-level S3 listing under the root."""
        bucket, prefix = split_s3(self.root)
        prefix = prefix + "/" if prefix else ""
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            yield prefix, page

    def list(self, suffix: str = "") -> list[str]:
        """Names of the files directly under the root ending with `suffix`."""
        if not self.s3:
            return sorted(p.name for p in Path(self.root).iterdir() if p.name.endswith(suffix))
        names = [o["Key"][len(prefix) :] for prefix, page in self._pages() for o in page.get("Contents", [])]
        return sorted(n for n in names if n.endswith(suffix))

    def list_dirs(self) -> builtins.list[str]:  # `list` in this class body is the method above
        """Names of the sub-folders (S3: common prefixes) directly under the root."""
        if not self.s3:
            return sorted(p.name for p in Path(self.root).iterdir() if p.is_dir())
        return sorted(
            p["Prefix"][len(prefix) :].rstrip("/")
            for prefix, page in self._pages()
            for p in page.get("CommonPrefixes", [])
        )

    # -- writes -----------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> None:
        if not self.s3:
            path = Path(self.uri(name))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            try:
                tmp.write_bytes(data)
            except OSError as e:  # a full disk says which file it could not write
                tmp.unlink(missing_ok=True)
                raise OSError(e.errno, e.strerror, str(tmp)) from None
            os.replace(tmp, path)
            return
        bucket, key = self._key(name)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def put_file(self, local: str | Path, name: str, sha256: Optional[str] = None, keep: bool = False) -> None:
        """Move (locally; copied with `keep`) or upload (S3, multipart above 8 MiB, verified; the
        local file is removed unless `keep`) a finished file."""
        if not self.s3:
            if keep:
                shutil.copyfile(local, self.uri(name) + ".part")
                os.replace(self.uri(name) + ".part", self.uri(name))
            else:
                os.replace(local, self.uri(name))
            return
        from boto3.s3.transfer import TransferConfig

        sha256 = sha256 or sha256_file(local)
        size = os.path.getsize(local)
        bucket, key = self._key(name)
        cfg = TransferConfig(
            multipart_threshold=MULTIPART_CHUNK, multipart_chunksize=MULTIPART_CHUNK, max_concurrency=4
        )
        s3_client().upload_file(
            str(local),
            bucket,
            key,
            Config=cfg,
            ExtraArgs={"Metadata": {"sha256": sha256}, "ChecksumAlgorithm": "SHA256"},
        )
        head = s3_client().head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != sha256:
            raise StorageError(
                f"{self.uri(name)}: upload verification failed ({head['ContentLength']} bytes vs {size})"
            )
        if not keep:
            os.unlink(local)

    def delete(self, name: str) -> None:
        """Remove `name` if it exists."""
        if not self.s3:
            Path(self.uri(name)).unlink(missing_ok=True)
            return
        bucket, key = self._key(name)
        s3_client().delete_object(Bucket=bucket, Key=key)

    def size(self, name: str) -> int:
        if not self.s3:
            return Path(self.uri(name)).stat().st_size
        bucket, key = self._key(name)
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]

    def content_sha256(self, name: str) -> Optional[str]:
        """The hex SHA-256 of `name`'s content when it can be known without reading it from S3
        (the `sha256` metadata of put_file, or S3's full-object SHA-256 checksum); local files are
        hashed. None when unknown (e.g. a multipart object from another tool)."""
        if not self.s3:
            return sha256_file(self.uri(name))

        bucket, key = self._key(name)
        head = s3_client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("Metadata", {}).get("sha256"):
            return head["Metadata"]["sha256"]
        checksum = head.get("ChecksumSHA256", "")
        if checksum and "-" not in checksum and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            return base64.b64decode(checksum).hex()
        return None

    def download(self, name: str, dest: str | Path, chunk: int = 1 << 20) -> int:
        """Fetch `name` to `dest`, resumably: a finished file with the same content (SHA-256) is
        not fetched again, a different one (even of the same size) is; an interrupted one continues
        from its `.part` (an S3 Range request) and is checked against the SHA-256 when complete.
        Symbolic links at `dest` or its `.part` are removed, never written through. Returns the
        number of bytes transferred."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        for p in (dest, part):
            if p.is_symlink():
                p.unlink()
        total, digest = self.size(name), self.content_sha256(name)
        if dest.exists() and dest.stat().st_size == total and (digest is None or sha256_file(dest) == digest):
            return 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        moved = 0
        for attempt in range(2):  # a .part from an older version of the file: once more, from scratch
            have = part.stat().st_size if part.exists() else 0
            if have > total:
                part.unlink()
                have = 0
            with open(part, "ab") as f:
                if self.s3 and have < total:
                    bucket, key = self._key(name)
                    body = s3_client().get_object(Bucket=bucket, Key=key, Range=f"bytes={have}-")["Body"]
                    for block in iter(lambda: body.read(chunk), b""):
                        f.write(block)
                        moved += len(block)
                elif have < total:
                    with open(self.uri(name), "rb") as src:
                        src.seek(have)
                        for block in iter(lambda: src.read(chunk), b""):
                            f.write(block)
                            moved += len(block)
            if part.stat().st_size != total:
                raise StorageError(f"{self.uri(name)}: download ended at {part.stat().st_size} of {total} bytes")
            if digest is None or sha256_file(part) == digest:
                os.replace(part, dest)
                return moved
            part.unlink()
        raise StorageError(f"{self.uri(name)}: the downloaded bytes do not match its SHA-256 {digest}")

    def remove_stale_tmp(self) -> None:
        if not self.s3:
            for stale in Path(self.root).glob("*.tmp*"):
                stale.unlink() if stale.is_file() else shutil.rmtree(stale)
