"""`make bench`: `train predict` throughput, its split between preprocessing and the network, and
peak memory on a long volume, as a table and JSON.

Scans are synthetic CTs in Hounsfield units (int16, 0.8 x 0.8 x 2.5 mm, LPS): 512 x 512 x 100 for
throughput, 512 x 512 x LONG for memory (``--long``, default 1000 slices, about 500 MiB on disk).
The model is the default `train seg` network (MONAI U-Net, 16 channels, depth 4) at 192 x 192,
untrained: its speed does not depend on its weights. Every figure is the median of ``--repeats``
fresh processes (so peak RSS is that run's own); time shares come from predictions.json
(``preprocess_s``: normalization, display slices, pad and resize; ``network_s``: the forward
passes; ``postprocess_s``: resize back, argmax, writing into the scan's grid; read and write of
the NIfTI files are separate).

Usage: python bench/bench_predict.py [--repeats 3] [--long 1000] [--batch-size 16] [--out bench/results/predict.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_model(folder: Path, size: int = 192) -> Path:
    import torch

    from styleswap.contract import DEFAULT_LABELS
    from styleswap.trainer.model import build_model, default_config, save_model
    from styleswap.volumes.preprocess import Preprocessing

    torch.manual_seed(0)
    cfg = default_config(len(DEFAULT_LABELS), channels=16, depth=4, labels=DEFAULT_LABELS, image_size=[size, size],
                         preprocessing=Preprocessing(size=size, modality="CT").to_config())
    return save_model(build_model(cfg), folder)


def make_ct(path: Path, slices: int) -> Path:
    """A body-like ellipse of soft tissue with brighter blobs, air around it, in HU (int16), LPS."""
    y, x = np.mgrid[-256:256, -256:256].astype(np.float32)
    body = ((x / 220) ** 2 + (y / 160) ** 2) <= 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[((x - 80) / 60) ** 2 + ((y + 20) / 50) ** 2 <= 1] = 120
    vol = np.repeat(plane[:, :, None], slices, axis=2)
    vol += np.random.default_rng(0).integers(-10, 10, size=(512, 512, 1), dtype=np.int16)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    return path


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def measure(name: str, model: Path, scan: Path, out: Path, repeats: int, batch_size: int, env: dict) -> dict:
    walls, rss, timings = [], [], []
    for _ in range(repeats):
        wall, peak = run([sys.executable, "-m", "styleswap.trainer.cli", "predict", str(scan), "--model", str(model), "--out", str(out),
                          "--batch-size", str(batch_size), "--device", "cpu", "--no-progress"], env)
        summary = json.loads((out / "predictions.json").read_text())
        walls.append(wall)
        rss.append(peak)
        timings.append(summary["timing"])
    med = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
    inner = sum(med[k] for k in ("read_s", "preprocess_s", "network_s", "postprocess_s", "write_s"))
    return {
        "job": name, "slices": int(med["slices"]), "wall_s": statistics.median(walls), "predict_s": med["total_s"],
        "slices_per_s": med["slices"] / med["total_s"], "peak_rss_mib": statistics.median(rss),
        **{k: med[k] for k in ("read_s", "preprocess_s", "network_s", "postprocess_s", "write_s")},
        "preprocess_share": med["preprocess_s"] / inner, "network_share": med["network_s"] / inner,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long", type=int, default=1000, help="slices of the long volume (memory)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "predict.json")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model")
        for name, slices in (("CT 512x512x100", 100), (f"CT 512x512x{args.long}", args.long)):
            scan = make_ct(tmp / f"ct{slices}.nii", slices)  # uncompressed: time the pipeline, not gzip
            rows.append(measure(name, model, scan, tmp / f"pred{slices}", args.repeats, args.batch_size, env))
            scan.unlink()
    result = {"rows": rows, "repeats": args.repeats, "batch_size": args.batch_size, "cpus": os.cpu_count(),
              "machine": platform.machine(), "model": "MONAI UNet 16 ch, depth 4, 192 x 192 (untrained)",
              "note": "provisional: measured on 2 shared cores"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| job | slices | s (predict) | slices/s | preprocess % | network % | post % | read+write s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        inner = r["read_s"] + r["preprocess_s"] + r["network_s"] + r["postprocess_s"] + r["write_s"]
        print(f"| {r['job']} | {r['slices']} | {r['predict_s']:.1f} | {r['slices_per_s']:.1f} | {100 * r['preprocess_share']:.0f} | "
              f"{100 * r['network_share']:.0f} | {100 * r['postprocess_s'] / inner:.0f} | {r['read_s'] + r['write_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
