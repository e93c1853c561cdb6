"""Checkpoints in one place.

- `writes`: where Ray Train keeps them (`<storage>/ray/checkpoint_<step>`), a write that fails
  (a clear error naming the path, the step and the checkpoint kept), whether one is registered.
- `resume`: save and report every `train.checkpoint_every` steps; resume from Ray Train's
  checkpoint (a restart, a rerun) or `train.resume_from`.
- `model_file`: the exported `model.pt`; `init_from` starts from one (`load_model` builds a model from one).
"""
