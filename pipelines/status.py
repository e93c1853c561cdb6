"""`make status`: every workflow under a runs folder or an S3 storage prefix, one line per step:
its state, attempt and Ray Train worker-group restarts, how long it ran (or has been running), and
its headline numbers (a running training step: step of total, ETA and loss, pipelines/progress.py;
a failed one: its error); a step whose code changed since it ran is marked stale."""

from __future__ import annotations

import time

from infra.clock import duration
from infra.storage import Store, join
from pipelines.code_version import code_hash
from pipelines.lease import holder_of
from pipelines.progress import step_store, train_summary, training_progress
from pipelines.workflow import read_json

# how a step's numbers read on its line (a metric not named here: `name 0.1234`)
LABELS = {
    "zeroshot_top1": "zero-shot top-1 {:.3f}",
    "i2t_R5": "i2t R@5 {:.3f}",
    "t2i_R5": "t2i R@5 {:.3f}",
    "itm_i2t_R5": "ITM i2t R@5 {:.3f}",
    "itm_t2i_R5": "ITM t2i R@5 {:.3f}",
    "itc_i2t_R5": "ITC i2t R@5 {:.3f}",
    "finetune_accuracy": "fine-tuned acc {:.3f}",
    "scratch_accuracy": "from-scratch acc {:.3f}",
    "probe_accuracy": "linear probe acc {:.3f}",
    "accuracy": "linear probe acc {:.3f}",
    "eval_reconstruction_loss": "reconstruction loss {:.4f}",
    "bleu4": "BLEU-4 {:.3f}",
    "cider": "CIDEr {:.3f}",
    "bound_perplexity": "perplexity <= {:.2f}",
    "ar_perplexity": "AR perplexity {:.2f}",
    "masked_accuracy": "masked acc {:.3f}",
    "response_nll_sft": "SFT response NLL {:.3f}",
    "zeroshot_top1_gain": "zero-shot {:+.3f}",  # a comparison's gains (CLIP's curate.compare)
    "i2t_R5_gain": "i2t R@5 {:+.3f}",
    "t2i_R5_gain": "t2i R@5 {:+.3f}",
    "final_loss": "loss {:.3f}",
    "mfu": "MFU {:.1%}",
    "samples_per_s": "{:.0f} samples/s",
    "samples": "{:d} samples",
    "train_samples": "train {:d}",
    "eval_samples": "held out {:d}",
    "images_kept": "{:d} images kept",
    "model_uri": "{}",
}
# a step's headline: the metrics its family declares for it (`<step>/<metric>`, Family.headline),
# then these, the first HEADLINE_MAX found in its outputs (and their "metrics")
GENERIC = tuple(LABELS)
HEADLINE_MAX = 3


def list_workflows(root: str) -> list[dict]:
    """Every workflow under `root` (the runs folder or the S3 storage) with its steps' records."""
    out = []
    base = Store(root)
    for wf_id in base.list_dirs():
        store = Store(join(root, wf_id))
        wf = read_json(store, "workflow.json")
        if wf is None:
            continue
        wf["step_records"] = [
            read_json(store, f"steps/{n}.json") or {"name": n, "status": "pending"} for n in wf.get("steps", [])
        ]
        for r in wf["step_records"]:  # a step whose code changed since it ran: it reruns next time
            r["stale"] = bool(r.get("code")) and code_hash(r["code"]["paths"]) != r["code"]["hash"]
        wf["held_by"] = holder_of(store)
        out.append(wf)
    return out


def curation_headline(outputs: dict) -> str:
    """A curation step's counts (pipelines/curate_step.py: `scored` and `removed` by reason), e.g.
    `scored 450, kept 337, removed low_clip_score 113 (P 0.62 R 0.70), semantic_duplicate 0 (R 0.00)`:
    precision and recall against the source's known noise when it declares some."""
    removed = outputs["removed"]
    measured = [k.rpartition("_")[0] for k in outputs if k.endswith(("_precision", "_recall"))]
    parts = []
    for reason in dict.fromkeys([*removed, *measured]):
        pr = [
            f"{m[0].upper()} {outputs[f'{reason}_{m}']:.2f}"
            for m in ("precision", "recall")
            if f"{reason}_{m}" in outputs
        ]
        parts.append(f"{reason} {removed.get(reason, 0)}" + (f" ({' '.join(pr)})" if pr else ""))
    return f"scored {outputs['scored']:.0f}, kept {outputs['kept']:.0f}, removed " + (", ".join(parts) or "none")


