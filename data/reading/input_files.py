"""Seekable input files: a local regular file (a FIFO or device is refused, never waited on), or an
S3 object read through ranged GETs (a manifest's footer and the row groups or byte ranges a task
needs, never the whole object)."""

from __future__ import annotations

import io

from data.reading.fetch import open_regular
from infra.storage import s3_client, split_s3


class _S3RangeFile(io.RawIOBase):
    """A seekable read-only file over one S3 object: each read is a ranged GET."""

    def __init__(self, uri: str):

        self.bucket, self.key = split_s3(uri)
        self.client = s3_client()
        self.size = self.client.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"]
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        data = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{self.pos + n - 1}")[
            "Body"
        ].read()
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_input(uri: str, buffer: int = 8 << 20):
    """A seekable binary file: a local path, or an S3 object read in `buffer`-sized ranges."""
    if uri.startswith("s3://"):
        return io.BufferedReader(_S3RangeFile(uri), buffer_size=buffer)
    return open_regular(uri)  # a FIFO or device is refused, never waited on
