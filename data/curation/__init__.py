"""Curation: which samples to remove by image-text score and by semantic duplication (issue 29)."""
