"""Curation's scorer from outside the workflow (`curate.scorer`): a registered model
(models:/<name>/<version>), a transformers folder (hf:<dir>) or an open_clip folder (open_clip:<dir>)
resolves before any work and embeds as the source model itself does (1e-5), in its own
normalisation; a bad value fails naming curate.scorer and the value, when the recipe loads or the
workflow is built; with such a scorer the workflow has no teacher step. Every model is tiny and
random, built here and saved to tmp_path: nothing is downloaded."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from config.errors import ConfigError
from families.clip.config import ClipModelConfig
from families.clip.curate import ScorerFactory
from families.clip.scorer_source import resolve_scorer
from families.registry import FAMILIES  # noqa: F401  # the families registered: their model kinds
from pipelines.family import model_classes
from tests.conftest import CLIP_SMALL
from tests.test_export_hf import CAPTIONS, TINY, _model_file

OTHER = dict(mean=[0.5, 0.45, 0.4], std=[0.25, 0.2, 0.3])  # a normalisation that is not ours


def _pixels(m, seed=0) -> np.ndarray:
    """A batch as the scorer gets it: normalised by the evaluation's MEAN / STD."""
    from data.loading.pixels import MEAN, STD

    rng = np.random.default_rng(seed)
    x = rng.random((3, 3, m.image_size, m.image_size), dtype=np.float32)  # [0, 1] pixels
    return ((x - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)


def _as(pixels: np.ndarray, mean, std) -> torch.Tensor:
    """The same images normalised by `mean` / `std` instead (float64, then float32)."""
    from data.loading.pixels import MEAN, STD

    x = pixels.astype(np.float64) * STD[:, None, None] + MEAN[:, None, None]
    return torch.from_numpy(((x - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]).astype(np.float32))


def _ours(model, m, pixels):
    from data.loading.tokenizer import get_tokenizer

    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(pixels))
        txt = model.encode_text(torch.from_numpy(get_tokenizer(m.context_length)(CAPTIONS[:3])))
    return img.numpy(), txt.numpy()


def _scorer(value, tracking_uri="", root=""):
    source, record = resolve_scorer(value, tracking_uri, root, model_classes())
    return ScorerFactory(source, tuple(model_classes().values()))(), source, record


def _close(a, b):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5


def _recipe(tmp_path, scorer, *more):
    from pipelines.config import load_recipe

    sets = [f"runs_dir={tmp_path / 'runs'}", "curate.enabled=true", f"curate.scorer={json.dumps(scorer)}", *more]
    return load_recipe(CLIP_SMALL, sets)


