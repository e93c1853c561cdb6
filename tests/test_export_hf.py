"""CLIP to and from Hugging Face transformers: the exported folder loads with the real library
(CLIPModel, AutoTokenizer, AutoProcessor) and computes the same embeddings and token ids; a
transformers checkpoint starts a CLIP (`train.init_from: hf:<dir>`); what has no counterpart is
refused, naming it. Every reference model is built here, randomly initialised, saved to tmp_path."""

import dataclasses
import json

import pytest
import torch

from families.clip.config import ClipModelConfig
from families.errors import ExportError
from pipelines.config import ConfigError, load_recipe
from tests.conftest import CLIP_SMALL

TINY = dict(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    vision_heads=2,
    text_width=48,
    text_layers=2,
    text_heads=2,
    context_length=16,
)
CAPTIONS = [
    "A photo of a cat!",
    "Ünïcödé, naïve café — 東京 🙂",
    "hello,world...   spaces\tand\ttabs",
    "it's 3 o'clock; isn't it?",
    "x" * 200,
    "émoji: 🐱‍👤 (ninja cat) & <tags>",
    "",
]


def _model_file(tmp_path, m, seed=0, scale=0.05):
    """A model.pt of model section `m` with every weight (biases, norms, the patch bias) moved away
    from its init by noise of `scale`."""
    torch.manual_seed(seed)
    model = m.build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "model_config": dataclasses.asdict(m), "step": 0, "strategy": "ddp"}, path)
    return model, path


def _features(out):
    return out.pooler_output if hasattr(out, "pooler_output") else out


