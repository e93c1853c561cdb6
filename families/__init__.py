"""One folder per model family (its config, model, loss, task, evaluation and workflow), behind one
registry. SigLIP is the first to live here; the other families move in next."""
