"""Failures of the machine, not of an input: a full disk, a read-only or forbidden folder, no file
handles left. They are named with their errno and path wherever a step reports them."""

from __future__ import annotations

import errno
from typing import Optional

ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE}
)


def environment_error(e: Optional[BaseException]) -> Optional[str]:
    """The one-line description of an environment failure (errno name and path), else None."""
    if not isinstance(e, OSError) or e.errno not in ENVIRONMENT_ERRNOS:
        return None
    return f"{e.strerror} ({errno.errorcode[e.errno]}): {e.filename or 'no path given'}"
