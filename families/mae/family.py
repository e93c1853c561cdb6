"""MAE as one unit: its recipe and workflow (pretraining, fine-tuning, the scratch baseline, the
probe), the ViT classifier its fine-tuning trains, the timm export and checkpoints, and its MLflow
pyfunc (the fine-tuned classifier's class probabilities)."""

from __future__ import annotations

from families.mae import serve, timmio, workflow
from families.mae.config import ViTClassifierConfig
from families.mae.recipe import MAERecipe
from pipelines.family import PYFUNC_REQUIREMENTS, Family, Pyfunc

FAMILY = Family(
    MAERecipe,
    workflow.steps,
    workflow.summary,
    models=(ViTClassifierConfig,),
    exports={"timm": timmio.export_timm},
    starts={"": None, "timm": timmio.checkpoint_problems},
    headline=workflow.HEADLINE,
    serve=Pyfunc(
        serve.ClassifierProbabilities,
        serve.signature,
        serve.example_input,
        model_step=serve.model_step,
        requirements=(*PYFUNC_REQUIREMENTS, "pillow"),  # it decodes images with pillow
    ),
)
