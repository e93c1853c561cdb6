"""Durations as a console shows them (the training line's elapsed time and ETA, `make status`)."""

from __future__ import annotations

from typing import Optional


def duration(seconds: Optional[float]) -> str:
    """41s, 12m04s, 3h05m, 2d04h ("" when unknown)."""
    if seconds is None:
        return ""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
