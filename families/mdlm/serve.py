"""The masked-diffusion language model as an MLflow pyfunc model: a table with a `prompt` column in,
each prompt's generated continuation (`text`) out, sampled as the evaluation samples (semi-
autoregressive blocks, the recipe's `eval.gen_length`, `block_length`, `gen_steps`, `temperature`;
stopped at the end-of-text token). The SFT model when the recipe fine-tunes, else the pretrained one;
the byte-level BPE tokenizer and the sampling settings travel as artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from mlflow.pyfunc import PythonModel

from data.text.bpe import load_tokenizer
from families.mdlm.sample import generate
from training.checkpoint.model_file import load_model


class TextGeneration(PythonModel):
    def __init__(self, model_config: type):
        self.model_config = model_config

    def load_context(self, context):

        self.model, self.mcfg = load_model(context.artifacts["model"], self.model_config)
        self.tokenizer = load_tokenizer(context.artifacts["tokenizer"])
        self.sampling = json.loads(Path(context.artifacts["sampling"]).read_text())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:

        s, out = self.sampling, []
        for prompt in model_input["prompt"]:
            ids = torch.tensor([self.tokenizer.encode(str(prompt))], dtype=torch.long)
            with torch.no_grad():
                seq = generate(
                    self.model,
                    ids,
                    s["gen_length"],
                    s["block_length"],
                    s["gen_steps"],
                    self.mcfg.mask_id,
                    s["temperature"],
                    torch.Generator().manual_seed(s["seed"]),
                )
            out.append(self.tokenizer.decode(seq[0, ids.shape[1] :], stop_at_eos=True))
        return pd.DataFrame({"text": out})


def model_step(recipe):
    return "sft" if recipe.text.sft_source else None


def extra_artifacts(recipe, inputs: dict, scratch: Path) -> dict:
    e = recipe.eval
    path = Path(scratch) / "sampling.json"
    path.write_text(
        json.dumps(
            {
                "gen_length": e.gen_length,
                "block_length": e.block_length,
                "gen_steps": e.gen_steps,
                "temperature": e.temperature,
                "seed": recipe.train.seed,
            }
        )
    )
    return {"tokenizer": inputs["shard"]["tokenizer"], "sampling": str(path)}


def example_input():
    return pd.DataFrame({"prompt": ["To be, or not to be"]})


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "prompt")]), outputs=Schema([ColSpec(DataType.string, "text")])
    )
