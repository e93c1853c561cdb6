"""CLIP (Radford et al. 2021): config, model, loss, task, evaluation (zero-shot, retrieval)."""
