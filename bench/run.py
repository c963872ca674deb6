"""`make bench`: throughput (and each run's peak RSS) of ingest and build, as a table and JSON.

Every figure is the median of several runs of a fresh subprocess (so peak RSS is that run's own).
Ratios are against a baseline measured in the same run:
- build vs engine only: the same engine rendering the same slices in memory, no reading, encoding
  or writing, on all the cores the way render workers use them (one single-threaded process per
  core, each with its share of the slices; the slowest one's time); ``engine share`` =
  engine-only time / build time (the aim: >= 0.8, the writer is never the bottleneck). One
  process on two torch threads is not the baseline: on the 2-core machine its time ranged from
  9.1 to 21.5 s for the same gin copies (one thread: 11.4 to 12.5 s).
- where a build's time goes (``--breakdown``, on by default): each stage of a gin build timed on
  its own in a fresh process, one thread, on the same slices: start-up (imports and engine load),
  reading the source rows, decoding their PNGs (done by the render workers when there are
  worker processes), the engine, PNG encoding, writing the shards. Their sum is
  the build's serial work; the build overlaps them on the cores it has.
Memory at 1x vs 10x the slices, for build and training, is `bench_memory.py`.

Usage: python bench/run.py [--repeats 3] [--cases 6] [--size 192] [--copies 4] [--out bench/results/build.json]
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024


def rows_of(folder: Path) -> int:
    return json.loads((folder / "manifest.json").read_text())["counts"]["slices"]


def subset_nnunet(src: Path, cases: int, dst: Path) -> Path:
    """An nnU-Net folder of symlinks to the first ``cases`` cases of ``src``."""
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    for label in sorted((src / "labelsTr").glob("*.nii.gz"))[:cases]:
        case = label.name[: -len(".nii.gz")]
        (dst / "labelsTr" / label.name).symlink_to(label)
        (dst / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(src / "imagesTr" / f"{case}_0000.nii.gz")
    return dst


ENGINE_ONLY = r"""
import sys, time, json
import numpy as np
import torch
torch.set_num_threads(1)
from styleswap import contract
from styleswap.generator import dataset
from styleswap.generator.engines import get_engine, CopyRequest
from styleswap.contract import derive_seed
folder, name, copies, part, parts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = list(dataset.iter_rows(folder, columns=["sample_id", "image", "mask"]))[part::parts]
eng = get_engine(name); eng.load()
reqs = [CopyRequest(r["sample_id"], c, derive_seed(0, r["sample_id"], c), contract.to_unit_float(r["image"]), r["mask"])
        for r in rows for c in range(copies)]
t0 = time.perf_counter()
for i in range(0, len(reqs), eng.batch_size):
    eng.render(reqs[i:i + eng.batch_size])
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(rows)}))
"""


STAGES = r"""
import sys, time, json, tempfile
from pathlib import Path
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from styleswap import contract
from styleswap.contract import derive_seed
from styleswap.generator import dataset, shards
from styleswap.generator.engines import CopyRequest, get_engine
eng = get_engine(sys.argv[2]); eng.load()
out = {"start-up (imports, engine load)": time.perf_counter() - t0}
folder, copies = Path(sys.argv[1]), int(sys.argv[3])
t = time.perf_counter()
slices = list(dataset.iter_source_slices(folder, decode=False))
out["read source rows"] = time.perf_counter() - t
t = time.perf_counter()
slices = [s.decoded() for s in slices]
out["decode source PNGs"] = time.perf_counter() - t
t = time.perf_counter()
rendered = []
for s in slices:
    img = contract.to_unit_float(s.image)
    reqs = [CopyRequest(s.sample_id, c, derive_seed(0, s.sample_id, c), img, s.mask) for c in range(copies)]
    rendered.append([contract.from_unit_float(c.image) for c in eng.render(reqs)])
out["engine"] = time.perf_counter() - t
rows = [shards.Row(s.sample_id, s.case_id, s.slice_index, s.modality, s.image, s.mask, r, [""] * copies, [0] * copies,
                   "gin", tuple(s.spacing), source_png=s.png) for s, r in zip(slices, rendered)]
t = time.perf_counter()
for row in rows:
    row.encode()
