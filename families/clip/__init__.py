"""CLIP (Radford et al. 2021): its model config lives here first; the rest of the family follows."""
