"""CLIP as one unit: its recipe, workflow, exports (transformers, open_clip), the checkpoints it
starts from (a model.pt, hf:<dir>, open_clip:<dir>) and its MLflow pyfunc (the embeddings)."""

from __future__ import annotations

from families.clip import hf, openclip, serve, workflow
from families.clip.recipe import ClipRecipe
from pipelines.family import PYFUNC_REQUIREMENTS, Family, Pyfunc

EXPORTS = {"hf": hf.export_hf, "open_clip": openclip.export_open_clip}
STARTS = {"": None, "hf": hf.checkpoint_problems, "open_clip": openclip.checkpoint_problems}
# the pyfunc decodes images with pillow and tokenizes texts with CLIP's BPE (tokenizers)
PYFUNC = Pyfunc(
    serve.ClipEmbeddings,
    serve.signature,
    serve.example_input,
    extra_artifacts=serve.extra_artifacts,
    requirements=(*PYFUNC_REQUIREMENTS, "pillow", "tokenizers"),
)

FAMILY = Family(
    ClipRecipe,
    workflow.steps,
    workflow.summary,
    exports=EXPORTS,
    starts=STARTS,
    serve=PYFUNC,
    headline=workflow.HEADLINE,
)
