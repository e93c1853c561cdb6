"""The built-in model families, registered (pipelines/family.py): CLIP, SigLIP, MAE, BLIP and the
masked-diffusion LM. Each family's folder holds all of it (recipe, model, task, workflow, exports,
pyfunc) and exports one `FAMILY`; adding one is a folder and a line here (or a `register` call from
anywhere, a test module included)."""

from __future__ import annotations

from families.blip.family import FAMILY as BLIP
from families.clip.family import FAMILY as CLIP
from families.mae.family import FAMILY as MAE
from families.mdlm.family import FAMILY as MDLM
from families.siglip.family import FAMILY as SIGLIP
from pipelines.family import family, family_of_model, load_model, model_config, register

__all__ = ["FAMILIES", "family", "family_of_model", "load_model", "model_config"]

FAMILIES = dict(register(CLIP, SIGLIP, MAE, BLIP, MDLM))  # the built-in ones (the registry may hold more)
