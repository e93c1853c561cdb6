"""What a finished curate step took from each class the held-out evaluation asks about, and how well
each embedding tells the source's known copies from distinct samples. Reads one workflow's run
folder (shard and curate steps done; a source with a noise.json, such as demo:emoji-noisy); trains
nothing.

    .venv/bin/python bench/curate_classes.py runs/curate-gain/clip_curated-seed0 [--label subgroup]

Prints, for the largest held-out classes: training samples, the share the curate step kept and the
share the score filter alone keeps; the held-out-weighted kept share of both (what the evaluation
sees of its classes, against the overall kept share); then, over the pairs of samples the score
filter kept, how many pairs each embedding (image, caption, the pair side by side) puts above
1 - eps, and the recall and precision of those pairs against the known copy pairs."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.curation.reading import dedup_vectors  # noqa: E402
from data.curation.select import low_scores, normalised  # noqa: E402
from data.curation.write import read_scores  # noqa: E402
from data.reading.known_noise import known_noise  # noqa: E402
from data.writing.shard_io import shard_urls  # noqa: E402

EPS = (0.0005, 0.001, 0.002, 0.003, 0.005)


def step_outputs(run: Path, step: str) -> dict:
    return json.loads((run / "steps" / f"{step}.json").read_text())["outputs"]


def labels(manifest: Path, split: str, field: str) -> dict[str, str]:
    """{sample key: its `field`} of a split's shards (the samples' JSON in the tars)."""
    out = {}
    for url in shard_urls(manifest, split):
        with tarfile.open(url) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".json"):
                    out[member.name[: -len(".json")]] = json.load(tf.extractfile(member))[field]  # type: ignore[arg-type]
    return out


def kept_by_class(run: Path, field: str, top: int) -> tuple[dict, np.ndarray]:
    shard, curate = Path(step_outputs(run, "shard")["manifest"]), step_outputs(run, "curate")
    train, held_out = labels(shard, "train", field), labels(shard, "eval", field)
    curated = labels(Path(curate["manifest"]), "train", field)
    scored = read_scores(str(Path(curate["manifest"]).parents[1] / "scores"), shard_urls(shard, "train"))
    low, _ = low_scores(scored["scores"], min_score=curate["score_threshold"])
    filtered = {k for k, out in zip(scored["keys"], low) if not out}
    n, ev = collections.Counter(train.values()), collections.Counter(held_out.values())
    by_step = collections.Counter(curated.values())
    by_filter = collections.Counter(train[k] for k in filtered)
    print(f"{'class':<24} {'held-out':>8} {'train':>6} {'curate kept':>11} {'filter kept':>11}")
    for c, e in ev.most_common(top):
        print(f"{c:<24} {e:>8} {n[c]:>6} {by_step[c] / n[c]:>11.2f} {by_filter[c] / n[c]:>11.2f}")
    asked = [c for c in ev if n[c]]
    w = sum(ev[c] for c in asked)
    for name, kept, total in (("curate step", by_step, len(curated)), ("score filter alone", by_filter, len(filtered))):
        weighted = sum(ev[c] * kept[c] / n[c] for c in asked) / w
        print(f"{name}: kept {total / len(train):.2f} of the training samples; held-out-weighted {weighted:.2f}")
    return scored, ~low


def separability(scored: dict, keep: np.ndarray, copies: dict[str, str]) -> None:
    keys = [k for k, m in zip(scored["keys"], keep) if m]
    at = {k: i for i, k in enumerate(keys)}
    pairs = [(at[c], at[o]) for c, o in copies.items() if c in at and o in at]
    if not pairs:
        print("no known copy pair passed the score filter")
        return
    truth = np.zeros((len(keys), len(keys)), bool)
    for a, b in pairs:
        truth[a, b] = truth[b, a] = True
    kept = {"embs": scored["embs"][keep], "text_embs": scored["text_embs"][keep]}
    sims = {}
    for on in ("image", "caption", "pair"):  # the vectors the curate step compares for each dedup_on
        x = normalised(dedup_vectors(kept, on))
        sims[on] = x @ x.T
    upper = np.triu(np.ones(truth.shape, bool), 1)
    print(f"\n{len(pairs)} known copy pairs among the {len(keys)} samples the score filter kept")
    print(f"{'embedding':<8} {'eps':>7} {'pairs above':>11} {'copy recall':>11} {'precision':>9}")
    for name, s in sims.items():
        for eps in EPS:
            hit = (s > 1 - eps) & upper
            found = int((hit & truth).sum())
            print(
                f"{name:<8} {eps:>7.4f} {int(hit.sum()):>11} {found / len(pairs):>11.2f} {found / max(1, hit.sum()):>9.2f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a workflow's run folder: <runs_dir>/<workflow id>")
    ap.add_argument("--label", default="subgroup", help="the samples' class field (the recipe's eval.label_field)")
    ap.add_argument("--top", type=int, default=8, help="how many of the largest held-out classes to list")
    a = ap.parse_args()
    for step in ("shard", "curate"):
        if not (a.run / "steps" / f"{step}.json").is_file():
            sys.exit(f"{a.run}: no finished {step} step here (RUN: a workflow's run folder, <runs_dir>/<workflow id>)")
    scored, keep = kept_by_class(a.run, a.label, a.top)
    source = json.loads(Path(step_outputs(a.run, "shard")["manifest"]).read_text())["source"]
    noise = known_noise(source)
    if noise is None:
        print(f"\n{source} declares no known noise: no copy pairs to measure against")
        return
    separability(scored, keep, noise["copies"])


if __name__ == "__main__":
    main()
