"""Sharding images from HTTP URLs: the project (data.sharder.shard_dataset) against img2dataset.

What it measures, on one machine, in one run:

- HTTP mode (default): N synthetic, distinct JPEGs (320x240 coloured blocks) served by a loopback
  HTTP server in its own process that sleeps a set latency per request and counts requests. The
  same Parquet manifest (`url`, `caption`) is sharded by both tools into WebDataset tars (64 px
  centre crop, JPEG quality 90, the same samples per shard), once per latency:
  - the project, in a child process: Ray's start time, `shard_dataset`'s wall time, the whole
    process (launch to the end of the first run), the driver's peak RSS, the server requests per
    image, and a rerun on the same folder (its requests should be 0: every shard is complete);
  - img2dataset 1.47.0 (its own venv, bench/out/venv-img2dataset, made on first use): the whole
    process, its requests per image and its successes (`*_stats.json`).
- `--rss N1 N2 ...`: the project driver's peak RSS when sharding N local tiny PNGs (16x16, each
  distinct, listed by a Parquet manifest of file paths), one child process per N (the target: 1M
  records within 1.2x of 100k).

    .venv/bin/python bench/bench_shard_scale.py --n 300 --latency-ms 0
    .venv/bin/python bench/bench_shard_scale.py --rss 100000 1000000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]
I2D_VENV = REPO / "bench/out/venv-img2dataset"
I2D_REQUIREMENTS = REPO / "bench/img2dataset-requirements.txt"
RSS_FOLDER_FILES = 10_000


# ---------------------------------------------------------------------------------------------
# synthetic images

def _jpeg_blocks(i: int, width: int, height: int, quality: int) -> bytes:
    """A grid of flat coloured blocks, grid shape and colours seeded by `i`."""
    import io

    from PIL import Image, ImageDraw

    rng = random.Random(i)
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    cols, rows = rng.randint(2, 6), rng.randint(2, 5)
    for r in range(rows):
        for c in range(cols):
            box = (c * width // cols, r * height // rows, (c + 1) * width // cols - 1, (r + 1) * height // rows - 1)
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _write_jpegs(job: tuple) -> list[str]:
    folder, indices, width, height, quality = job
    digests = []
    for i in indices:
        data = _jpeg_blocks(i, width, height, quality)
        (Path(folder) / f"{i:07d}.jpg").write_bytes(data)
        digests.append(hashlib.sha256(data).hexdigest())
    return digests


def _write_pngs(job: tuple) -> None:
    """Tiny PNGs: pixel (0, 0) is the index in base 256 (distinct up to 2**24), plus a gradient."""
    import numpy as np
    from PIL import Image

    folder, start, stop, size = job
    Path(folder).mkdir(parents=True, exist_ok=True)
    ramp = (np.add.outer(np.arange(size), np.arange(size)) * 4).astype(np.uint8)[..., None]
    for i in range(start, stop):
        base = np.array([i & 255, (i >> 8) & 255, (i >> 16) & 255], dtype=np.uint8)
        pixels = base + ramp  # uint8 wraps; ramp is 0 at (0, 0)
        Image.fromarray(pixels, "RGB").save(Path(folder) / f"{i:07d}.png", optimize=False)


def _parallel(fn, jobs: list) -> list:
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(fn, jobs, chunksize=1)


def make_http_images(folder: Path, n: int, width: int, height: int, quality: int) -> float:
    """N distinct JPEGs in `folder` (kept when already complete); returns seconds spent."""
    marker = folder / ".complete"
    if marker.exists():
        return 0.0
    t = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    step = 250
    jobs = [(str(folder), range(s, min(n, s + step)), width, height, quality) for s in range(0, n, step)]
    digests = [d for part in _parallel(_write_jpegs, jobs) for d in part]
    if len(set(digests)) != n:
        raise SystemExit(f"synthetic images are not distinct: {n - len(set(digests))} repeats")
    marker.touch()
    return time.time() - t


def make_rss_images(folder: Path, n: int, size: int = 16) -> tuple[list[str], float]:
    """N distinct tiny PNGs in sub-folders of 10k; returns their paths and seconds spent."""
    paths = [str(folder / f"{i // RSS_FOLDER_FILES:04d}" / f"{i:07d}.png") for i in range(n)]
    marker = folder / ".complete"
    if marker.exists():
        return paths, 0.0
    t = time.time()
    jobs = []
    for s in range(0, n, RSS_FOLDER_FILES // 4):   # quarter-folders: the pool stays busy at the end
        jobs.append((str(folder / f"{s // RSS_FOLDER_FILES:04d}"), s, min(n, s + RSS_FOLDER_FILES // 4), size))
    _parallel(_write_pngs, jobs)
    marker.touch()
    return paths, time.time() - t


def write_manifest(path: Path, urls: list[str], caption: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": urls, "caption": [caption.format(i=i) for i in range(len(urls))]}), path)


# ---------------------------------------------------------------------------------------------
# the image server: a separate process, so it does not share the GIL with the measured code

class ImageServer(ThreadingHTTPServer):
    request_queue_size = 2048
    daemon_threads = True

    def __init__(self, images: dict[str, bytes], latency_s: float):
        super().__init__(("127.0.0.1", 0), ImageHandler)
        self.images = images
        self.latency_s = latency_s
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.errors = 0

    def count(self, path: str) -> None:
        with self.lock:
            self.counts[path] += 1

    def stats(self, per_path: bool) -> dict:
        with self.lock:
            out = {"total": sum(self.counts.values()), "distinct": len(self.counts),
                   "max_per_path": max(self.counts.values(), default=0), "errors": self.errors,
                   "latency_ms": self.latency_s * 1000}
            if per_path:
                out["paths"] = dict(self.counts)
        return out

    def reset(self, latency_ms: str | None) -> None:
        with self.lock:
            self.counts.clear()
            self.errors = 0
            if latency_ms is not None:
                self.latency_s = float(latency_ms) / 1000

    def handle_error(self, request, client_address):  # a client that hung up: counted, not printed
        with self.lock:
            self.errors += 1


class ImageHandler(BaseHTTPRequestHandler):
    """GET /img/<name>.jpg (counted, after the latency); /__stats[?paths=1]; /__reset[?latency_ms=]."""
    protocol_version = "HTTP/1.1"   # keep-alive for clients that pool connections
    disable_nagle_algorithm = True  # headers and body in one go: no delayed-ACK stalls on kept-alive connections

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, kind: str, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _image(self, head: bool) -> None:
        url = urlsplit(self.path)
        srv: ImageServer = self.server
        if url.path.startswith("/__"):
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/__stats":
                return self._send(200, json.dumps(srv.stats(query.get("paths") == "1")).encode(), "application/json")
            if url.path == "/__reset":
                srv.reset(query.get("latency_ms"))
                return self._send(200, b"{}", "application/json")
        srv.count(url.path)
        if srv.latency_s:
            time.sleep(srv.latency_s)
        body = srv.images.get(url.path)
        if body is None:
            return self._send(404, b"not found", "text/plain", head)
        self._send(200, body, "image/jpeg", head)

    def do_GET(self):
        self._image(head=False)

    def do_HEAD(self):
        self._image(head=True)


def _serve(image_dir: str, conn) -> None:
    images = {f"/img/{p.name}": p.read_bytes() for p in sorted(Path(image_dir).glob("*.jpg"))}
    server = ImageServer(images, 0.0)
    conn.send(server.server_address[1])
    server.serve_forever(poll_interval=0.5)


def start_server(image_dir: Path) -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(str(image_dir), child), daemon=True, name="image-server")
    proc.start()
    if not parent.poll(120):
        proc.terminate()
        raise SystemExit("the image server did not start")
    return proc, f"http://127.0.0.1:{parent.recv()}"


def server_call(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------------------------
# the project, in a child process (this script again, with --child SPEC)

def _maxrss_mib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across
    fork and exec, so a child started by a parent holding N paths would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def _data_config(values: dict, sets: list[str]):
    import yaml

    from pipelines.config import DataConfig
    from config.typed import build

    values = dict(values)
    for item in sets:
        key, _, text = item.partition("=")
        values[key.strip().removeprefix("data.")] = yaml.safe_load(text)
    return build(DataConfig, values, "data")


def _timed_shard(shard_dataset, cfg, out: str, server: str | None) -> dict:
    if server:
        server_call(server, "/__reset")
    t = time.time()
    m = shard_dataset(cfg, out)
    done = time.time()
    run = {"seconds": done - t, "done_at": done, "samples": m["samples"], "input_records": m["input_records"],
           "rejected": m["rejected"], "shards_written": m["shards_written"], "shards_skipped": m["shards_skipped"]}
    if server:
        run["requests"] = server_call(server, "/__stats")
    return run


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    sys.path.insert(0, str(REPO))
    from infra.ray_cluster import init_ray

    t = time.time()
    init_ray()
    result = {"ray_start_s": time.time() - t, "rss_after_ray_mib": _maxrss_mib()}
    from data.sharder import shard_dataset

    cfg = _data_config(spec["config"], spec["sets"])
    result["config"] = {k: getattr(cfg, k) for k in ("fetch_concurrency", "fetch_per_host", "shard_samples")
                        if hasattr(cfg, k)}
    result["first"] = _timed_shard(shard_dataset, cfg, spec["out"], spec.get("server"))
    result["rss_first_mib"] = _maxrss_mib()
    if spec.get("rerun"):
        result["rerun"] = _timed_shard(shard_dataset, cfg, spec["out"], spec.get("server"))
    result["rss_peak_mib"] = _maxrss_mib()
    Path(spec["result"]).write_text(json.dumps(result))


def _log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_project(work: Path, name: str, config: dict, sets: list[str], server: str | None, rerun: bool,
                timeout_s: float) -> dict:
    """Shard in a child process; its result, with `process_s` (launch to the end of the first run)."""
    out, log = work / f"{name}-shards", work / f"{name}.log"
    spec = {"config": config, "sets": sets, "out": str(out), "server": server, "rerun": rerun,
            "result": str(work / f"{name}-result.json")}
    spec_path = work / f"{name}-spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    launched = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], stdout=f,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not Path(spec["result"]).exists():
        print(f"\n!! the project run '{name}' failed (exit {rc}); last lines of {log}:\n{_log_tail(log)}\n",
              file=sys.stderr)
        return {"failed": f"exit {rc}", "log": str(log)}
    result = json.loads(Path(spec["result"]).read_text())
    result["process_s"] = result["first"]["done_at"] - launched
    result["output"] = tar_summary(out)
    return result


# ---------------------------------------------------------------------------------------------
# img2dataset, in its own venv

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
    subprocess.run([str(I2D_VENV / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                    "-r", str(I2D_REQUIREMENTS)], check=True)
    for old in I2D_VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return exe


def run_img2dataset(exe: Path, work: Path, name: str, manifest: Path, args, server: str, timeout_s: float) -> dict:
    out, log = work / f"{name}-shards", work / f"{name}.log"
    cmd = [str(exe), "--url_list", str(manifest), "--input_format", "parquet", "--url_col", "url",
           "--caption_col", "caption", "--output_format", "webdataset", "--output_folder", str(out),
           "--image_size", str(args.image_size), "--resize_mode", "center_crop",
           "--encode_quality", str(args.quality), "--encode_format", "jpg",
           "--processes_count", str(args.i2d_processes), "--thread_count", str(args.i2d_threads),
           "--number_sample_per_shard", str(args.shard_samples), "--distributor", "multiprocessing",
           "--timeout", "30", "--retries", "1", "--resize_only_if_bigger", "False",
           "--disable_all_reencoding", "False", "--enable_wandb", "False"]
    # albumentations asks PyPI for a newer version at every import (each worker process) unless told not to
    env = dict(os.environ, WANDB_MODE="disabled", NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    server_call(server, "/__reset")
    t = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work,
                                timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.time() - t
    requests = server_call(server, "/__stats")
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    if rc != 0 or not stats:
        print(f"\n!! img2dataset '{name}' failed (exit {rc}); last lines of {log}:\n{_log_tail(log)}\n",
              file=sys.stderr)
        return {"failed": f"exit {rc}", "log": str(log)}
    return {"process_s": seconds, "requests": requests, "samples": sum(s["successes"] for s in stats),
            "failed_to_download": sum(s["failed_to_download"] for s in stats),
            "failed_to_resize": sum(s["failed_to_resize"] for s in stats),
            # img2dataset's own span: first shard's start to last shard's end (no process start-up)
            "shards_span_s": max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats),
            "output": tar_summary(out)}


# ---------------------------------------------------------------------------------------------
# checks and the report

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
    return {"tars": len(tars), "jpgs": jpgs, "jpg_mean_bytes": jpg_bytes / max(1, jpgs),
            "first_size": "x".join(map(str, first)) if first else None}


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _project_cells(n: int, r: dict) -> dict:
    if "failed" in r:
        return {}
    first, rerun = r["first"], r["rerun"]
    return {"rate": n / first["seconds"], "process_rate": n / r["process_s"],
            "seconds": f"{first['seconds']:.1f} / {r['process_s']:.1f}", "ray": f"{r['ray_start_s']:.1f}",
            "samples": str(first["samples"]), "output": _output_cell(r["output"]),
            "requests": f"{first['requests']['total'] / n:.2f}",
            "rerun": f"{rerun['requests']['total']}, {rerun['seconds']:.1f}", "rss": f"{r['rss_peak_mib']:.0f}"}


def _i2d_cells(n: int, r: dict) -> dict:
    if "failed" in r:
        return {}
    return {"process_rate": n / r["process_s"], "seconds": f"{r['process_s']:.1f}", "samples": str(r["samples"]),
            "output": _output_cell(r["output"]), "requests": f"{r['requests']['total'] / n:.2f}"}


def _output_cell(o: dict) -> str:
    return f"{o['tars']}, {o['jpgs']}, {o['first_size']}, {o['jpg_mean_bytes']:.0f}"


TABLE_ROWS = [("rate", "images/s, shard_dataset (Ray started)"), ("process_rate", "images/s, whole process"),
              ("seconds", "seconds, shard_dataset / whole process"), ("ray", "seconds, Ray start"),
              ("samples", "samples written"), ("output", "output: tars, JPEGs, pixels, mean bytes"),
              ("requests", "requests per image"), ("rerun", "rerun (all shards complete): requests, s"),
              ("rss", "driver peak RSS, MiB")]


def print_http_table(n: int, per_shard: int, latency_ms: float, project: dict, i2d: dict) -> None:
    cells = {"project": _project_cells(n, project), "img2dataset": _i2d_cells(n, i2d)}
    print(f"\n== latency {latency_ms:g} ms, {n} images, {per_shard} per shard ==")
    width = max(len(label) for _, label in TABLE_ROWS)
    print(f"{'':{width}}  {'project':>20}  {'img2dataset':>20}")
    for key, label in TABLE_ROWS:
        a, b = (cells[who].get(key, "-") for who in ("project", "img2dataset"))
        a, b = (f"{v:.1f}" if isinstance(v, float) else v for v in (a, b))
        print(f"{label:{width}}  {a:>20}  {b:>20}")
    p, i = cells["project"], cells["img2dataset"]
    if p and i:
        print(f"ratio project/img2dataset images/s: {p['rate'] / i['process_rate']:.2f} (shard_dataset), "
              f"{p['process_rate'] / i['process_rate']:.2f} (whole process)")
    for who, res in (("project", project), ("img2dataset", i2d)):
        if res.get("failed") == "skipped":
            continue
        if "failed" in res:
            print(f"{who} FAILED ({res['failed']}): the end of {res['log']} is above (--workdir keeps it)")
        elif res.get("first", res)["samples"] != n:
            print(f"warning: {who} wrote {res.get('first', res)['samples']} samples of {n}")
    if p and project["rerun"]["requests"]["total"]:
        print(f"warning: the rerun made {project['rerun']['requests']['total']} requests "
              f"(0 expected: all shards complete)")


def http_mode(args, work: Path) -> dict:
    images = work / f"images-{args.n}-{args.width}x{args.height}-q{args.quality}"
    t = make_http_images(images, args.n, args.width, args.height, args.quality)
    print(f"[bench] {args.n} images in {images} ({t:.1f}s)", file=sys.stderr)
    exe = None if args.skip_img2dataset else ensure_img2dataset()
    proc, server = start_server(images)
    results = {}
    try:
        manifest = work / "manifest.parquet"
        urls = [f"{server}/img/{i:07d}.jpg" for i in range(args.n)]
        write_manifest(manifest, urls, "synthetic image {i}: coloured blocks")
        config = {"source": str(manifest), "image_size": args.image_size, "resize_mode": "center_crop",
                  "jpeg_quality": args.quality, "shard_samples": args.shard_samples, "holdout_fraction": 0.0,
                  "split_by": None, "min_image_size": 16, "http_timeout_s": 30, "http_retries": 1}
        for latency in args.latency_ms:
            tag = f"lat{latency:g}ms"
            server_call(server, f"/__reset?latency_ms={latency}")
            print(f"[bench] latency {latency:g} ms: the project ...", file=sys.stderr)
            project = run_project(work, f"project-{tag}", config, args.sets, server, True, args.run_timeout)
            i2d = {"failed": "skipped", "log": "-"}
            if exe:
                print(f"[bench] latency {latency:g} ms: img2dataset ...", file=sys.stderr)
                i2d = run_img2dataset(exe, work, f"img2dataset-{tag}", manifest, args, server, args.run_timeout)
            print_http_table(args.n, args.shard_samples, latency, project, i2d)
            results[tag] = {"project": project, "img2dataset": i2d}
    finally:
        proc.terminate()
        proc.join(10)
    return results


def rss_mode(args, work: Path) -> dict:
    results = {}
    for n in args.rss:
        folder = work / f"rss-images-{n}"
        paths, t = make_rss_images(folder, n)
        manifest = work / f"rss-manifest-{n}.parquet"
        write_manifest(manifest, paths, "tiny image {i}")
        print(f"[bench] {n} PNGs in {folder} ({t:.1f}s to make); sharding ...", file=sys.stderr)
        config = {"source": str(manifest), "image_size": 16, "min_image_size": 8, "resize_mode": "center_crop",
                  "jpeg_quality": args.quality, "shard_samples": 10_000, "holdout_fraction": 0.0, "split_by": None}
        results[n] = run_project(work, f"rss-{n}", config, args.sets, None, False, args.run_timeout)
        results[n]["images_make_s"] = t
    print(f"\n== project driver peak RSS by records ==")
    print(f"{'records':>9}  {'samples':>9}  {'shard s':>8}  {'process s':>9}  {'RSS after ray MiB':>17}  "
          f"{'peak RSS MiB':>12}  {'vs first':>8}")
    base = next((r["rss_peak_mib"] for r in results.values() if "failed" not in r), None)
    for n, r in results.items():
        if "failed" in r:
            print(f"{n:>9}  FAILED ({r['failed']}): the end of {r['log']} is above (--workdir keeps it)")
            continue
        print(f"{n:>9}  {r['first']['samples']:>9}  {r['first']['seconds']:>8.1f}  {r['process_s']:>9.1f}  "
              f"{r['rss_after_ray_mib']:>17.0f}  {r['rss_peak_mib']:>12.0f}  {r['rss_peak_mib'] / base:>7.2f}x")
    return results


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="images (HTTP mode)")
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0, 200], help="server latency per request")
    p.add_argument("--shard-samples", type=int, default=1000, help="samples per shard, both tools")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the sources and of both outputs")
    p.add_argument("--image-size", type=int, default=64, help="output side (centre crop)")
    p.add_argument("--fetch-concurrency", type=int, help="the project's data.fetch_concurrency")
    p.add_argument("--fetch-per-host", type=int, help="the project's data.fetch_per_host")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="more DataConfig overrides for the project (e.g. max_parallel_tasks=4)")
    p.add_argument("--i2d-processes", type=int, default=2, help="img2dataset --processes_count")
    p.add_argument("--i2d-threads", type=int, default=64, help="img2dataset --thread_count")
    p.add_argument("--skip-img2dataset", action="store_true")
    p.add_argument("--rss", type=int, nargs="+", metavar="N",
                   help="instead: the project driver's peak RSS sharding N local tiny PNGs, per N")
    p.add_argument("--workdir", type=Path, help="keep images, shards and logs here (default: a temp folder, removed)")
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds per sharding run")
    p.add_argument("--json", type=Path, help="also write every measurement here")
    args = p.parse_args(argv)
    for flag in ("fetch_concurrency", "fetch_per_host"):
        if getattr(args, flag) is not None:
            args.sets.append(f"{flag}={getattr(args, flag)}")
    return args


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)   # tables and progress lines (stderr) in order
    with tempfile.TemporaryDirectory(prefix="bench-shard-scale-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.workdir:   # fresh outputs each run; images are kept
            for old in [*work.glob("*-shards"), *work.glob("*-result.json")]:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        results = rss_mode(args, work) if args.rss else http_mode(args, work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
