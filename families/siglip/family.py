"""SigLIP as one unit: CLIP's workflow, checkpoints, open_clip export and pyfunc (the same towers
and embedding space, through their public functions) with its own recipe, model, loss and task."""

from __future__ import annotations

from families.clip import family as clip
from families.clip import workflow
from families.clip.openclip import export_open_clip
from families.siglip.export import refuse_hf
from families.siglip.recipe import SigLipRecipe
from pipelines.family import Family

FAMILY = Family(
    SigLipRecipe,
    workflow.steps,
    workflow.summary,
    starts=clip.STARTS,
    serve=clip.PYFUNC,
    headline=workflow.HEADLINE,
    exports={"hf": refuse_hf, "open_clip": export_open_clip},
)
