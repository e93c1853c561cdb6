"""SigLIP's exports: open_clip's format holds it (CLIP's exporter, with the logit bias); transformers'
SiglipModel does not."""

from __future__ import annotations

from families.errors import ExportError


def refuse_hf(model, m, dest):
    raise ExportError(
        f"model.kind {m.kind}: transformers' SiglipModel pools images with an attention head "
        f"and has no class token (vision_model.head); this model's image tower pools its "
        f"class token (visual.cls_token), so it has no exact counterpart there"
    )
