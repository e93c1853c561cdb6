"""SigLIP (Zhai et al. 2023): CLIP's towers trained with a pairwise sigmoid loss and a learnable bias."""
