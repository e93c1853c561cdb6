"""Reading WebDataset shards one after the other, with every failed read counted once and a
truncated tar noticed (Python's tarfile, reading a stream, takes a cut inside a member header for
the end of the archive)."""

from __future__ import annotations

import sys
from typing import Iterator, Optional

import webdataset as wds

from infra.storage import open_s3

# s3:// shards stream straight from S3 (one boto3 client per process), never copied to disk first:
# registered wherever shards are read (training's loader, evaluation's shard_reading)
sys.modules["webdataset.gopen"].gopen_schemes["s3"] = open_s3  # `wds.gopen` is the function, not the module


class _EndChecked:
    """A shard's byte stream that fails at its end unless the tar ended there: Python's tarfile,
    reading a stream, takes a file cut inside a member header for the end of the archive and stops
    quietly, so a truncated shard would look complete. A tar ends with two zero blocks."""

    COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz: their decoders see truncation

    def __init__(self, raw, url: str):
        self.raw, self.url, self.tail = raw, url, b""
        self.check: Optional[bool] = None

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if self.check is None and data:
            self.check = not data.startswith(self.COMPRESSED)
        if data:
            self.tail = (self.tail + data)[-1024:]
        elif n and self.check and self.tail != bytes(1024):
            raise OSError(f"{self.url}: the shard ends inside a tar member or header (truncated)")
        return data

    def close(self) -> None:
        self.raw.close()


def shard_samples(shards: Iterator[dict], handler) -> Iterator[dict]:
    """The samples of the shards ({"url"}) that `shards` yields, one shard after the other, as
    WebDataset groups them. A shard read that fails (not a tar, truncated, unreadable) calls
    `handler(error)` once, whatever the number of errors it raises, and the read moves on."""
    T = wds.tariterators
    read = {"n": 0, "failed": -1}

    def counted():
        for shard in shards:
            read["n"] += 1
            yield shard

    def once(exn: Exception) -> bool:
        if read["failed"] == read["n"]:
            return True
        read["failed"] = read["n"]
        return handler(exn)

    def checked(sources):
        for source in sources:
            source["stream"] = _EndChecked(source["stream"], source["url"])
            try:
                yield source
            finally:  # read to its end, or the reader stopped early (a loader's last batch): closed
                source["stream"].close()

    return T.group_by_keys(
        T.tar_file_expander(checked(T.url_opener(counted(), handler=once)), handler=once), handler=once
    )
