#!/usr/bin/env python
"""Training throughput: the whole ``train seg`` step against the network's own forward + backward.

    python bench/bench_train.py [--size 192] [--steps 60] [--repeats 3]

For the benchmark's recipe (U-Net 16 ch depth 4, batch 16 originals + 16 copies, Dice + PatchNCE,
photometric and per-organ augmentation, per-volume z-score) it measures, eager and compiled:

* ``network``: forward + backward + AdamW step on tensors already in memory (slices/s);
* ``train seg``: the real loop on a dataset folder (PNG decoding in 2 DataLoader workers,
  augmentation, the same network), its slices/s after the first log interval;
* their ratio: what the data path and augmentation cost on top of the network (1.0 = nothing).

The data: the first CT cases of ../shared/data ingested at ``--size`` with GIN copies, or the
phantom when the shared data is absent. Figures are medians of ``--repeats`` fresh processes;
run it on idle cores (other jobs on the same cores change every number). Prints a table and
writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "abdomen-ct"


def _bin(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [name]


def network_alone(size: int, compile_: bool, steps: int) -> float:
    """Slices/s of forward + backward + step on in-memory tensors (in this process)."""
    import torch

    from styleswap.trainer.losses import PatchNCELoss, SegLoss
    from styleswap.trainer.model import SegNet, default_config
    from styleswap.trainer.train import _TrainModule

    torch.manual_seed(0)
    net = SegNet(default_config(5, "unet", 16, 4))
    module = _TrainModule(net, PatchNCELoss(net.feature_channels, 256, 0.07))
    if compile_:
        module.compile()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    seg = SegLoss()
    img, aug = torch.rand(16, 1, size, size), torch.rand(16, 1, size, size)
    mask = torch.randint(0, 5, (16, 1, size, size))
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        lo, lc, nce = module(img, aug, [0, 1, 2, 3], gen)
        loss = seg(lo, mask) + seg(lc, mask) + 0.1 * nce
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:  # warm-up (and compilation) excluded
            times.append(time.perf_counter() - t)
    return 16 / statistics.median(times)


def make_data(root: Path, size: int) -> tuple[Path, Path]:
    src = f"{DATA}" if DATA.is_dir() else "phantom:6"
    ingested, gin = root / "ct", root / "ct-gin"
    extra = ["--modality", "CT"] if DATA.is_dir() else []
    if DATA.is_dir():  # a few cases are enough for throughput
        import os

        sub = root / "src"
        (sub / "imagesTr").mkdir(parents=True)
        (sub / "labelsTr").mkdir()
        meta = json.loads((DATA / "dataset.json").read_text())
        for lab in sorted((DATA / "labelsTr").glob("*.nii.gz"))[:6]:
            case = lab.name[: -len(".nii.gz")]
            os.symlink(DATA / "imagesTr" / f"{case}_0000.nii.gz", sub / "imagesTr" / f"{case}_0000.nii.gz")
            os.symlink(lab, sub / "labelsTr" / lab.name)
        (sub / "dataset.json").write_text(json.dumps(meta))
        src = str(sub)
    subprocess.run(_bin("augment") + ["ingest", src, "--out", str(ingested), "--size", str(size), "--keep-empty", "0",
                                      "--intensity", "standard", "--no-preview", *extra], check=True, capture_output=True)  # fmt: skip
    subprocess.run(_bin("augment") + ["build", "--source", str(ingested), "--engine", "gin", "--copies", "2", "--out", str(gin),
                                      "--no-preview"], check=True, capture_output=True)  # fmt: skip
    return ingested, gin


def train_seg(gin: Path, out: Path, steps: int, compile_: bool) -> float:
    """Slices/s of the real loop (metrics.csv, the rows after the first)."""
    cmd = _bin("train") + ["seg", "--data", str(gin), "--out", str(out), "--loss", "dice+infonce", "--nce-weight", "0.1",
                           "--intensity-aug", "standard,organ", "--input-norm", "zscore", "--steps", str(steps),
                           "--batch-size", "16", "--log-every", str(max(steps // 6, 1)), "--checkpoint-every", str(10 * steps),
                           "--workers", "2", "--no-progress", *(["--compile"] if compile_ else [])]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
    rates = [float(r.split(",")[6]) for r in rows[1:]]
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--steps", type=int, default=60, help="train seg steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train.json")
    ap.add_argument("--child", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one fresh process per network measurement
        print(network_alone(args.size, args.child == "compiled", 15))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        _, gin = make_data(Path(tmp), args.size)
        for mode in ("eager", "compiled"):
            net, loop = [], []
            for r in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--size", str(args.size)], check=True,
                                     capture_output=True, text=True).stdout  # fmt: skip
                net.append(float(out.strip().splitlines()[-1]))
                loop.append(train_seg(gin, Path(tmp) / f"run-{mode}-{r}", args.steps, mode == "compiled"))
            results[mode] = {"network_slices_per_s": statistics.median(net), "train_seg_slices_per_s": statistics.median(loop),
                             "runs_network": net, "runs_train_seg": loop}  # fmt: skip
            results[mode]["ratio"] = results[mode]["train_seg_slices_per_s"] / results[mode]["network_slices_per_s"]
    base = results["eager"]["train_seg_slices_per_s"]
    lines = ["| forward | network alone (slices/s) | train seg (slices/s) | train seg / network | train seg vs eager |",
             "|---|---:|---:|---:|---:|"]
    for mode, r in results.items():
        lines.append(f"| {mode} | {r['network_slices_per_s']:.1f} | {r['train_seg_slices_per_s']:.1f} | {r['ratio']:.2f} | "
                     f"{r['train_seg_slices_per_s'] / base:.2f}x |")  # fmt: skip
    print("\n".join(lines))
    print(f"\n{args.size} px, batch 16 originals + 16 copies, U-Net 16 ch depth 4, Dice + PatchNCE; medians of {args.repeats} fresh processes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "steps": args.steps, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
