"""`make bench`: peak memory of `augment build` and `train seg` with 1x and 10x the slices.

The claim under test (issue #6): memory does not grow with the number of slices. Build renders
chunks with at most ``2 * workers + 2`` in flight; training streams row groups through a shuffle
buffer of ``--buffer-size`` rows per DataLoader worker. So 10x the slices should cost ~1.0x the
memory, once the 1x data already fill those bounds (the 10x data's stream per worker is checked
to be larger than the shuffle buffer, so the buffer is full and rows flow through it).

Data: the first 1 vs 10 cases of ../shared/data/abdomen-ct (87 vs 826 slices at the defaults; or
phantom:1 vs phantom:10 when it is absent), ingested once each (not measured: ingest holds one
volume at a time, so its peak follows the largest volume, not the number of cases). Then, medians
of ``--repeats`` fresh subprocesses:

- ``augment build --source ING --engine gin --copies 4 --workers 2``
- ``train seg --data BUILT --steps N --batch-size 8 --workers 2``, N (same at both scales) just
  past one epoch of the 10x data, so both runs cross an epoch boundary. That mattered when each
  epoch's DataLoader workers were forked from the trainer as it was *then* (weights, optimizer
  state, allocator caches) and copy-on-write later made those pages their own: on 3 CT cases, 30
  steps (inside epoch 0) peaked at ~1440 MiB tree PSS, 60 steps (one boundary) at ~1770 MiB.
  Workers now start from a fork server (``trainer/data.make_loader``) and share its pages instead;
  the boundary is still crossed so that a short run on the 10x data cannot look cheaper.

Each run reports three figures, all for the whole process tree (the main process, build's
spawned render processes, the fork server and the DataLoader workers it starts):

- ``tree_pss``: peak over time of the summed PSS (proportional set size: pages shared between
  processes are split among them, so workers forked from one parent are not counted twice),
  sampled every 50 ms;
- ``tree_rss``: the same with RSS (overcounts shared pages);
- ``max_rss``: the kernel's peak RSS of the largest single process in the tree (``wait4``),
  which sampling cannot miss.

Usage: python bench/bench_memory.py [--repeats 3] [--size 128] [--steps N] [--out bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, ROOT, SHARED, rows_of, subset_nnunet  # noqa: E402

MIB = 1024 * 1024


def measure(cmd: list[str], interval: float = 0.05) -> dict[str, float]:
    """Wall seconds and peak memory (MiB) of one subprocess and its descendants."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        root = psutil.Process(proc.pid)
        peak_pss = peak_rss = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            pss = rss = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                procs = []
            for p in procs:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    continue
                pss += getattr(info, "pss", info.rss)
                rss += info.rss
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(interval)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()[-4000:]}")
    # ru_maxrss of a waited-for child: the largest peak RSS of it and of its own waited-for children
    return {"wall_s": wall, "tree_pss": peak_pss / MIB, "tree_rss": peak_rss / MIB, "max_rss": usage.ru_maxrss / 1024}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", type=int, default=1, help="cases at 1x (10x: ten times as many)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="build render processes and DataLoader workers")
    ap.add_argument("--steps", type=int, default=None, help="train steps (default: one epoch of the 10x data + 10)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--buffer-size", type=int, default=256, help="train --buffer-size (rows per worker)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = ap.parse_args()
    augment, train = str(BIN / "augment"), str(BIN / "train")
    scales = {"1x": args.cases, "10x": 10 * args.cases}
    results: dict = {"settings": vars(args) | {"out": str(args.out), "cpus": os.cpu_count()}, "jobs": {}}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        real = (SHARED / "abdomen-ct" / "dataset.json").exists()
        if real and len(list((SHARED / "abdomen-ct" / "labelsTr").glob("*.nii.gz"))) < scales["10x"]:
            real = False
        if not real:
            print("../shared/data/abdomen-ct is absent (or too small): measuring on the phantom instead", file=sys.stderr)
        results["settings"]["source"] = "abdomen-ct" if real else "phantom"
        ingested, built = {}, {}
        for scale, cases in scales.items():
            src = str(subset_nnunet(SHARED / "abdomen-ct", cases, tmp / f"ct{scale}")) if real else f"phantom:{cases}"
            ingested[scale] = tmp / f"ing{scale}"
            subprocess.run([augment, "ingest", src, "--out", str(ingested[scale]), "--size", str(args.size), "--no-preview"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

        build_cmd = [augment, "build", "--engine", "gin", "--copies", str(args.copies), "--workers", str(args.workers), "--no-preview"]
        train_cmd = [train, "seg", "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                     "--buffer-size", str(args.buffer_size), "--log-every", "10", "--no-progress"]  # fmt: skip
        for job in ("build", "train"):
            results["jobs"][job] = {}
            for scale in scales:
                runs = []
                for i in range(args.repeats):
                    out = tmp / f"{job}{scale}-{i}"
                    if job == "build":
                        runs.append(measure([*build_cmd, "--source", str(ingested[scale]), "--out", str(out)]))
                        if i == 0:  # kept as the training data of this scale
                            built[scale] = out
                            continue
                    else:
                        if args.steps is None:
                            args.steps = -(-rows_of(built["10x"]) // args.batch_size) + 10
                        steps = ["--steps", str(args.steps), "--checkpoint-every", str(args.steps)]
                        runs.append(measure([*train_cmd, *steps, "--data", str(built[scale]), "--out", str(out)]))
                    shutil.rmtree(out)
                n = rows_of(built[scale]) if scale in built else rows_of(ingested[scale])
                results["jobs"][job][scale] = {"cases": scales[scale], "slices": n, "runs": runs, "median": medians(runs)}
                print(f"{job} {scale}: {n} slices, " + ", ".join(f"{k} {v:.1f}" for k, v in medians(runs).items()), file=sys.stderr)
            one, ten = (results["jobs"][job][s]["median"] for s in scales)
            results["jobs"][job]["ratio_10x_over_1x"] = {k: ten[k] / one[k] for k in one}

    slices = {s: results["jobs"]["build"][s]["slices"] for s in scales}
    per_worker = slices["10x"] // max(1, args.workers)
    results["settings"]["steps"] = args.steps
    results["stream_check"] = {"rows_per_worker_10x": per_worker, "buffer_size": args.buffer_size,
                               "stream_larger_than_buffer": per_worker > args.buffer_size}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    src = results["settings"]["source"]
    print(f"\npeak memory (MiB, median of {args.repeats}), {src}: {scales['1x']} vs {scales['10x']} cases = "
          f"{slices['1x']} vs {slices['10x']} slices ({slices['10x'] / slices['1x']:.1f}x)")  # fmt: skip
    print("| job | tree PSS 1x | tree PSS 10x | ratio | tree RSS 1x | tree RSS 10x | ratio | max proc RSS 1x | max proc RSS 10x | ratio | wall s 1x / 10x |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for job, res in results["jobs"].items():
        a, b, r = res["1x"]["median"], res["10x"]["median"], res["ratio_10x_over_1x"]
        cells = " | ".join(f"{a[k]:.0f} | {b[k]:.0f} | {r[k]:.2f}" for k in ("tree_pss", "tree_rss", "max_rss"))
        label = f"build gin x{args.copies}, {args.workers} workers" if job == "build" else f"train seg {args.steps} steps, {args.workers} workers"
        print(f"| {label} | {cells} | {a['wall_s']:.1f} / {b['wall_s']:.1f} |")
    sc = results["stream_check"]
    print(f"train 10x: {sc['rows_per_worker_10x']} rows per DataLoader worker vs a shuffle buffer of {sc['buffer_size']} "
          f"({'larger' if sc['stream_larger_than_buffer'] else 'NOT larger: raise --cases'})\nwritten: {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