# --- models:/<name>/<version> -----------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A tiny CLIP registered as models:/tiny-scorer/1 (from workflow wf-scorer) and an MAE version
    (a model without a text tower) as models:/tiny-mae/1, in a sqlite registry."""
    from mlflow.tracking import MlflowClient

    from infra.tracking import Tracker
    from pipelines.register import register_model

    tmp = tmp_path_factory.mktemp("registry")
    m = ClipModelConfig(**TINY)
    model, path = _model_file(tmp, m, seed=4)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    run = Tracker(uri).start("tests", "register", artifact_location=(tmp / "artifacts").as_uri())
    register_model(str(path), "tiny-scorer", "wf-scorer", uri, run.run_id, tmp)
    run.end()
    client = MlflowClient(uri)  # a version without the pyfunc: only its tags are read before refusing it
    client.create_registered_model("tiny-mae")
    mae = client.create_model_version("tiny-mae", str(tmp), tags={"workflow_id": "wf-mae", "model_kind": "mae"})
    assert str(mae.version) == "1"
    return {"uri": uri, "model": model, "m": m, "path": path}


def test_a_registered_model_scores_as_itself_from_its_workflow_or_the_registry(registry, tmp_path):
    from infra.storage import Store

    m, pixels = registry["m"], _pixels(registry["m"])
    ours = _ours(registry["model"], m, pixels)
    # no workflow wf-scorer under this root: the registry's own copy of the model file
    scorer, source, record = _scorer("models:/tiny-scorer/1", registry["uri"], str(tmp_path / "runs"))
    assert source.endswith("/artifacts/model.pt") and record["kind"] == "clip" and record["workflow"] == "wf-scorer"
    _close(scorer.embed(pixels, CAPTIONS[:3])[0], ours[0])
    _close(scorer.embed(pixels, CAPTIONS[:3])[1], ours[1])

    # the workflow it was registered from under this root: its final model, as `make pull` finds it
    store = Store(str(tmp_path / "runs" / "wf-scorer"))
    store.write_bytes("pretrain-1/model.pt", registry["path"].read_bytes())
    store.write_text("workflow.json", json.dumps({"id": "wf-scorer", "final_model_step": "pretrain"}))
    for step, out in {"shard": {}, "pretrain": {"model": store.uri("pretrain-1/model.pt")}, "evaluate": {}}.items():
        store.write_text(f"steps/{step}.json", json.dumps({"name": step, "status": "done", "outputs": out}))
    scorer, source, _ = _scorer("models:/tiny-scorer/1", registry["uri"], str(tmp_path / "runs"))
    assert source == store.uri("pretrain-1/model.pt")
    img, txt = scorer.embed(pixels, CAPTIONS[:3])
    _close(img, ours[0])
    _close(txt, ours[1])


def test_the_workflow_with_a_registered_scorer_has_no_teacher_and_records_its_scorer(registry, tmp_path):
    from pipelines.cli import build_workflow

    recipe = _recipe(tmp_path, "models:/tiny-scorer/1", f"tracking.tracking_uri={registry['uri']}")
    wf, _ = build_workflow(recipe, "scored")
    assert [s.name for s in wf.steps] == ["shard", "curate", "pretrain", "evaluate", "register"]
    curate = next(s for s in wf.steps if s.name == "curate")
    assert curate.deps == ["shard"] and curate.config["scorer"]["scorer"] == "models:/tiny-scorer/1"
    assert curate.config["scorer"]["model"].endswith("model.pt")
    teacher, _ = build_workflow(_recipe(tmp_path, "teacher"), "taught")
    assert [s.name for s in teacher.steps][:3] == ["shard", "teacher", "curate"]


@pytest.mark.parametrize(
    "value, message",
    [
        ("models:/tiny-scorer/7", r"models:/tiny-scorer/7: no such registered model version"),
        ("models:/nothing-here/1", r"models:/nothing-here/1: no such registered model version"),
        ("models:/tiny-mae/1", r"models:/tiny-mae/1 is a mae model: only a model with image and text towers"),
    ],
)
def test_a_registered_scorer_that_cannot_score_fails_when_the_workflow_is_built(registry, tmp_path, value, message):
    from pipelines.cli import build_workflow

    recipe = _recipe(tmp_path, value, f"tracking.tracking_uri={registry['uri']}")
    with pytest.raises(ConfigError, match=r"^curate\.scorer: " + message) as e:
        build_workflow(recipe, "scored")
    assert e.value.key == "curate.scorer"
    assert not (tmp_path / "runs" / "scored").exists()  # nothing started


# --- hf:<dir> ----------------------------------------------------------------------------------


def _hf_clip(folder, tokenizer_from, hidden_act="quick_gelu", **norm):
    """A random transformers CLIPModel (quick GELU: a CLIP this project's towers do not compute)
    saved in `folder`, with the tokenizer files of an export and a preprocessor of `norm`."""
    from transformers import CLIPConfig, CLIPModel

    common = dict(hidden_act=hidden_act, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(1)
    hf = CLIPModel(
        CLIPConfig(
            projection_dim=24,
            text_config=dict(common, hidden_size=48, vocab_size=49408, max_position_embeddings=16),
            vision_config=dict(common, hidden_size=48, image_size=32, patch_size=8),
        )
    ).eval()
    hf.save_pretrained(folder)
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            (folder / f.name).write_bytes(f.read_bytes())
    pre = json.loads((tokenizer_from / "preprocessor_config.json").read_text())
    if norm:
        pre.update(image_mean=norm["mean"], image_std=norm["std"])
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return hf


@pytest.fixture()
def exported_hf(tmp_path):
    from families.clip.hf import export_hf

    m = ClipModelConfig(**TINY)
    model, _ = _model_file(tmp_path, m, seed=2)
    return model, m, export_hf(model, m, tmp_path / "exported-hf")


def test_an_hf_folder_scores_as_transformers_runs_it_in_its_own_normalisation(exported_hf, tmp_path):
    from transformers import AutoTokenizer

    _, m, exported = exported_hf
    hf = _hf_clip(tmp_path / "hf", exported, **OTHER)
    scorer, source, record = _scorer(f"hf:{tmp_path / 'hf'}")
    assert source == f"hf:{tmp_path / 'hf'}" and record["folder_fingerprint"] and scorer.image_size == 32
    pixels = _pixels(m)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")(
        CAPTIONS[:3], padding="max_length", max_length=16, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=_as(pixels, **OTHER)).pooler_output
        txt = hf.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    got = scorer.embed(pixels, CAPTIONS[:3])
    _close(got[0], torch.nn.functional.normalize(img, dim=-1))
    _close(got[1], torch.nn.functional.normalize(txt, dim=-1))


def test_an_exported_hf_folder_scores_as_the_model_it_was_exported_from(exported_hf):
    model, m, exported = exported_hf
    scorer, _, _ = _scorer(f"hf:{exported}")
    pixels = _pixels(m, seed=5)
    img, txt = scorer.embed(pixels, CAPTIONS[:3])
    ours = _ours(model, m, pixels)
    _close(img, ours[0])
    _close(txt, ours[1])


# --- open_clip:<dir> -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_an_open_clip_folder_scores_as_its_model_in_its_own_normalisation(tmp_path, kind):
    from families.clip.openclip import CONFIG, export_open_clip
    from families.siglip.config import SigLipModelConfig

    m = (ClipModelConfig if kind == "clip" else SigLipModelConfig)(**TINY)
    model, _ = _model_file(tmp_path, m, seed=3)
    folder = export_open_clip(model, m, tmp_path / "oc")
    pixels = _pixels(m, seed=6)
    scorer, _, _ = _scorer(f"open_clip:{folder}")
    ours = _ours(model, m, pixels)
    _close(scorer.embed(pixels, CAPTIONS[:3])[0], ours[0])
    _close(scorer.embed(pixels, CAPTIONS[:3])[1], ours[1])

    cfg = json.loads((folder / CONFIG).read_text())
    cfg["preprocess_cfg"].update(OTHER)  # a model trained on other normalised pixels sees those
    (folder / CONFIG).write_text(json.dumps(cfg))
    img, _ = _scorer(f"open_clip:{folder}")[0].embed(pixels, CAPTIONS[:3])
    with torch.no_grad():
        _close(img, model.encode_image(_as(pixels, **OTHER)))


# --- bad values ------------------------------------------------------------------------------------


def _bert(folder):
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(folder)
    return folder


def _quick_gelu_open_clip(folder):
    from families.clip.openclip import CONFIG, WEIGHTS, open_clip_config

    folder.mkdir()
    cfg = open_clip_config(ClipModelConfig(**TINY), 49408)
    cfg["model_cfg"]["quick_gelu"] = True
    (folder / CONFIG).write_text(json.dumps(cfg))
    (folder / WEIGHTS).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "value, message",
    [
        ("teachr", r"'teachr': the scorer is 'teacher' \(a short pretrain"),
        ("clip:/some/dir", r"'clip:/some/dir': the scorer is 'teacher'"),
        ("models:/tiny-scorer", r"'models:/tiny-scorer': a registered model is models:/<name>/<version>"),
        (
            "models:/tiny-scorer/latest",
            r"'models:/tiny-scorer/latest': a registered model is models:/<name>/<version> \(the version a number\)",
        ),
        ("hf:", r"'hf:': name the folder, hf:<dir>"),
        ("hf:{tmp}/missing", r"'hf:.*/missing': no folder .*/missing"),
        ("hf:{tmp}", r"'hf:.*': no config.json in "),
        ("hf:{bert}", r"'hf:.*bert': a BertModel has no image and text embeddings to score with"),
        ("open_clip:{tmp}", r"'open_clip:.*': needs open_clip_config.json and open_clip_model.safetensors"),
        ("open_clip:{quick}", r"'open_clip:.*quick': model_cfg.quick_gelu true: the blocks here use exact GELU"),
    ],
)
def test_a_bad_scorer_fails_when_the_recipe_loads_naming_the_field_and_value(tmp_path, value, message):
    value = value.format(tmp=tmp_path, bert=_bert(tmp_path / "bert"), quick=_quick_gelu_open_clip(tmp_path / "quick"))
    with pytest.raises(ConfigError, match=r"curate\.scorer: " + message) as e:
        _recipe(tmp_path, value)
    assert e.value.key == "curate.scorer"
    with pytest.raises(ConfigError, match=r"^curate\.scorer: " + message):
        resolve_scorer(value, "", str(tmp_path), model_classes())  # and when the workflow is built


def test_an_hf_folder_whose_preprocessing_does_not_fit_its_tower_is_refused(exported_hf, tmp_path):
    _, _, exported = exported_hf
    pre = json.loads((exported / "preprocessor_config.json").read_text())
    pre["crop_size"] = {"height": 224, "width": 224}
    (exported / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ConfigError, match=r"its preprocessor makes 224 px images; its vision tower takes 32 px"):
        _recipe(tmp_path, f"hf:{exported}")


# --- in the workflow -----------------------------------------------------------------------------


@pytest.mark.slow
def test_an_hf_folder_scores_the_shards_in_the_workflow_as_it_does_in_process(ray_local, exported_hf, tmp_path):
    """shard -> curate with a transformers folder as scorer (no teacher): the Ray Data actors load it
    from the factory, and each stored score is the cosine its embed gives in this process."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from data.loading.pixels import eval_pixels
    from data.loading.shard_reading import eval_samples
    from data.writing.shard_io import shard_urls
    from pipelines.cli import build_workflow

    hf = _hf_clip(tmp_path / "hf", exported_hf[2], **OTHER)
    assert hf is not None
    sets = ["data.source=demo:emoji-noisy", "data.limit=120", "data.shard_samples=60", "curate.clusters=2"]
    recipe = _recipe(tmp_path, f"hf:{tmp_path / 'hf'}", *sets, "curate.actors=1", "curate.dedup_eps=0.0")
    wf, uri = build_workflow(recipe, "folder-scored")
    wf.steps = [s for s in wf.steps if s.name in ("shard", "curate")]
    out = wf.run()
    assert out["curate"]["scorer"]["scorer"] == f"hf:{tmp_path / 'hf'}"
    run = MlflowClient(uri).get_run(
        json.loads((tmp_path / "runs/folder-scored/steps/curate.json").read_text())["mlflow_run_id"]
    )
    assert run.data.params["scorer.scorer"] == f"hf:{tmp_path / 'hf'}"

    scorer, _, _ = _scorer(f"hf:{tmp_path / 'hf'}")
    url = shard_urls(out["shard"]["manifest"], "train")[0]
    samples = list(eval_samples([url]))
    img, txt = scorer.embed(
        np.stack([eval_pixels(s["jpg"], 32) for s in samples]), [s["caption"] or "" for s in samples]
    )
    scores = pq.read_table(
        next((tmp_path / "runs/folder-scored").glob(f"curate-*/scores/{Path(url).stem}.scores.parquet"))
    )
    assert scores.column("key").to_pylist() == [s["key"] for s in samples]
    _close(scores.column("score").to_numpy(), (img * txt).sum(axis=1))


def test_the_pretrains_budget_and_the_comparison_leave_the_teacher_and_curation_done(tmp_path):
    """The teacher's fingerprint is its own budget (train with curate.teacher_epochs), curation's
    its settings without `compare`: a longer pretrain, or the comparison switched on, reruns the
    pretrains and what follows, never the teacher or the scoring."""
    from pipelines.cli import build_workflow

    def fingerprints(*more):
        wf, _ = build_workflow(_recipe(tmp_path, "teacher", *more), "budget")
        return wf._fingerprints({})

    base = fingerprints("train.epochs=30")
    longer = fingerprints("train.epochs=60", "curate.compare=true")
    assert {s: base[s] == longer[s] for s in base} == {
        "shard": True,
        "teacher": True,
        "curate": True,
        "pretrain": False,
        "evaluate": False,
        "register": False,
    }
    assert fingerprints("train.epochs=30", "curate.teacher_epochs=3")["teacher"] != base["teacher"]
