"""A step's code fingerprint covers the modules it imports (its family, the shared layers), so an
edit to one family never marks another family's steps stale: on a copy of the project, each
family's model is edited in turn and every recipe's step code hashes are compared with the
unedited copy's."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "clip": "clip_small",
    "siglip": "siglip_small",
    "mae": "mae_small",
    "blip": "blip_small",
    "mdlm": "mdlm_small",
}
BUILDS_ON = {"siglip": {"clip"}, "blip": {"clip"}}  # a family built on another's public parts
HASHES = """
import json, sys, tempfile
from pipelines.cli import build_workflow
from pipelines.config import load_recipe
out = {}
for kind, name in json.loads(sys.argv[1]).items():
    wf, _ = build_workflow(load_recipe(f"configs/{name}.yaml", [f"runs_dir={tempfile.mkdtemp()}"]), "x")
    out[kind] = wf.code_hashes
print(json.dumps(out))
"""


def _hashes(root: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", HASHES, json.dumps(RECIPES)], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_edit_to_one_family_marks_only_its_own_steps_and_those_built_on_it(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".*", "runs", "bench", "tests", "pulled", "exported", "*.egg-info", "__pycache__", "models"
        ),
    )
    shutil.copytree(ROOT / "models", copy / "models", ignore=shutil.ignore_patterns("__pycache__"))
    before = _hashes(copy)
    assert set(before["clip"]) == {"shard", "pretrain", "evaluate", "register"}
    for edited in RECIPES:
        loss = copy / "families" / edited / "model.py"
        text = loss.read_text()
        loss.write_text(text + "\n# an edit\n")
        after = _hashes(copy)
        loss.write_text(text)
        changed = {kind for kind in RECIPES if after[kind] != before[kind]}
        assert edited in changed, edited
        assert changed <= {edited} | {k for k, on in BUILDS_ON.items() if edited in on}, (edited, changed)
        assert all(after[edited][s] == before[edited][s] for s in after[edited] if s.startswith("shard")), (
            f"{edited}: an edit to its model reruns its sharding"
        )
        for kind in changed - {edited}:  # which steps of a family built on the edited one
            print(edited, "->", kind, sorted(s for s in after[kind] if after[kind][s] != before[kind][s]))


def test_callbacks_passed_to_a_step_are_not_its_code():
    # a rerun without the fault a test injected (or with another observer) finds the step done
    from pipelines.code_version import step_code
    from pipelines.common import train_step
    from pipelines.config import load_recipe
    from tests.faults import faults

    recipe = load_recipe(ROOT / "configs/clip_small.yaml")
    plain = step_code(train_step(recipe, "", ()), config={"model": recipe.model})
    watched = step_code(train_step(recipe, "", (faults(fail_at_step=6),)), config={"model": recipe.model})
    assert plain == watched and "families/clip/model.py" in plain and "training/engine.py" in plain
