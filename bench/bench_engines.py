"""What each engine costs: seconds per copy and copies per hour, next to the Dice its copies bought.

    python bench/bench_engines.py                  # gin, bezier and controlnet (tiny preset), on the CPU
    python bench/bench_engines.py --engines controlnet --preset sd15-random --device cuda --mixed-precision fp16

Every engine renders the same ``--copies`` copies of each of ``--slices`` slices of ``--source``
(``augment ingest``, default the CT phantom) at ``--size`` x ``--size`` (the CT -> MRI benchmark's
128 by default), seeded as a build seeds them, in batches of the engine's own batch size, in this
process after ``load()``: one warm-up pass, then the median of ``--runs`` passes. Rendering only:
reading, PNG encoding and writing are `bench/run.py`'s whole-build figures. (Real slices matter:
gin is ten times slower on all-zero images.)

``controlnet`` renders with its defaults (20 UniPC steps, guidance 7.5, batch 8) and models built
from config: ``tiny`` at the slice size, or ``sd15-random`` at 512 x 512 (copies resized to the
slice size, as a build does); the ControlNet is made from the base U-Net, untrained, which costs
the same as a trained one. Training its stages is a one-time cost, not counted here
(bench/gpu/diffusion.py measures it). The Dice column is not measured here: it is the README's
CT -> MRI figure for each engine's copies (``DICE`` below); no row exists for ``controlnet``
because no real Stable Diffusion weights exist on our machines (tiny and sd15-random copies are
noise). Prints a Markdown table and writes bench/results/engines.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import bench_render as br

#: MRI mean Dice % of a segmentation network trained on CT plus each engine's copies (README, "The
#: CT-to-MRI benchmark": GPU sweep, 5000 steps, Dice + InfoNCE weight 1, same recipe, one seed;
#: seeds differ by about 3 points). None where no figure exists.
DICE = {
    "gin": (51.5, "GIN + Dice + InfoNCE (w 1), GPU sweep, 5000 steps"),
    "bezier": (51.9, "Bezier + Dice + InfoNCE (w 1), GPU sweep, 5000 steps"),
    "controlnet": (None, "none: no real Stable Diffusion weights on our machines (tiny and sd15-random copies are noise)"),
}


def make(name: str, a: argparse.Namespace, models: Path):
    """A loaded engine; for controlnet, on models built from config (``--preset``)."""
    from styleswap.generator.engines.base import get_engine

    if name != "controlnet":
        eng = get_engine(name)
        eng.load()
        return eng, a.size
    res = a.size if a.preset == "tiny" else 512
    base, cn = br.build_models(a.preset, models, res if a.preset == "tiny" else None)
    eng = br.make_engine(base, cn, steps=a.steps, batch=a.batch, device=a.device, mixed_precision=a.mixed_precision,
                         resolution=res)
    return eng, res


def render_all(eng, reqs) -> None:
    for i in range(0, len(reqs), eng.batch_size):
        eng.render(reqs[i : i + eng.batch_size])


def measure(a: argparse.Namespace, tmp: Path, models: Path) -> list[dict]:
    """One row per engine: ingest the slices, then load and time each engine on the same copies."""
    with open(tmp / "ingest.log", "w+") as log:
        if br.ingest(a.source, a.size, tmp / "data", log).wait():
            log.seek(0)
            raise SystemExit(f"augment ingest {a.source} failed:\n{log.read()[-2000:]}")
    reqs = br.slice_requests(tmp / "data", a.slices, a.copies)
    rows = []
    for name in [e.strip() for e in a.engines.split(",") if e.strip()]:
        t = time.perf_counter()
        eng, res = make(name, a, models)
        load_s = time.perf_counter() - t
        timing = br.time_images(lambda: render_all(eng, reqs), len(reqs), a.runs)
        dice, source = DICE.get(name, (None, "-"))
        device = a.device if name == "controlnet" else "cpu"
        rows.append({
            "engine": name, "preset": a.preset if name == "controlnet" else None, "render_resolution": res,
            "device": device, "copies": len(reqs), "batch": eng.batch_size, "load_s": round(load_s, 2),
            "runs_s": [round(x, 3) for x in timing["runs_s"]], "seconds_per_copy": timing["seconds_per_image"],
            "copies_per_hour": 3600 / timing["seconds_per_image"], "mri_dice": dice, "dice_source": source,
        })
        del eng
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="gin,bezier,controlnet")
    ap.add_argument("--source", default="phantom:2", help="what `augment ingest` reads (a CT folder works too)")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--size", type=int, default=128, help="slice size (the CT -> MRI benchmark's: 128)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--preset", choices=("tiny", "sd15-random"), default="tiny", help="controlnet's models")
    ap.add_argument("--steps", type=int, default=20, help="controlnet: sampling steps")
    ap.add_argument("--batch", type=int, default=8, help="controlnet: images per pipeline call")
    ap.add_argument("--device", default="cpu", help="controlnet: cpu, cuda")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="controlnet")
    ap.add_argument("--models", type=Path, default=None, help="controlnet: folder to build (or reuse) the models in")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engines.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory(prefix="bench_engines_") as tmp:  # data, and the models unless --models
        rows = measure(a, Path(tmp), a.models or Path(tmp) / "models")
    print(f"\n| engine | render size | device | s / copy | copies / hour | MRI Dice % (CT -> MRI) |\n|---|---:|---|---:|---:|---|")
    for r in rows:
        name = r["engine"] + (f" ({r['preset']})" if r["preset"] else "")
        dice = f"{r['mri_dice']:.1f} ({r['dice_source']})" if r["mri_dice"] is not None else r["dice_source"]
        print(f"| {name} | {r['render_resolution']} | {r['device']} | {r['seconds_per_copy']:.4f} | "
              f"{r['copies_per_hour']:,.0f} | {dice} |")
    settings = vars(a) | {"out": str(a.out), "models": str(a.models), "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str) + "\n")
    print(f"written: {a.out}  (slices {a.slices} x copies {a.copies} at {a.size} x {a.size}, median of {a.runs}, "
          f"torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
