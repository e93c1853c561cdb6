"""Errors every family's exporters and importers raise."""


class ExportError(ValueError):
    """A model (or checkpoint) with a layer the other library has no exact counterpart for."""
