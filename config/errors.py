"""The error every config check raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """`key`: the dotted key at fault; `keys`: every key a cross-field rule involves."""

    def __init__(self, message: str, key: str = "", keys: tuple[str, ...] = ()):
        super().__init__(message)
        self.key = key
        self.keys = keys or ((key,) if key else ())
