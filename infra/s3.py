"""S3 (any S3-compatible store, via boto3): one client per process, URIs split into bucket and key,
boto3's errors turned into a StorageError naming the URI, and a streaming `gopen` handler for
WebDataset. infra/storage.py builds its Store on these."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Optional

_clients: dict[int, object] = {}
_lock = threading.Lock()
MULTIPART_CHUNK = 8 * 1024 * 1024


class StorageError(RuntimeError):
    pass


def is_s3(uri: str) -> bool:
    return str(uri)[:5].lower() == "s3://"


def split_s3(uri: str) -> tuple[str, str]:
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in the S3 URI")
    return bucket, key


def s3_client():
    """One boto3 client per process (clients must not cross a fork)."""
    pid = os.getpid()
    with _lock:
        if pid not in _clients:
            import boto3
            from botocore.config import Config

            # botocore waits rand(0, 0.05 * 2^i) s before retry i of a connection error (capped
            # at 20 s): 8 attempts ride out about 3 s of an endpoint being away, 12 about 30 s
            _clients[pid] = boto3.client(
                "s3",
                config=Config(
                    retries={"max_attempts": 12, "mode": "adaptive"},
                    connect_timeout=5,
                    read_timeout=60,
                    request_checksum_calculation="when_supported",
                    max_pool_connections=256,
                ),
            )  # the sharder reads up to data.fetch_concurrency objects at once
        return _clients[pid]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def s3_error(uri: str, e: Exception) -> Optional[StorageError]:
    """The one-line error for an S3 call on `uri` that failed with `e` (no credentials, endpoint
    unreachable, missing bucket or key, access refused); None for other exceptions."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return StorageError(
            f"{uri}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)"
        )
    if isinstance(e, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach the S3 endpoint: {e}")
    if not isinstance(e, ClientError):
        return None
    code = e.response.get("Error", {}).get("Code", "")
    if code == "NoSuchBucket":
        return StorageError(f"{uri}: bucket '{split_s3(uri)[0]}' does not exist")
    if code in ("404", "NoSuchKey", "NotFound"):
        return StorageError(f"{uri}: does not exist")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return StorageError(f"{uri}: access refused ({code}): check the credentials")
    return StorageError(f"{uri}: {code or e}")


def open_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """WebDataset `gopen` handler for s3:// URLs: a streaming body, nothing copied to disk."""
    bucket, key = split_s3(url)
    return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
