"""Text sharding at scale: documents/s, tokens/s and the driver's peak RSS for N-document corpora.

For each N a JSONL corpus of N distinct documents (random words, about `--chars` characters each,
one in 50 a repeat of an earlier one) is written, then sharded by the project in a fresh process
(local Ray): tokenizer (trained on the first `--tokenizer-chars`), pack, global dedup, manifest;
then sharded again (every shard complete: nothing is read). It prints, per N, the seconds and
documents/s of each pass, tokens/s, the repeats removed, and the driver's peak RSS (VmHWM), and the
ratio of the largest N's peak RSS to the smallest's.

    .venv/bin/python bench/bench_text_shard.py                # N = 100000 1000000
    .venv/bin/python bench/bench_text_shard.py 20000 200000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_corpus(path: Path, n: int, chars: int, seed: int = 0) -> int:
    """N documents as JSONL, every 50th a repeat of the one 49 before it; returns the repeats."""
    from collections import deque

    rng = np.random.default_rng(seed)
    words = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(5000)])
    per_doc = max(1, chars // 6)
    recent: deque = deque(maxlen=49)
    repeats = 0
    with path.open("w") as f:
        for start in range(0, n, 10_000):
            picks = words[rng.integers(0, len(words), size=(min(10_000, n - start), per_doc))]
            for j, row in enumerate(picks):
                i = start + j
                if i % 50 == 49:
                    text, repeats = recent[0], repeats + 1
                else:
                    text = f"document {i} " + " ".join(row)
                recent.append(text)
                f.write(json.dumps({"text": text}) + "\n")
    return repeats


def _vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: str) -> None:
    import ray

    from data.text.text_sharder import shard_text
    from pipelines.config import TextDataConfig

    s = json.loads(spec)
    ray.init(num_cpus=s["cpus"], include_dashboard=False, logging_level="ERROR", _temp_dir=s["ray_tmp"])
    cfg = TextDataConfig(
        source=s["corpus"],
        vocab_size=s["vocab"],
        seq_len=128,
        holdout_fraction=0.01,
        shard_chars=s["shard_chars"],
        tokenizer_chars=s["tokenizer_chars"],
    )
    out = {"rss_after_ray_mib": _vmhwm_mib()}
    t = time.time()
    m = shard_text(cfg, s["out"])
    out.update(
        first_s=time.time() - t,
        rss_peak_mib=_vmhwm_mib(),
        documents=m["input_documents"],
        tokens=sum(sp["tokens"] + sp["dropped_tokens"] for sp in m["splits"].values()),
        shards=sum(len(sp["shards"]) for sp in m["splits"].values()),
        duplicates=m["rejected"].get("duplicate", 0),
        across=m["duplicates_across_shards"],
    )
    t = time.time()
    again = shard_text(cfg, s["out"])
    out.update(rerun_s=time.time() - t, rerun_written=again["shards_written"], rss_peak_mib=_vmhwm_mib())
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--chars", type=int, default=200, help="characters per document (about)")
    ap.add_argument("--shard-chars", type=int, default=2_000_000)
    ap.add_argument("--tokenizer-chars", type=int, default=5_000_000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-text-", dir="/tmp") as tmp:
        for n in args.sizes:
            corpus = Path(tmp) / f"corpus-{n}.jsonl"
            t = time.time()
            repeats = write_corpus(corpus, n, args.chars)
            print(
                f"[bench] {n} documents ({corpus.stat().st_size / 1e6:.0f} MB, {repeats} repeats) written in "
                f"{time.time() - t:.0f}s",
                flush=True,
            )
            spec = json.dumps(
                {
                    "corpus": str(corpus),
                    "out": f"{tmp}/shards-{n}",
                    "cpus": args.cpus,
                    "vocab": args.vocab,
                    "shard_chars": args.shard_chars,
                    "tokenizer_chars": args.tokenizer_chars,
                    "ray_tmp": f"/tmp/rbt{n}",
                }
            )
            proc = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, cwd=ROOT)
            result = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not result:
                sys.exit(f"[bench] N={n} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            r = json.loads(result[0][7:])
            assert r["duplicates"] == repeats, (r, repeats)
            rows.append((n, r))
            corpus.unlink()
    print(
        f"\n{'documents':>10} {'shards':>7} {'first s':>8} {'docs/s':>9} {'tokens/s':>10} {'repeats':>8} "
        f"{'across':>7} {'rerun s':>8} {'driver peak RSS MiB':>20}"
    )
    for n, r in rows:
        print(
            f"{n:>10} {r['shards']:>7} {r['first_s']:>8.1f} {n / r['first_s']:>9.0f} "
            f"{r['tokens'] / r['first_s']:>10.0f} {r['duplicates']:>8} {r['across']:>7} {r['rerun_s']:>8.1f} "
            f"{r['rss_peak_mib']:>20.0f}"
        )
    if len(rows) > 1:
        (n0, a), (n1, b) = rows[0], rows[-1]
        print(f"\ndriver peak RSS at {n1} documents / at {n0}: {b['rss_peak_mib'] / a['rss_peak_mib']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
