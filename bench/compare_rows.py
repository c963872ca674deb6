#!/usr/bin/env python
"""Paired per-case comparison of two rows of a cross-modality benchmark workdir.

    python bench/compare_rows.py WORKDIR A B [--seeds 0,1] [--tag=-v2] [--json OUT]

A and B are run names without their seed and tag, as in ``WORKDIR/rows/<name>-s<seed><tag>.json``
(``gin+bezier-slaug-copies``, ``train-slaug``, ...). Each row's target Dice per case (its
``per_case``, with the inference chosen on source validation) is averaged over the seeds; the table
gives, for A - B per target case: the cases A wins, the mean and median gain, and a percentile
bootstrap interval of the mean gain over the cases (the patients measured, not the training seeds:
two seeds say little about that spread, so read both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def per_case(workdir: Path, name: str, seeds: list[int], tag: str) -> dict[str, float]:
    """Target Dice per case of one row, averaged over its seeds (every seed must cover the same cases)."""
    runs = []
    for seed in seeds:
        path = workdir / "rows" / f"{name}-s{seed}{tag}.json"
        if not path.is_file():
            fail(f"{path}: no such row (train it with bench/cross_modality.py first)")
        runs.append(json.loads(path.read_text())["per_case"])
    cases = set(runs[0])
    if any(set(r) != cases for r in runs):
        fail(f"{workdir / 'rows'}: the seeds of {name} measured different cases")
    return {c: statistics.fmean(r[c] for r in runs) for c in sorted(cases)}


def compare(a: dict[str, float], b: dict[str, float], resamples: int = 10_000, seed: int = 0) -> dict:
    """A - B per case: wins, mean and median gain, and the 95 % bootstrap interval of the mean gain."""
    if set(a) != set(b):
        fail(f"the rows measured different cases ({sorted(set(a) ^ set(b))[:3]} ...)")
    cases = sorted(a)
    va, vb = np.array([a[c] for c in cases]), np.array([b[c] for c in cases])
    gain = va - vb
    idx = np.random.default_rng(seed).integers(0, len(gain), size=(resamples, len(gain)))
    lo, hi = np.percentile(gain[idx].mean(axis=1), [2.5, 97.5])
    return {"cases": len(cases), "wins": int((gain > 0).sum()), "mean_a": float(va.mean()),
            "mean_b": float(vb.mean()), "mean_gain": float(gain.mean()),
            "median_gain": float(np.median(gain)), "bootstrap_95": [float(lo), float(hi)], "resamples": resamples,
            "per_case_gain": dict(zip(cases, gain.tolist()))}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path, help="the benchmark's --workdir (holds rows/)")
    ap.add_argument("a", help="run name of row A without seed and tag, e.g. gin+bezier-slaug-copies")
    ap.add_argument("b", help="run name of row B, e.g. train-slaug")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds, averaged per case (default 0,1)")
    ap.add_argument("--tag", default="", help="the benchmark's --tag of both rows (write --tag=-v2)")
    ap.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the cases")
    ap.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    r = compare(per_case(args.workdir, args.a, seeds, args.tag), per_case(args.workdir, args.b, seeds, args.tag), args.resamples)
    lo, hi = r["bootstrap_95"]
    print(f"| A - B (seeds {args.seeds}) | cases A wins | mean A % | mean B % | mean gain | median gain | bootstrap 95 % |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.a} - {args.b} | {r['wins']} of {r['cases']} | {100 * r['mean_a']:.1f} | {100 * r['mean_b']:.1f} | "
          f"{100 * r['mean_gain']:+.1f} | {100 * r['median_gain']:+.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"a": args.a, "b": args.b, "seeds": seeds, **r}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
