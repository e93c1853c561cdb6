"""Durable workflow: finished steps are skipped, a failed one resumes, a changed config reruns
from the first affected step; records are on disk before a step counts as done."""

import json

import pytest

from pipelines.status import list_workflows
from pipelines.workflow import Step, Workflow


class Calls:
    def __init__(self):
        self.n = {}
        self.fail = set()

    def step(self, name):
        def fn(ctx):
            self.n[name] = self.n.get(name, 0) + 1
            if name in self.fail:
                raise RuntimeError(f"{name} broke")
            (ctx.dir / "work.txt").write_text("partial work survives")
            return {"value": name + "+" + "+".join(v["value"] for v in ctx.inputs.values())}

        return fn


def _wf(tmp_path, calls, a_cfg=1, b_cfg=2, c_cfg=3):
    steps = [
        Step("a", calls.step("a"), {"x": a_cfg}),
        Step("b", calls.step("b"), {"x": b_cfg}, deps=["a"]),
        Step("c", calls.step("c"), {"x": c_cfg}, deps=["b"]),
    ]
    return Workflow("wf1", tmp_path, steps)


def test_rerun_skips_finished_steps(tmp_path):
    calls = Calls()
    out = _wf(tmp_path, calls).run()
    assert out["c"]["value"] == "c+b+a+"
    assert _wf(tmp_path, calls).run() == out
    assert calls.n == {"a": 1, "b": 1, "c": 1}


def test_failed_step_is_resumed_not_redone_before_it(tmp_path):
    calls = Calls()
    calls.fail = {"b"}
    with pytest.raises(RuntimeError, match="b broke"):
        _wf(tmp_path, calls).run()
    rec = json.loads((tmp_path / "wf1" / "steps" / "b.json").read_text())
    assert rec["status"] == "failed" and "b broke" in rec["error"] and rec["attempts"] == 1
    calls.fail = set()
    _wf(tmp_path, calls).run()
    assert calls.n == {"a": 1, "b": 2, "c": 1}
    rec = json.loads((tmp_path / "wf1" / "steps" / "b.json").read_text())
    assert rec["status"] == "done" and rec["attempts"] == 2
    assert [h["status"] for h in rec["history"]] == ["failed", "done"]
    # the retried step found its working folder (same fingerprint) again
    assert (tmp_path / "wf1" / f"b-{rec['fingerprint']}" / "work.txt").exists()


def test_changed_config_reruns_from_the_first_affected_step(tmp_path):
    calls = Calls()
    _wf(tmp_path, calls).run()
    _wf(tmp_path, calls, b_cfg=20).run()
    assert calls.n == {"a": 1, "b": 2, "c": 2}
    _wf(tmp_path, calls, b_cfg=20, c_cfg=30).run()
    assert calls.n == {"a": 1, "b": 2, "c": 3}
    _wf(tmp_path, calls, a_cfg=10, b_cfg=20, c_cfg=30).run()
    assert calls.n == {"a": 2, "b": 3, "c": 4}


def test_interrupt_leaves_a_resumable_record(tmp_path):
    calls = Calls()

    def interrupted(ctx):
        raise KeyboardInterrupt

    steps = [Step("a", calls.step("a"), {}), Step("b", interrupted, {}, deps=["a"])]
    with pytest.raises(KeyboardInterrupt):
        Workflow("wf2", tmp_path, steps).run()
    wfs = {w["id"]: w for w in list_workflows(tmp_path)}
    assert wfs["wf2"]["status"] == "interrupted"
    assert [r["status"] for r in wfs["wf2"]["step_records"]] == ["done", "interrupted"]


def test_dependency_must_run_first(tmp_path):
    with pytest.raises(ValueError, match="depends on 'b'"):
        Workflow("bad", tmp_path, [Step("a", lambda c: {}, {}, deps=["b"]), Step("b", lambda c: {}, {})])


def test_a_step_reruns_when_its_code_changed_and_status_says_so(tmp_path):
    """The fingerprint covers the code a step runs: a changed file under a step's code reruns it and
    the steps after it, not those before; `status` marks the step stale before the rerun."""
    calls = Calls()
    code_a, code_b = tmp_path / "code_a", tmp_path / "code_b"
    for d in (code_a, code_b):
        d.mkdir()
        (d / "mod.py").write_text("X = 1\n")

    def wf():
        return Workflow(
            "wf1",
            tmp_path / "runs",
            [
                Step("a", calls.step("a"), {"x": 1}, code=(str(code_a),)),
                Step("b", calls.step("b"), {"x": 2}, deps=["a"], code=(str(code_b),)),
                Step("c", calls.step("c"), {"x": 3}, deps=["b"]),
            ],
        )

    wf().run()
    assert not any(r["stale"] for r in list_workflows(str(tmp_path / "runs"))[0]["step_records"])
    (code_b / "mod.py").write_text("X = 2   # a fixed loss\n")
    stale = {r["name"]: r["stale"] for r in list_workflows(str(tmp_path / "runs"))[0]["step_records"]}
    assert stale == {"a": False, "b": True, "c": False}
    wf().run()
    assert calls.n == {"a": 1, "b": 2, "c": 2}
    wf().run()
    assert calls.n == {"a": 1, "b": 2, "c": 2}


def test_rerun_forces_a_step_and_those_after_it_once(tmp_path):
    calls = Calls()
    _wf(tmp_path, calls).run()
    steps = _wf(tmp_path, calls).steps
    Workflow("wf1", tmp_path, steps, rerun=("b",)).run()
    assert calls.n == {"a": 1, "b": 2, "c": 2}
    _wf(tmp_path, calls).run()  # without --rerun: nothing runs again
    assert calls.n == {"a": 1, "b": 2, "c": 2}
    with pytest.raises(ValueError, match="--rerun z: workflow wf1 has no such step \\(steps: a, b, c\\)"):
        Workflow("wf1", tmp_path, steps, rerun=("z",))
