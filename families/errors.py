"""What every family's exporters and importers share: their error, and the check of a checkpoint's
shape against a model section."""


class ExportError(ValueError):
    """A model (or checkpoint) with a layer the other library has no exact counterpart for."""


def mismatches(m, theirs: dict, where: str, vocab: tuple | None = None) -> list[tuple[str, str]]:
    """(key, message) for each field of model section `m` that differs from the checkpoint's
    `theirs` ({field: value}); `vocab` (the checkpoint's key, its size, ours): a differing
    vocabulary too."""
    out = [(f"model.{f}", f"{getattr(m, f)}, but {where} has {v}") for f, v in theirs.items() if getattr(m, f) != v]
    if vocab and vocab[1] != vocab[2]:
        out.append(("train.init_from", f"{where} has {vocab[0]} {vocab[1]}; the CLIP tokenizer here has {vocab[2]}"))
    return out
