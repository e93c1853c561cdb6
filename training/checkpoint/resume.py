"""Resume and save through Ray Train: a worker loads the checkpoint Ray Train hands it (a restart
or a rerun) or `train.resume_from` (an earlier run's, under this run's settings); every
`train.checkpoint_every` steps every rank saves its part and reports it with rank 0's train state
(`train_state.json`: step, epoch, strategy, model config, loss history)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from training.checkpoint.writes import dir_name, remove_partial, write_failed

TRAIN_STATE = "train_state.json"


def restore(strategy, directory: Path, train_state: str, other_settings: bool) -> dict:
    """Load a checkpoint folder into `strategy` (model, optimizer, scheduler) and return its train
    state. With `other_settings` (train.resume_from: an earlier run's checkpoint, resumed under
    this recipe's settings), the optimizer's hyperparameters (lr, betas, weight decay) and the
    learning-rate schedule are this run's, applied at the checkpoint's step; the weights and the
    optimizer's moments are the checkpoint's."""
    opt, sched = strategy.opt, strategy.sched
    mine = [{k: v for k, v in g.items() if k not in ("params", "initial_lr")} for g in opt.param_groups]
    base_lrs = list(sched.base_lrs)
    strategy.load(Path(directory))
    state = json.loads((Path(directory) / train_state).read_text())
    if other_settings:
        sched.base_lrs = base_lrs
        sched.last_epoch = state["step"]
        for g, hp, base, fn in zip(opt.param_groups, mine, base_lrs, sched.lr_lambdas):
            g.update(hp, initial_lr=base, lr=base * fn(state["step"]))
    return state


def resume(strategy, ckpt, tcfg, total: int, rank: int) -> tuple[int, int | None, list]:
    """(step, resumed_from, loss history) after loading Ray Train's checkpoint `ckpt` (a restart or
    a rerun), else `train.resume_from` (an earlier run's checkpoint, under this run's settings),
    else (0, None, [])."""
    from ray.train import Checkpoint

    source = ckpt or (Checkpoint(tcfg.resume_from) if tcfg.resume_from else None)
    if not source:
        return 0, None, []
    with source.as_directory() as d:
        state = restore(strategy, Path(d), TRAIN_STATE, other_settings=not ckpt)
    step = state["step"]
    if not ckpt and step >= total:
        raise ValueError(
            f"train.resume_from {tcfg.resume_from}: its step {step} is not before this run's last step {total}"
        )
    if rank == 0:
        print(
            f"[train] resuming from {'checkpoint' if ckpt else tcfg.resume_from} at step {step}/{total} "
            f"(epoch {state['epoch']})",
            flush=True,
        )
    return step, step, state.get("loss_history", [])


def save_and_report(run, metrics: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    try:
        with tempfile.TemporaryDirectory() as tmp:
            run.strategy.save(Path(tmp))
            if run.rank == 0:
                (Path(tmp) / TRAIN_STATE).write_text(
                    json.dumps(
                        {
                            "step": run.step,
                            "epoch": run.step // run.steps_per_epoch,
                            "strategy": run.strategy.name,
                            "model_config": dataclasses.asdict(run.config.model),
                            "resumed_from": run.resumed_from,
                            "loss_history": run.history,
                        }
                    )
                )
            has_files = any(Path(tmp).iterdir())
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(tmp) if has_files else None,
                checkpoint_dir_name=dir_name(run.step),
            )
    except OSError as e:  # disk full, permission denied, read-only: the previous checkpoint stays
        remove_partial(run.config.storage, run.step)
        raise write_failed(run.step, run.saved, run.config.storage, e) from e
    run.saved = run.step
