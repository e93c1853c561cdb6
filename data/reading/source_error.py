class SourceError(ValueError):
    """A source that cannot be read at all (missing, not a table, no such column): refused by name
    before any work."""