out["PNG encoding"] = time.perf_counter() - t
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    w = shards.ShardWriter(Path(tmp), "train", "parquet", 256)
    for row in rows:
        w.add(row)
    w.close()
    out["writing shards"] = time.perf_counter() - t
print(json.dumps(out))
"""


def stages(folder: Path, engine: str, copies: int) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", STAGES, str(folder), engine, str(copies)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def engine_only(folder: Path, engine: str, copies: int) -> float:
    """The engine alone on every core: one single-threaded process per core, started together,
    each rendering its share of the slices after loading; the slowest one's seconds."""
    parts = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", ENGINE_ONLY, str(folder), engine, str(copies), str(i), str(parts)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(parts)]
    seconds = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"engine-only run failed:\n{err}")
        seconds.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    return max(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", type=int, default=6, help="CT cases to ingest (of 30)")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "build.json")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the per-stage timing of a gin build")
    args = ap.parse_args()
    augment = str(BIN / "augment")
    results: dict = {"settings": vars(args) | {"out": str(args.out), "cpus": os.cpu_count()}, "rows": []}
    table = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. ingest throughput on real CT (or the phantom when ../shared/data is absent)
        if (SHARED / "abdomen-ct" / "dataset.json").exists():
            source = str(subset_nnunet(SHARED / "abdomen-ct", args.cases, tmp / "ct"))
            label = f"ingest abdomen-ct ({args.cases} cases)"
        else:
            print("../shared/data is absent: benchmarking on the phantom instead", file=sys.stderr)
            source, label = f"phantom:{args.cases * 4}", f"ingest phantom ({args.cases * 4} cases)"
        walls, peaks = [], []
        for i in range(args.repeats):
            out = tmp / f"ing{i}"
            w, p = run([augment, "ingest", source, "--out", str(out), "--size", str(args.size), "--no-preview"])
            walls.append(w), peaks.append(p)
        ingested = tmp / "ing0"
        n = rows_of(ingested)
        row = {"job": label, "slices": n, "median_s": statistics.median(walls),
               "slices_per_s": n / statistics.median(walls), "peak_rss_mib": max(peaks)}
        results["rows"].append(row)
        table.append((label, n, row["median_s"], row["slices_per_s"], "", row["peak_rss_mib"]))

        # 2. build throughput per engine, against the engine alone on the same slices
        for engine in ("gin", "bezier"):
            for workers in (1, 2):
                walls, peaks = [], []
                for i in range(args.repeats):
                    out = tmp / f"{engine}{workers}-{i}"
                    w, p = run([augment, "build", "--source", str(ingested), "--engine", engine, "--copies",
                                str(args.copies), "--workers", str(workers), "--out", str(out), "--no-preview"])
                    walls.append(w), peaks.append(p)
                    shutil.rmtree(out)
                wall = statistics.median(walls)
                compute = statistics.median(engine_only(ingested, engine, args.copies) for _ in range(args.repeats))
                row = {"job": f"build {engine} x{args.copies}, {workers} worker(s)", "slices": n, "median_s": wall,
                       "slices_per_s": n / wall, "engine_only_s": compute, "engine_share": compute / wall,
                       "peak_rss_mib": max(peaks)}
                results["rows"].append(row)
                table.append((row["job"], n, wall, row["slices_per_s"], f"{row['engine_share']:.2f}", row["peak_rss_mib"]))

        # 3. where a gin build's time goes: each stage on its own, one thread (medians)
        if args.breakdown:
            runs = [stages(ingested, "gin", args.copies) for _ in range(args.repeats)]
            results["breakdown"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n| job | slices | median s | slices/s | engine share | peak RSS MiB |\n|---|---|---|---|---|---|")
    for job, n, wall, rate, share, peak in table:
        print(f"| {job} | {n} | {wall:.2f} | {rate:.1f} | {share} | {peak:.0f} |")
    if "breakdown" in results:
        total = sum(results["breakdown"].values())
        print(f"\nwhere a gin x{args.copies} build's serial work goes (each stage alone, one thread, medians):\n"
              "| stage | s | share |\n|---|---:|---:|")
        for k, v in results["breakdown"].items():
            print(f"| {k} | {v:.2f} | {100 * v / total:.0f} % |")
        print(f"| sum | {total:.2f} | |")
        print("(the commit: finalize, card, manifest; measured inside the build's wall time, not here)")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
