"""The tables of bench/bench_shard_scale.py: one per local run, one per HTTP cell, the driver-RSS
table, and the summary of every cell's ratios against its target."""

from __future__ import annotations

TARGET_LOCAL = 1.3  # today's sharder / the old commit's, local files (Ray-up and whole process)
TARGET_HTTP_RAY = 1.5  # project with Ray up / img2dataset's whole process, every HTTP cell
TARGETS_HTTP_WHOLE = ((20_000, 1.5), (5_000, 1.0))  # whole process / img2dataset's, from N URLs on


def _output_cell(o: dict) -> str:
    return f"{o['tars']}, {o['jpgs']}, {o['first_size']}, {o['jpg_mean_bytes']:.0f}"


def _run_cells(n: int, r: dict) -> dict:
    """A project run's cells (today's sharder or an old commit's); {} when it failed."""
    if "failed" in r:
        return {}
    first = r["first"]
    cells = {
        "rate": n / first["seconds"],
        "process_rate": n / r["process_s"],
        "seconds": f"{first['seconds']:.1f} / {r['process_s']:.1f}",
        "ray": f"{r['ray_start_s']:.1f}",
        "samples": str(first["samples"]),
        "output": _output_cell(r["output"]),
        "rss": f"{r['rss_peak_mib']:.0f}",
    }
    if "requests" in first:
        cells["requests"] = f"{first['requests']['total'] / n:.2f}"
    if "rerun" in r:
        cells["rerun"] = f"{r['rerun']['requests']['total']}, {r['rerun']['seconds']:.1f}"
    return cells


def _i2d_cells(n: int, r: dict) -> dict:
    if "failed" in r:
        return {}
    return {
        "process_rate": n / r["process_s"],
        "seconds": f"{r['process_s']:.1f}",
        "samples": str(r["samples"]),
        "output": _output_cell(r["output"]),
        "requests": f"{r['requests']['total'] / n:.2f}",
    }


ROWS = [
    ("rate", "images/s, shard_dataset (Ray started)"),
    ("process_rate", "images/s, whole process"),
    ("seconds", "seconds, shard_dataset / whole process"),
    ("ray", "seconds, Ray start"),
    ("samples", "samples written"),
    ("output", "output: tars, JPEGs, pixels, mean bytes"),
    ("requests", "requests per image"),
    ("rerun", "rerun (all shards complete): requests, s"),
    ("rss", "driver peak RSS, MiB"),
]
LOCAL_ROWS = [row for row in ROWS if row[0] not in ("requests", "rerun")]


def _print_columns(title: str, rows: list, names: list[str], cells: list[dict], ratio: bool) -> None:
    print(f"\n== {title} ==")
    width = max(len(label) for _, label in rows)
    print(f"{'':{width}}" + "".join(f"  {name:>20}" for name in names) + (f"  {'ratio':>7}" if ratio else ""))
    for key, label in rows:
        values = [c.get(key, "-") for c in cells]
        line = f"{label:{width}}" + "".join(f"  {f'{v:.1f}' if isinstance(v, float) else v:>20}" for v in values)
        if ratio and all(isinstance(v, float) for v in values):
            line += f"  {values[0] / values[1]:>6.2f}x"
        print(line)


def _failures(n: int, runs: dict) -> None:
    for who, res in runs.items():
        if res.get("failed") == "skipped":
            continue
        if "failed" in res:
            print(f"{who} FAILED ({res['failed']}): the end of {res['log']} is above (--workdir keeps it)")
        elif res.get("first", res)["samples"] != n:
            print(f"warning: {who} wrote {res.get('first', res)['samples']} samples of {n}")


def print_local_table(n: int, label: str, per_shard: int, rev: str, today: dict, old: dict) -> None:
    cells = [_run_cells(n, today), _run_cells(n, old)]
    _print_columns(
        f"local files: {n} {label} JPEGs, {per_shard} per shard; today's sharder vs {rev}'s",
        LOCAL_ROWS,
        ["today", rev],
        cells,
        ratio=True,
    )
    _failures(n, {"today's sharder": today, f"{rev}'s sharder": old})


