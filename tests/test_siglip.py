"""SigLIP, the family in families/siglip/: its recipe loads through the registry, its model starts
at scale 10 and bias -10 and learns both, an exported model loads back as SigLIP, and the
workflow (shard -> pretrain -> CLIP's zero-shot and retrieval evaluation) runs end to end with its
loss and bias logged to MLflow."""

import json
import math
from pathlib import Path

import pytest
import torch

from families.clip import workflow as clip_workflow
from pipelines.cli import build_workflow
from pipelines.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.vision_layers=1",
    "model.text_layers=1",
    "model.vision_width=32",
    "model.vision_heads=2",
    "model.text_width=32",
    "model.embed_dim=16",
]


def test_the_recipe_names_the_family_and_its_model_starts_as_the_paper(tmp_path):
    from families.siglip.config import SigLipModelConfig
    from families.siglip.model import SigLIP
    from training.config import RunConfig
    from training.tasks import make_task

    recipe = load_recipe(ROOT / "configs/siglip_small.yaml", TINY)
    assert isinstance(recipe.model, SigLipModelConfig) and recipe.family.steps is clip_workflow.steps
    model = recipe.model.build()
    assert isinstance(model, SigLIP)
    assert float(model.logit_scale.exp()) == pytest.approx(10.0) and float(model.logit_bias) == -10.0
    task = make_task(RunConfig(model=recipe.model))
    images = torch.randn(4, 3, 64, 64)
    text = torch.tensor([[49406, 320 + i, 49407] + [0] * 21 for i in range(4)])

    class Plain:  # the strategy interface, single process
        module = model

        def forward(self, *x):
            return model(*x)

    loss, logs = task.loss(Plain(), {"image": images, "text": text}, "cpu")
    loss.backward()
    assert float(logs["bias"]) == -10.0 and float(logs["temperature"]) == pytest.approx(0.1)
    assert model.logit_bias.grad.abs().item() > 0 and model.logit_scale.grad.abs().item() > 0
    with pytest.raises(Exception, match="model.kind"):
        load_recipe(ROOT / "configs/siglip_small.yaml", ["model.kind=sigliq"])


def test_an_exported_siglip_model_loads_back(tmp_path):
    import dataclasses

    from families.registry import load_model

    recipe = load_recipe(ROOT / "configs/siglip_small.yaml", TINY)
    model = recipe.model.build()
    with torch.no_grad():
        model.logit_bias.fill_(-3.5)
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(recipe.model)}, tmp_path / "model.pt")
    loaded, mcfg = load_model(tmp_path / "model.pt")
    assert type(loaded).__name__ == "SigLIP" and mcfg == recipe.model and float(loaded.logit_bias) == -3.5


@pytest.mark.slow
def test_siglip_workflow_end_to_end(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    recipe = load_recipe(
        ROOT / "configs/siglip_small.yaml",
        [
            f"runs_dir={tmp_path / 'runs'}",
            "data.limit=500",
            "data.shard_samples=250",
            "train.batch_size=32",
            "train.epochs=2",
            "train.checkpoint_every=5",
            "train.log_every=2",
            "train.warmup_steps=2",
            *TINY,
        ],
    )
    wf, uri = build_workflow(recipe, "siglip-e2e")
    out = wf.run()
    m = out["evaluate"]["metrics"]
    assert m["eval_samples"] > 0 and 0.0 <= m["i2t_R5"] <= 1.0 and m["zeroshot_classes"] >= 2
    losses = json.loads(Path(out["pretrain"]["loss_history"]).read_text())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    client = MlflowClient(uri)
    pre = [
        r
        for r in client.search_runs([client.get_experiment_by_name("siglip-small").experiment_id])
        if r.info.run_name == "pretrain"
    ][0]
    assert pre.data.params["model.kind"] == "siglip" and "bias" in pre.data.metrics
    assert wf.run() == out  # done: nothing runs again
