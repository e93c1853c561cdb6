"""BLIP (Li et al. 2022): ITC + ITM + captioning, CapFilt."""
