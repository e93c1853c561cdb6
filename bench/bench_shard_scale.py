"""Sharding images/s of the project: today's sharder vs an older commit's (local files) and vs img2dataset (HTTP).

The project's sharder is data.writing.sharder.shard_dataset.

What it measures, on one machine, in one run (every output is WebDataset tars: 64 px centre crop,
JPEG quality 90, 1,000 samples per shard; no held-out split):

- local files (`--only local`): N (`--n-local`, default 100,000) distinct 96x96 JPEGs (coloured
  blocks) listed by a Parquet manifest of absolute paths (`url`, `caption`), sharded by today's
  sharder and by the sharder of commit a5b5353 (`--old-rev`; its two-pass design, run from a
  temporary git worktree with its own DataConfig), each in a child process: images/s with Ray up
  (`shard_dataset`'s wall time), images/s of the whole process (launch to the end of the run),
  samples written, driver peak RSS, and the ratio today / old for each.
- HTTP (`--only http`): a grid of latency (`--latency-ms`, default 0 and 200 ms) x URLs (`--sizes`,
  default 5,000 and 20,000) x source images (`--images`, default 96x96 and 320x240). The JPEGs are
  served by a loopback HTTP server in its own process (one per image set) that sleeps the latency
  per request and counts requests. Per cell, the same manifest is sharded by
  - the project, in a child process: Ray's start time, `shard_dataset`'s wall time (Ray up), the
    whole process, driver peak RSS, requests per image, and a rerun on the same folder (its
    requests should be 0: every shard is complete);
  - img2dataset 1.47.0 (its own venv, bench/out/venv-img2dataset, made on first use): its whole
    process (it has no Ray-up figure), requests per image and successes (`*_stats.json`);
  with the ratios project (Ray up) / img2dataset and project (whole) / img2dataset.
- A summary of every cell's ratios against its target ('ok' or 'BELOW'): local >= 1.3x the old
  commit (Ray up and whole process alike); HTTP with Ray up >= 1.5x img2dataset; HTTP whole process
  >= 1.0x from 5,000 URLs, >= 1.5x from 20,000 (no target below 5,000).
- `--rss N1 N2 ...` (instead of the above): the project driver's peak RSS when sharding N local
  tiny PNGs (16x16, each distinct, listed by a Parquet manifest of file paths), one child process
  per N (the target: 1M records within 1.2x of 100k).

Images are made once per work folder (`--workdir` keeps them between runs).

    .venv/bin/python bench/bench_shard_scale.py
    .venv/bin/python bench/bench_shard_scale.py --n-local 1000 --sizes 500 --images 96x96 --latency-ms 0
    .venv/bin/python bench/bench_shard_scale.py --only http --sizes 5000 --skip-img2dataset
    .venv/bin/python bench/bench_shard_scale.py --rss 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from shard_bench_images import jpeg_name, jpeg_set, make_rss_images, write_manifest
from shard_bench_runs import ensure_img2dataset, run_img2dataset, run_old, run_project
from shard_bench_server import server_call, start_server, stop_server
from shard_bench_tables import (
    http_rows,
    local_rows,
    print_http_table,
    print_local_table,
    print_rss_table,
    print_summary,
)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr)


def _config(args, source: str) -> dict:
    """The settings both sharders (and img2dataset, in its own flags) run with."""
    return {
        "source": source,
        "image_size": args.image_size,
        "resize_mode": "center_crop",
        "jpeg_quality": args.quality,
        "shard_samples": args.shard_samples,
        "holdout_fraction": 0.0,
        "split_by": None,
        "min_image_size": 16,
    }


def local_mode(args, work: Path, summary: list) -> dict:
    n, (w, h) = args.n_local, args.local_image
    folder, t = jpeg_set(work, n, w, h, args.quality)
    _log(f"{n} local {w}x{h} JPEGs in {folder} ({t:.1f}s to make)")
    manifest = work / f"local-manifest-{n}.parquet"
    write_manifest(
        manifest, [str((folder / jpeg_name(i)).resolve()) for i in range(n)], "synthetic image {i}: coloured blocks"
    )
    config = _config(args, str(manifest))
    _log("local files: today's sharder ...")
    today = run_project(work, f"local-{n}-today", config, args.sets, None, False, args.run_timeout)
    old = {"failed": "skipped", "log": "-"}
    if not args.skip_old:
        _log(f"local files: the sharder of {args.old_rev} (git worktree) ...")
        old = run_old(args.old_rev, work, f"local-{n}-{args.old_rev}", config, args.run_timeout)
    label = f"{w}x{h}"
    print_local_table(n, label, args.shard_samples, args.old_rev, today, old)
    summary += local_rows(n, label, args.old_rev, today, old)
    return {"today": today, args.old_rev: old}


def http_mode(args, work: Path, summary: list) -> dict:
    exe = None if args.skip_img2dataset else ensure_img2dataset()
    results = {}
    most = max(args.sizes)
    for w, h in args.images:
        folder, t = jpeg_set(work, most, w, h, args.quality)
        _log(f"{most} {w}x{h} JPEGs in {folder} ({t:.1f}s to make); starting the server")
        proc, server = start_server(folder, [jpeg_name(i) for i in range(most)])
        try:
            for n in args.sizes:
                manifest = work / f"http-manifest-{w}x{h}-{n}.parquet"
                urls = [f"{server}/img/{jpeg_name(i)}" for i in range(n)]
                write_manifest(manifest, urls, "synthetic image {i}: coloured blocks")
                config = dict(_config(args, str(manifest)), http_timeout_s=30, http_retries=1)
                for latency in args.latency_ms:
                    tag = f"http-{w}x{h}-{n}-lat{latency:g}ms"
                    server_call(server, f"/__reset?latency_ms={latency}")
                    _log(f"{tag}: the project ...")
                    project = run_project(work, f"project-{tag}", config, args.sets, server, True, args.run_timeout)
                    i2d = {"failed": "skipped", "log": "-"}
                    if exe:
                        _log(f"{tag}: img2dataset ...")
                        i2d = run_img2dataset(exe, work, f"img2dataset-{tag}", manifest, args, server, args.run_timeout)
                    print_http_table(
                        f"HTTP: {w}x{h} sources, latency {latency:g} ms, {n} images, {args.shard_samples} per shard",
                        n,
                        project,
                        i2d,
                    )
                    summary += http_rows(n, f"{w}x{h}", latency, project, i2d)
                    results[tag] = {"project": project, "img2dataset": i2d}
        finally:
            stop_server(proc)
    return results


def rss_mode(args, work: Path) -> dict:
    results = {}
    for n in args.rss:
        folder = work / f"rss-images-{n}"
        paths, t = make_rss_images(folder, n)
        manifest = work / f"rss-manifest-{n}.parquet"
        write_manifest(manifest, paths, "tiny image {i}")
        _log(f"{n} PNGs in {folder} ({t:.1f}s to make); sharding ...")
        config = {
            "source": str(manifest),
            "image_size": 16,
            "min_image_size": 8,
            "resize_mode": "center_crop",
            "jpeg_quality": args.quality,
            "shard_samples": 10_000,
            "holdout_fraction": 0.0,
            "split_by": None,
        }
        results[n] = run_project(work, f"rss-{n}", config, args.sets, None, False, args.run_timeout)
        results[n]["images_make_s"] = t
    print_rss_table(results)
    return results


def _size(p: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        p.error(f"'{text}': expected an image size WIDTHxHEIGHT, e.g. 320x240")
    return int(w), int(h)


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--only", choices=["local", "http"], help="run only this part (local files or HTTP; both when not given)"
    )
    p.add_argument("--n-local", type=int, default=100_000, help="local files: images")
    p.add_argument("--local-image", default="96x96", metavar="WxH", help="local files: image size")
    p.add_argument("--old-rev", default="a5b5353", help="local files: the older commit whose sharder is compared")
    p.add_argument("--skip-old", action="store_true", help="local files: today's sharder only")
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="HTTP: URLs per cell")
    p.add_argument("--images", nargs="+", default=["96x96", "320x240"], metavar="WxH", help="HTTP: source image sizes")
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0, 200], help="HTTP: server latency per request")
    p.add_argument("--shard-samples", type=int, default=1000, help="samples per shard, every tool")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the sources and of every output")
    p.add_argument("--image-size", type=int, default=64, help="output side (centre crop)")
    p.add_argument("--fetch-concurrency", type=int, help="today's data.fetch_concurrency")
    p.add_argument("--fetch-per-host", type=int, help="today's data.fetch_per_host")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more DataConfig overrides for today's sharder (e.g. max_parallel_tasks=4)",
    )
    p.add_argument("--i2d-processes", type=int, default=2, help="img2dataset --processes_count")
    p.add_argument("--i2d-threads", type=int, default=64, help="img2dataset --thread_count")
    p.add_argument("--skip-img2dataset", action="store_true")
    p.add_argument(
        "--rss",
        type=int,
        nargs="+",
        metavar="N",
        help="instead: the project driver's peak RSS sharding N local tiny PNGs, per N",
    )
    p.add_argument("--workdir", type=Path, help="keep images, shards and logs here (default: a temp folder, removed)")
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds per sharding run")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    args = p.parse_args(argv)
    args.local_image = _size(p, args.local_image)
    args.images = [_size(p, text) for text in args.images]
    for flag in ("fetch_concurrency", "fetch_per_host"):
        if getattr(args, flag) is not None:
            args.sets.append(f"{flag}={getattr(args, flag)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # tables and progress lines (stderr) in order
    with tempfile.TemporaryDirectory(prefix="bench-shard-scale-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.workdir:  # fresh outputs each run; images are kept
            for old in [*work.glob("*-shards"), *work.glob("*-result.json")]:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        if args.rss:
            results = rss_mode(args, work)
        else:
            results, summary = {}, []
            if args.only in (None, "local"):
                results["local"] = local_mode(args, work, summary)
            if args.only in (None, "http"):
                results["http"] = http_mode(args, work, summary)
            print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
