"""The masked-diffusion LM as one unit: its recipe and workflow (text shards, diffusion and AR
pretraining, SFT, the likelihood bound and samples) and its MLflow pyfunc (text generation). It
starts from no checkpoint: `train.init_from` is refused."""

from __future__ import annotations

from families.mdlm import serve, workflow
from families.mdlm.recipe import MDLMRecipe
from pipelines.family import PYFUNC_REQUIREMENTS, Family, Pyfunc

FAMILY = Family(
    MDLMRecipe,
    workflow.steps,
    workflow.summary,
    starts={},
    headline=workflow.HEADLINE,
    serve=Pyfunc(
        serve.TextGeneration,
        serve.signature,
        serve.example_input,
        model_step=serve.model_step,
        extra_artifacts=serve.extra_artifacts,
        requirements=(*PYFUNC_REQUIREMENTS, "tokenizers"),  # its byte-level BPE
    ),
)