def headline(outputs: dict, step: str = "", declared: tuple = ()) -> str:
    """The first HEADLINE_MAX numbers of a step's outputs, e.g. `zero-shot top-1 0.401, i2t R@5
    0.572, t2i R@5 0.587`: its family's `declared` ones for `step` first, then the GENERIC ones; a
    curation step's counts (curation_headline)."""
    if isinstance(outputs.get("removed"), dict) and isinstance(outputs.get("scored"), (int, float)):
        return curation_headline(outputs)
    found = {**outputs, **(outputs.get("metrics") or {})}
    own = [k.partition("/")[2] for k in declared if k.partition("/")[0] == step]
    parts: list[str] = []
    for key in dict.fromkeys([*own, *GENERIC]):
        value = found.get(key)
        if value is None or isinstance(value, (bool, dict, list)):
            continue
        try:
            parts.append(LABELS.get(key, key + " {:.4g}").format(value))
        except (ValueError, TypeError):  # a value of another type than the format's
            continue
        if len(parts) == HEADLINE_MAX:
            break
    return ", ".join(parts)


def progress_text(p: dict) -> str:
    """`step 520/975 (53%) ETA 3m48s  loss 2.910` of a running training step."""
    total = p.get("total")
    text = f"step {p['step']}/{total} ({p['step'] / total:.0%})" if total else f"step {p['step']}"
    if p.get("eta_s") is not None:
        text += f" ETA {duration(p['eta_s'])}"
    if p.get("loss") is not None:
        text += f"  loss {p['loss']:.3f}"
    return text


def _attempts(rec: dict, restarts: int) -> str:
    if not rec.get("attempts"):
        return ""
    more = f" ({restarts} restart{'s' * (restarts != 1)})" if restarts else ""
    return f"attempt {rec['attempts']}{more}"


def step_line(
    wf: dict, rec: dict, root: str, tracking_uri: str = "", runs_dir: str = "runs", declared=(), width: int = 10
) -> str:
    """One line: name (in `width` columns), state, attempt (restarts), duration, headline numbers or
    progress or error."""
    state = rec["status"]
    running = state == "running"
    if running and not wf.get("held_by"):
        state = "stalled"  # the record says running, but no live run holds the workflow's lease
    store = step_store(root, wf["id"], rec)
    train = train_summary(store)
    # running: since it started; stalled: unknown (its driver died some time after that)
    seconds = time.time() - rec["started"] if state == "running" and rec.get("started") else rec.get("seconds")
    if running and store is not None and (train or rec.get("mlflow_run_id")):
        p = training_progress(store, train, tracking_uri, runs_dir, rec)
        if state == "stalled":
            p.pop("eta_s", None)
        detail = progress_text(p) if p["step"] or p["total"] else ""
    elif state in ("failed", "interrupted") and rec.get("error"):
        detail = f"error: {rec['error'].splitlines()[0][:100]}"
    else:
        detail = headline(rec.get("outputs") or {}, rec["name"], declared) if state == "done" else ""
    if rec.get("stale"):
        detail += "  (stale: code changed)"
    line = (
        f"  - {rec['name']:<{width}} {state:<9} {_attempts(rec, train.get('restarts', 0)):<22} {duration(seconds):>7}"
    )
    return f"{line}  {detail}".rstrip()


def print_status(root: str, tracking_uri: str = "", runs_dir: str = "runs", headlines: dict | None = None) -> None:
    """Every workflow under `root`; MLflow (for a running training step's progress) at
    `tracking_uri`, else the one the run recorded, else the embedded store under `runs_dir`;
    `headlines`: family kind -> the `<step>/<metric>` it declares (a workflow recorded before
    workflows named their family gets every family's)."""
    headlines = headlines or {}
    every = tuple(dict.fromkeys(k for keys in headlines.values() for k in keys))
    wfs = list_workflows(root)
    if not wfs:
        print(f"no workflows under {root}/")
    for wf in wfs:
        print(
            f"{wf['id']}  [{wf.get('status', '?')}]  recipe={wf.get('recipe', '?')}  runs={wf.get('runs')}"
            f"  mlflow={wf.get('mlflow_run_id')}"
        )
        if wf.get("held_by"):
            print(f"  running now: {wf['held_by']}")
        elif wf.get("status") == "running":
            print("  no live run holds it (its driver is gone): run the same workflow again to resume")
        keys = headlines.get(wf.get("family", ""), every)
        width = max([10, *(len(r["name"]) for r in wf["step_records"])])
        for r in wf["step_records"]:
            print(step_line(wf, r, root, tracking_uri, runs_dir, keys, width))