def print_http_table(title: str, n: int, project: dict, i2d: dict) -> None:
    p, i = _run_cells(n, project), _i2d_cells(n, i2d)
    _print_columns(title, ROWS, ["project", "img2dataset"], [p, i], ratio=False)
    if p and i:
        print(
            f"ratio project/img2dataset images/s: {p['rate'] / i['process_rate']:.2f} (shard_dataset), "
            f"{p['process_rate'] / i['process_rate']:.2f} (whole process)"
        )
    _failures(n, {"project": project, "img2dataset": i2d})
    if p and project["rerun"]["requests"]["total"]:
        print(
            f"warning: the rerun made {project['rerun']['requests']['total']} requests "
            f"(0 expected: all shards complete)"
        )


def print_rss_table(results: dict) -> None:
    print("\n== project driver peak RSS by records ==")
    print(
        f"{'records':>9}  {'samples':>9}  {'shard s':>8}  {'process s':>9}  {'RSS after ray MiB':>17}  "
        f"{'peak RSS MiB':>12}  {'vs first':>8}"
    )
    base = next((r["rss_peak_mib"] for r in results.values() if "failed" not in r), None)
    for n, r in results.items():
        if "failed" in r:
            print(f"{n:>9}  FAILED ({r['failed']}): the end of {r['log']} is above (--workdir keeps it)")
            continue
        print(
            f"{n:>9}  {r['first']['samples']:>9}  {r['first']['seconds']:>8.1f}  {r['process_s']:>9.1f}  "
            f"{r['rss_after_ray_mib']:>17.0f}  {r['rss_peak_mib']:>12.0f}  {r['rss_peak_mib'] / base:>7.2f}x"
        )


# ---------------------------------------------------------------------------------------------
# the summary: one row per (cell, measure), each with its target


def _row(cell: str, measure: str, mine, ref, target, requests: str = "-", missing: str = "FAILED") -> dict:
    return {
        "cell": cell,
        "measure": measure,
        "project": mine,
        "reference": ref,
        "target": target,
        "requests": requests,
        "missing": missing,
    }


def local_rows(n: int, label: str, rev: str, today: dict, old: dict) -> list[dict]:
    t, o = _run_cells(n, today), _run_cells(n, old)
    missing = "skipped" if old.get("failed") == "skipped" else "FAILED"
    cell = f"local {n} {label} files"
    return [
        _row(cell, f"Ray-up / {rev} Ray-up", t.get("rate"), o.get("rate"), TARGET_LOCAL, missing=missing),
        _row(cell, f"whole / {rev} whole", t.get("process_rate"), o.get("process_rate"), TARGET_LOCAL, missing=missing),
    ]


def http_rows(n: int, label: str, latency_ms: float, project: dict, i2d: dict) -> list[dict]:
    p, i = _run_cells(n, project), _i2d_cells(n, i2d)
    missing = "skipped" if i2d.get("failed") == "skipped" else "FAILED"
    cell = f"http {label} {n} URLs {latency_ms:g} ms"
    requests = f"{p.get('requests', '-')} / {i.get('requests', '-')}"
    whole = next((t for least, t in TARGETS_HTTP_WHOLE if n >= least), None)
    ref = i.get("process_rate")
    return [
        _row(cell, "Ray-up / img2dataset whole", p.get("rate"), ref, TARGET_HTTP_RAY, requests, missing),
        _row(cell, "whole / img2dataset whole", p.get("process_rate"), ref, whole, requests, missing),
    ]


def print_summary(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n== summary: images/s of the project (today's sharder) against the reference, ratio and target ==")
    print("   (local: the reference is the old commit's sharder, same measure; HTTP: img2dataset's whole process;")
    print("    requests/image: project / img2dataset)")
    cw, mw = max(len(r["cell"]) for r in rows), max(len(r["measure"]) for r in rows)
    print(
        f"{'cell':{cw}}  {'measure':{mw}}  {'project':>9}  {'reference':>9}  {'ratio':>7}  {'target':>7}  "
        f"{'check':>7}  {'requests/image':>14}"
    )
    for r in rows:
        mine, ref, target = r["project"], r["reference"], r["target"]
        ratio = mine / ref if mine is not None and ref is not None else None
        if ratio is None:
            check = r["missing"] if ref is None else "FAILED"
        else:
            check = "-" if target is None else ("ok" if ratio >= target else "BELOW")
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"{r['cell']:{cw}}  {r['measure']:{mw}}  {f(mine, '.1f'):>9}  {f(ref, '.1f'):>9}  "
            f"{f(ratio, '.2f') + ('x' if ratio is not None else ''):>7}  "
            f"{'-' if target is None else f'>={target:.1f}x':>7}  {check:>7}  {r['requests']:>14}"
        )
