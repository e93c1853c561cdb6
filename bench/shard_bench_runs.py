"""The sharding runs of bench/bench_shard_scale.py, each in a process of its own:

- the project's `data.writing.sharder.shard_dataset`, today's (this file run as a child process);
- the same for an older commit's sharder, from a temporary `git worktree` of it (the child runs
  with that tree as cwd and PYTHONPATH, and builds that commit's DataConfig);
- img2dataset, from its own venv (bench/out/venv-img2dataset, made on first use).

A project child writes a JSON result: Ray's start time, the first run (`shard_dataset`'s wall
time, its counts, the server's requests), an optional rerun, the driver's peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
I2D_VENV = REPO / "bench/out/venv-img2dataset"
I2D_REQUIREMENTS = REPO / "bench/img2dataset-requirements.txt"


# ---------------------------------------------------------------------------------------------
# the child process


def _maxrss_mib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across
    fork and exec, so a child started by a parent holding N paths would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _data_config(values: dict, sets: list[str], old: bool):
    """Today's DataConfig (config.typed.build), or an older commit's (pipelines.config._build, or
    the dataclass itself), with `--set` overrides."""
    import yaml

    values = dict(values)
    for item in sets:
        key, _, text = item.partition("=")
        values[key.strip().removeprefix("data.")] = yaml.safe_load(text)
    if old:
        import pipelines.config as pc

        build = getattr(pc, "_build", None)
        return build(pc.DataConfig, values, "data") if build else pc.DataConfig(**values)
    from config.typed import build
    from pipelines.config import DataConfig

    return build(DataConfig, values, "data")


def _timed_shard(shard_dataset, cfg, out: str, server: str | None) -> dict:
    from shard_bench_server import server_call

    if server:
        server_call(server, "/__reset")
    t = time.time()
    m = shard_dataset(cfg, out)
    done = time.time()
    run = {
        "seconds": done - t,
        "done_at": done,
        "samples": m["samples"],
        "input_records": m["input_records"],
        "rejected": m["rejected"],
        "shards_written": m["shards_written"],
        "shards_skipped": m["shards_skipped"],
    }
    if server:
        run["requests"] = server_call(server, "/__stats")
    return run


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    old = bool(spec.get("tree"))
    if not old:  # an old commit's child finds its code on PYTHONPATH (the worktree)
        sys.path.insert(0, str(REPO))
    from infra.ray_cluster import init_ray

    t = time.time()
    init_ray()
    result = {"ray_start_s": time.time() - t, "rss_after_ray_mib": _maxrss_mib()}
    import importlib

    module = "data.sharder" if old else "data.writing.sharder"  # the old commit's data/ was flat
    sharder = importlib.import_module(module)
    shard_dataset = sharder.shard_dataset

    result["sharder_file"] = sharder.__file__
    cfg = _data_config(spec["config"], spec["sets"], old)
    result["config"] = {
        k: getattr(cfg, k) for k in ("fetch_concurrency", "fetch_per_host", "shard_samples") if hasattr(cfg, k)
    }
    result["first"] = _timed_shard(shard_dataset, cfg, spec["out"], spec.get("server"))
    result["rss_first_mib"] = _maxrss_mib()
    if spec.get("rerun"):
        result["rerun"] = _timed_shard(shard_dataset, cfg, spec["out"], spec.get("server"))
    result["rss_peak_mib"] = _maxrss_mib()
    result["worker_sharder_file"] = _worker_module_file(module)  # after the timed runs: no warm-up
    Path(spec["result"]).write_text(json.dumps(result))


def _worker_module_file(name: str) -> str:
    """Where a Ray worker imports `name` from (an old commit's run: its worktree, like the driver)."""
    import importlib

    import ray

    return ray.get(ray.remote(lambda: importlib.import_module(name).__file__).remote())


# ---------------------------------------------------------------------------------------------
# the parent's side


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _run_child(work: Path, name: str, spec: dict, cwd: Path, env: dict, timeout_s: float) -> dict:
    """This file as a child process on `spec`; its result, with `process_s` (launch to the end of
    the first run) and a summary of the tars written."""
    out, log = work / f"{name}-shards", work / f"{name}.log"
    spec = dict(spec, out=str(out), result=str(work / f"{name}-result.json"))
    spec_path = work / f"{name}-spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(env, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    launched = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, __file__, str(spec_path)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                timeout=timeout_s,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not Path(spec["result"]).exists():
        print(
            f"\n!! the sharding run '{name}' failed (exit {rc}); last lines of {log}:\n{_log_tail(log)}\n",
            file=sys.stderr,
        )
        return {"failed": f"exit {rc}", "log": str(log)}
    result = json.loads(Path(spec["result"]).read_text())
    result["process_s"] = result["first"]["done_at"] - launched
    result["output"] = tar_summary(out)
    return result


def run_project(
    work: Path, name: str, config: dict, sets: list[str], server: str | None, rerun: bool, timeout_s: float
) -> dict:
    """Today's sharder, in a child process."""
    spec = {"config": config, "sets": sets, "server": server, "rerun": rerun}
    return _run_child(work, name, spec, REPO, dict(os.environ), timeout_s)


def run_old(rev: str, work: Path, name: str, config: dict, timeout_s: float) -> dict:
    """Commit `rev`'s sharder on the same config, in a child process run from a temporary worktree."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}"], capture_output=True).returncode:
        print(f"\n!! commit {rev} is not in this clone: no old-sharder run\n", file=sys.stderr)
        return {"failed": f"no commit {rev}", "log": "-"}
    with tempfile.TemporaryDirectory(prefix=f"bench-shard-{rev}-") as tmp:
        tree = Path(tmp) / "tree"
        add = subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), rev],
            capture_output=True,
            text=True,
        )
        if add.returncode:
            print(f"\n!! git worktree add {rev} failed:\n{add.stderr}\n", file=sys.stderr)
            return {"failed": "worktree", "log": "-"}
        try:
            env = dict(os.environ, PYTHONPATH=str(tree))
            result = _run_child(work, name, {"config": config, "sets": [], "tree": str(tree)}, tree, env, timeout_s)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    wrong = (
        []
        if "failed" in result
        else [f for f in (result["sharder_file"], result["worker_sharder_file"]) if not f.startswith(str(tree))]
    )
    if wrong:
        print(f"\n!! the '{name}' run imported {wrong[0]}, not {rev}'s sharder\n", file=sys.stderr)
        return {"failed": "wrong sharder", "log": str(work / f"{name}.log")}
    return result


def ensure_img2dataset() -> Path:
    """The img2dataset console script of bench/out/venv-img2dataset (made from the lock file)."""
    stamp = I2D_VENV / f".installed-{hashlib.sha1(I2D_REQUIREMENTS.read_bytes()).hexdigest()[:12]}"
    exe = I2D_VENV / "bin/img2dataset"
    if stamp.exists() and exe.exists():
        return exe
    print(f"[bench] installing img2dataset into {I2D_VENV} (about 30 s)", file=sys.stderr)
    if not (I2D_VENV / "bin/python").exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(I2D_VENV)], check=True)
    subprocess.run(
        [str(I2D_VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check", "-r", str(I2D_REQUIREMENTS)],
        check=True,
    )
    for old in I2D_VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return exe


def run_img2dataset(exe: Path, work: Path, name: str, manifest: Path, args, server: str, timeout_s: float) -> dict:
    from shard_bench_server import server_call

    out, log = work / f"{name}-shards", work / f"{name}.log"
    cmd = [
        str(exe),
        "--url_list",
        str(manifest),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--image_size",
        str(args.image_size),
        "--resize_mode",
        "center_crop",
        "--encode_quality",
        str(args.quality),
        "--encode_format",
        "jpg",
        "--processes_count",
        str(args.i2d_processes),
        "--thread_count",
        str(args.i2d_threads),
        "--number_sample_per_shard",
        str(args.shard_samples),
        "--distributor",
        "multiprocessing",
        "--timeout",
        "30",
        "--retries",
        "1",
        "--resize_only_if_bigger",
        "False",
        "--disable_all_reencoding",
        "False",
        "--enable_wandb",
        "False",
    ]
    # albumentations asks PyPI for a newer version at every import (each worker process) unless told not to
    env = dict(os.environ, WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    server_call(server, "/__reset")
    t = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work, timeout=timeout_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.time() - t
    requests = server_call(server, "/__stats")
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    if rc != 0 or not stats:
        print(
            f"\n!! img2dataset '{name}' failed (exit {rc}); last lines of {log}:\n{_log_tail(log)}\n", file=sys.stderr
        )
        return {"failed": f"exit {rc}", "log": str(log)}
    return {
        "process_s": seconds,
        "requests": requests,
        "samples": sum(s["successes"] for s in stats),
        "failed_to_download": sum(s["failed_to_download"] for s in stats),
        "failed_to_resize": sum(s["failed_to_resize"] for s in stats),
        # img2dataset's own span: first shard's start to last shard's end (no process start-up)
        "shards_span_s": max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats),
        "output": tar_summary(out),
    }


def tar_summary(folder: Path) -> dict:
    """Tars, JPEG members, their mean bytes and the pixel size of the first: is the output alike?"""
    from PIL import Image

    tars = sorted(folder.glob("*.tar"))
    jpgs, jpg_bytes, first = 0, 0, None
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    jpgs += 1
                    jpg_bytes += member.size
                    if first is None:
                        first = Image.open(tar.extractfile(member)).size
    return {
        "tars": len(tars),
        "jpgs": jpgs,
        "jpg_mean_bytes": jpg_bytes / max(1, jpgs),
        "first_size": "x".join(map(str, first)) if first else None,
    }


if __name__ == "__main__":
    child_main(sys.argv[1])
