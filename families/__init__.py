"""One folder per model family: its recipe sections, config, model, loss, task, evaluation,
workflow, exports and MLflow pyfunc, brought together in its `family.py` (a pipelines.family.Family);
families/registry.py registers the built-in ones."""
