"""`make status`: every workflow under a runs folder or an S3 storage prefix, with its steps'
records (status, attempts, fingerprint, time, error) and whether a step's code changed since it ran."""

from __future__ import annotations

from infra.storage import Store, join
from pipelines.code_version import code_hash
from pipelines.lease import holder_of
from pipelines.workflow import read_json


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


def print_status(root: str) -> None:
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
        for r in wf["step_records"]:
            extra = f"{r.get('seconds', 0):.1f}s" if r.get("seconds") else ""
            err = f"  error: {r['error'][:120]}" if r.get("error") else ""
            status = f"{r['status']} (stale: code changed)" if r.get("stale") else r["status"]
            print(
                f"  - {r['name']:<10} {status:<12} attempts={r.get('attempts', 0)} "
                f"fp={r.get('fingerprint', '-')} {extra}{err}"
            )
