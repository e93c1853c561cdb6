"""A masked-diffusion language model (LLaDA, Nie et al. 2025) and its autoregressive baseline."""
