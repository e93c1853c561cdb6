"""Opening a local file named by an input (a manifest row, a sidecar, a recipe): only a regular
file is opened for reading. It is opened without blocking and judged by fstat, so a FIFO waits for
no writer and a device or a folder is named, never read."""

from __future__ import annotations

import errno
import os
import stat

KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
}


class NotRegularFile(OSError):
    """`kind`: what the name is instead ("a FIFO", "a folder", ...)."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path}: {kind}, not a regular file")
        self.kind = kind


def open_regular(path: str):
    """A binary file object on regular file `path`; NotRegularFile otherwise (other OSErrors,
    and ValueError for a NUL byte in the path, as os.open raises them)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket
            raise NotRegularFile(path, "a socket") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, KINDS.get(stat.S_IFMT(mode), "not a file"))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def readable_as_umask_allows(folder) -> None:
    """Every file under `folder` with the mode a plain `open()` would have given it (0o666 less
    the umask): safetensors and transformers write their weights as 0600, which other users of a
    shared export folder (a serving process, a teammate) cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