def test_an_exported_clip_loads_in_transformers_with_equal_embeddings_and_token_ids(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel

    from data.loading.tokenizer import get_tokenizer
    from pipelines.export import export

    m = ClipModelConfig(**TINY)
    model, path = _model_file(tmp_path, m)
    out = export(str(path), str(tmp_path), "hf", tmp_path / "exported")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    hf = CLIPModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ours = get_tokenizer(m.context_length)(CAPTIONS)
    theirs = tok(CAPTIONS, padding="max_length", max_length=m.context_length, truncation=True, return_tensors="pt")
    mask = theirs["attention_mask"].bool()
    for i, caption in enumerate(CAPTIONS):  # the same ids up to the end token (they pad with it, we with 0)
        n = int(mask[i].sum())
        assert theirs["input_ids"][i, :n].tolist() == ours[i, :n].tolist(), caption
        assert not ours[i, n:].any()
    images = torch.randn(4, 3, m.image_size, m.image_size)
    with torch.no_grad():
        img = model.encode_image(images, normalize=False) - _features(hf.get_image_features(pixel_values=images))
        txt = model.encode_text(torch.from_numpy(ours), normalize=False) - _features(
            hf.get_text_features(input_ids=theirs["input_ids"], attention_mask=theirs["attention_mask"])
        )
    assert img.abs().max() <= 1e-5 and txt.abs().max() <= 1e-5, (img.abs().max(), txt.abs().max())
    assert hf.logit_scale.item() == pytest.approx(model.logit_scale.item())
    proc = AutoProcessor.from_pretrained(out).image_processor  # the evaluation's preprocessing
    from data.loading.pixels import MEAN, STD

    assert proc.crop_size["height"] == m.image_size and proc.size["shortest_edge"] == m.image_size
    assert proc.image_mean == pytest.approx(MEAN.tolist()) and proc.image_std == pytest.approx(STD.tolist())


def test_a_transformers_clip_starts_a_clip_with_its_embeddings(tmp_path, monkeypatch):
    # a CLIPModel made and randomly initialised by transformers itself, saved; `train.init_from: hf:`
    from transformers import CLIPConfig, CLIPModel

    from data.loading.tokenizer import get_tokenizer
    from families.clip.hf import hf_config
    from training.config import RunConfig, TaskOptions
    from training.tasks import make_task

    m = ClipModelConfig(**TINY)
    tok = get_tokenizer(m.context_length)
    torch.manual_seed(1)
    hf = CLIPModel(CLIPConfig(**hf_config(m, tok.vocab_size, tok.sot, tok.eot))).eval()
    hf.save_pretrained(tmp_path / "hf")
    recipe = load_recipe(
        CLIP_SMALL, [f"model.{k}={v}" for k, v in TINY.items()] + [f"train.init_from=hf:{tmp_path / 'hf'}"]
    )
    task = make_task(
        RunConfig(model=recipe.model, train=recipe.train, task=TaskOptions(init_from=recipe.train.init_from))
    )
    model = task.build().eval()
    ids = torch.from_numpy(tok(CAPTIONS[:3]))
    images = torch.randn(2, 3, m.image_size, m.image_size)
    with torch.no_grad():
        assert (
            model.encode_image(images, normalize=False) - _features(hf.get_image_features(pixel_values=images))
        ).abs().max() <= 1e-5
        # HF pools at the first end token: our ids padded with 0 end where theirs would
        assert (
            model.encode_text(ids, normalize=False) - _features(hf.get_text_features(input_ids=ids))
        ).abs().max() <= 1e-5


def test_a_checkpoint_with_no_counterpart_or_another_shape_is_refused_naming_the_field(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    from data.loading.tokenizer import get_tokenizer
    from families.clip.hf import hf_config

    m = ClipModelConfig(**TINY)
    tok = get_tokenizer(m.context_length)
    cfg = hf_config(m, tok.vocab_size, tok.sot, tok.eot)
    quick = json.loads(json.dumps(cfg))
    quick["vision_config"]["hidden_act"] = "quick_gelu"  # OpenAI's CLIP activation
    CLIPModel(CLIPConfig(**quick)).save_pretrained(tmp_path / "quick")
    CLIPModel(CLIPConfig(**cfg)).save_pretrained(tmp_path / "ok")
    tiny = [f"model.{k}={v}" for k, v in TINY.items()]
    with pytest.raises(ConfigError, match=r"train.init_from: .*vision_config.hidden_act 'quick_gelu'"):
        load_recipe(CLIP_SMALL, tiny + [f"train.init_from=hf:{tmp_path / 'quick'}"])
    with pytest.raises(ConfigError, match=r"model.vision_width: 96, but the checkpoint hf:.* has 64"):
        load_recipe(CLIP_SMALL, tiny + ["model.vision_width=96", f"train.init_from=hf:{tmp_path / 'ok'}"])
    with pytest.raises(ConfigError, match=r"train.init_from: hf:.*nowhere: no config.json"):
        load_recipe(CLIP_SMALL, tiny + [f"train.init_from=hf:{tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"train.init_from: .*model.pt: a mdlm model starts from no checkpoint"):
        load_recipe(CLIP_SMALL.parent / "mdlm_small.yaml", [f"train.init_from={tmp_path / 'model.pt'}"])


def test_siglip_and_unknown_formats_are_refused_naming_the_layer(tmp_path):
    from families.siglip.config import SigLipModelConfig
    from pipelines.export import export

    _, path = _model_file(tmp_path, SigLipModelConfig(**TINY))
    with pytest.raises(ExportError, match=r"class token \(visual.cls_token\)"):
        export(str(path), str(tmp_path), "hf", tmp_path / "out")
    with pytest.raises(ExportError, match=r"FORMAT 'timm': a siglip model exports to \['hf', 'open_clip'\]"):
        export(str(path), str(tmp_path), "timm", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["hf", "open_clip"])
def test_a_trained_clip_round_trips_with_the_same_metrics(tiny_ddp_run, tiny_manifest, tmp_path, fmt):
    # the tiny 20-step run of the training tests: export it (transformers or open_clip), start a
    # model from the export with train.init_from, and its first evaluation, before any step, is the
    # exported model's (importing either format needs neither library)
    from data.writing.sharder import shard_urls
    from families.clip.evaluate import evaluate_clip
    from families.registry import load_model
    from pipelines.export import export
    from training.config import RunConfig, TaskOptions
    from training.tasks import make_task

    trained, mcfg = load_model(tiny_ddp_run["model"])
    out = export(tiny_ddp_run["model"], str(tmp_path), fmt, tmp_path / "exported")
    recipe = load_recipe(CLIP_SMALL, [f"model.{k}={getattr(mcfg, k)}" for k in TINY] + [f"train.init_from={fmt}:{out}"])
    started = (
        make_task(RunConfig(model=recipe.model, train=recipe.train, task=TaskOptions(init_from=recipe.train.init_from)))
        .build()
        .eval()
    )
    urls = shard_urls(tiny_manifest, "eval")
    with torch.no_grad():
        before, after = (evaluate_clip(m, mcfg, recipe.eval, urls) for m in (trained, started))
    assert before["eval_samples"] > 0 and "zeroshot_top1" in before, before
    for k, v in before.items():
        assert after[k] == pytest.approx(v, abs=1e-6), k
