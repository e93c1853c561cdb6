"""BLIP as one unit: its recipe and workflow (pretraining, CapFilt, pretraining on the bootstrapped
captions, evaluation) and its MLflow pyfunc: the ITC towers' embeddings, through CLIP's pyfunc (the
same encode_image / encode_text)."""

from __future__ import annotations

from families.blip import workflow
from families.blip.recipe import BlipRecipe
from families.clip.family import PYFUNC
from pipelines.family import Family

FAMILY = Family(
    BlipRecipe,
    workflow.steps,
    workflow.summary,
    final_model_step=workflow.final_model_step,
    serve=PYFUNC,
    headline=workflow.HEADLINE,
)
