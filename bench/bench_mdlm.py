"""Masked-diffusion LM pretraining throughput (tokens/s) of the default recipe
(configs/mdlm_small.yaml) under Ray Train, data loading included; and one single-process step of
the diffusion objective next to the autoregressive baseline on the same batch (same network, so
about the same cost: the comparison in the workflow is at an equal token budget and equal compute)."""

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_runs import step_time  # noqa: E402

from data.text.text_sharder import shard_text  # noqa: E402
from families.mdlm.loss import ar_loss, diffusion_loss, forward_process  # noqa: E402
from families.mdlm.workflow import with_tokenizer  # noqa: E402
from infra.ray_cluster import init_ray  # noqa: E402
from pipelines.config import load_recipe  # noqa: E402
from training.config import TaskOptions  # noqa: E402
from training.pretrain import run_training  # noqa: E402

STEPS = 30
RECIPE = Path(__file__).resolve().parents[1] / "configs/mdlm_small.yaml"


def loss_fn(model, tokens):
    """The model's own objective on `tokens`: next-token loss, or one forward-process draw."""
    if model.causal:
        return lambda: ar_loss(model(tokens), tokens)

    def diffusion():
        noisy, masked, p = forward_process(tokens, model.cfg.mask_id, model.cfg.eps)
        return diffusion_loss(model(noisy), tokens, masked, p)

    return diffusion


def main():
    recipe = load_recipe(RECIPE, sys.argv[1:])
    t, g = recipe.train, recipe.train.batch_size * recipe.train.num_workers
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = shard_text(recipe.text, f"{tmp}/shards")
        print(
            f"mdlm: sharding {manifest['input_documents']} documents, "
            f"{manifest['splits']['train']['tokens'] + manifest['splits']['eval']['tokens']} tokens: "
            f"{manifest['seconds']:.1f}s"
        )
        model_cfg = with_tokenizer(recipe.model, f"{tmp}/shards/manifest.json")
        torch.set_num_threads(2)
        tokens = torch.randint(2, model_cfg.vocab_size, (t.batch_size, recipe.text.seq_len))
        models = {o: dataclasses.replace(model_cfg, objective=o).build() for o in ("diffusion", "autoregressive")}
        times = {o: step_time(m, loss_fn(m, tokens)) for o, m in models.items()}
        n = t.batch_size * recipe.text.seq_len
        print(
            f"mdlm: one step, single process, 2 threads, batch {t.batch_size} x {recipe.text.seq_len}: "
            + ", ".join(f"{o} {s * 1e3:.0f} ms ({n / s:.0f} tokens/s)" for o, s in times.items())
        )
        tcfg = dataclasses.replace(t, epochs=1, epoch_samples=g * STEPS, checkpoint_every=STEPS)
        start = time.time()
        out = run_training(
            tcfg,
            model_cfg,
            f"{tmp}/shards/manifest.json",
            Path(tmp) / "train",
            task=TaskOptions(seq_len=recipe.text.seq_len),
        )
        wall = time.time() - start
    print(
        f"mdlm: Ray Train, {t.num_workers} workers x {t.batch_size} sequences of {recipe.text.seq_len} tokens: "
        f"{out['samples_per_s'] * recipe.text.seq_len:.0f} tokens/s ({out['samples_per_s']:.1f} sequences/s) "
        f"over {STEPS} steps (first excluded, data loading included); fit() wall {wall:.0f}s incl. set-up"
    )


if __name__ == "__main__":
    main()
