"""The whole masked-diffusion LM workflow, shrunk: shard -> shard_sft -> pretrain -> pretrain_ar ->
sft -> evaluate on the Shakespeare and WordNet demos; manifests, metrics, sample tables, MLflow,
and a rerun that redoes nothing."""

import json
import math
from pathlib import Path

import pytest

from pipelines.cli import build_workflow
from pipelines.config import load_recipe
from tests.mlflow_checks import assert_mfu_logged

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_mdlm_workflow_end_to_end(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from data.writing.sharder import read_manifest

    recipe = load_recipe(
        ROOT / "configs/mdlm_small.yaml",
        [
            f"runs_dir={tmp_path / 'runs'}",
            "text.sft_limit=1500",
            "train.epoch_samples=1024",
            "train.epochs=1",
            "train.log_every=4",
            "train.checkpoint_every=8",
            "model.width=64",
            "model.layers=2",
            "model.heads=2",
            "sft.epochs=1",
            "eval.lm_sequences=64",
            "eval.mc_samples=2",
            "eval.gen_samples=3",
        ],
    )
    wf, uri = build_workflow(recipe, "mdlm-e2e")
    out = wf.run()

    text = read_manifest(out["shard"]["manifest"])
    vocab = recipe.text.vocab_size
    assert text["vocab_size"] == vocab and text["input_documents"] == 49
    assert text["splits"]["train"]["tokens"] > 1_500_000 and text["splits"]["eval"]["samples"] > 0
    sft = read_manifest(out["shard_sft"]["manifest"])
    assert sft["splits"]["train"]["samples"] + sft["splits"]["eval"]["samples"] + sft["rejected_total"] == 1500
    assert out["pretrain"]["steps"] == out["pretrain_ar"]["steps"] == 16  # the same token budget

    m = out["evaluate"]["metrics"]
    assert all(math.isfinite(v) for v in m.values())
    # 16 steps already beat a uniform guess over the vocabulary; the unigram is fitted to the counts
    assert m["bound_perplexity"] < vocab and m["ar_perplexity"] < vocab and m["unigram_perplexity"] < vocab
    assert 0 < m["masked_accuracy"] < 1 and m["eval_tokens"] == 64 * 128
    assert m["response_nll_sft"] < m["response_nll_pretrained"]  # SFT learnt the answers' form
    evaluate_dir = Path(out["evaluate"]["metrics_file"]).parent
    answers = json.loads((evaluate_dir / "samples_answers.json").read_text())
    assert len(answers) == 3 and all(r["prompt"].startswith("Define ") for r in answers)
    conts = json.loads((evaluate_dir / "samples_continuations.json").read_text())
    assert len(conts) == 3 and {"prompt", "diffusion", "autoregressive", "reference"} <= set(conts[0])

    client = MlflowClient(uri)
    parent_id = json.loads((tmp_path / "runs/mdlm-e2e/workflow.json").read_text())["mlflow_run_id"]
    exp_id = client.get_run(parent_id).info.experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'")}
    assert set(runs) == {"shard", "shard_sft", "pretrain", "pretrain_ar", "sft", "evaluate", "register"}
    assert {"tokens_per_s", "masked_accuracy", "loss"} <= set(runs["pretrain"].data.metrics)
    assert "perplexity" in runs["pretrain_ar"].data.metrics
    for name in ("pretrain", "pretrain_ar", "sft"):
        assert_mfu_logged(client, runs[name].info.run_id)
    assert runs["pretrain_ar"].data.params["model.objective"] == "autoregressive"
    assert runs["sft"].data.params["task.sft"] == "True"
    arts = {a.path for a in client.list_artifacts(runs["evaluate"].info.run_id)}
    assert {"samples_answers.json", "samples_continuations.json", "metrics.json"} <= arts

    # make pull: the tokenizer comes with the model, and decodes what the model reads
    from data.text.bpe import load_tokenizer
    from families.registry import load_model
    from pipelines.pull import pull

    got = pull("mdlm-e2e", str(tmp_path / "runs"), tmp_path / "pulled")
    assert {"model.pt", "tokenizer.json", "metrics.json"} <= set(got["bytes"])
    tok = load_tokenizer(str(tmp_path / "pulled/mdlm-e2e/tokenizer.json"))
    model, mcfg = load_model(tmp_path / "pulled/mdlm-e2e/model.pt")
    assert tok.vocab_size == mcfg.vocab_size == vocab and tok.mask_id == mcfg.mask_id
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"

    # the registry serves the SFT model: the pyfunc's answer is the project's sampler's
    import mlflow
    import pandas as pd
    import torch

    from families.mdlm.sample import generate

    assert out["register"]["model_uri"] == f"models:/{recipe.name}/1"
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(out["register"]["model_uri"]).predict(pd.DataFrame({"prompt": ["Define love"]}))
    sft_model, scfg = load_model(out["sft"]["model"])
    e, ids = recipe.eval, torch.tensor([tok.encode("Define love")])
    with torch.no_grad():
        seq = generate(
            sft_model,
            ids,
            e.gen_length,
            e.block_length,
            e.gen_steps,
            scfg.mask_id,
            e.temperature,
            torch.Generator().manual_seed(recipe.train.seed),
        )
    assert served["text"][0] == tok.decode(seq[0, ids.shape[1] :], stop_at_eos=True)

    again = wf.run()  # everything done: nothing is redone
    assert again["evaluate"] == out["evaluate"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs/mdlm-e2e/steps").glob("*.json")]
    assert len(records) == 7 and all(r["attempts"] == 1 for r in records)
