"""Batched engine render vs a naive per-image loop over the diffusers pipeline (tiny preset).

Same model, scheduler (UniPC), steps and resolution. Prints a table and writes
bench/results/render.json. Usage: python bench/bench_render.py [--images 16] [--batch 8] [--steps 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render.json")
    a = ap.parse_args()

    from diffusers import ControlNetModel

    from styleswap.generator.diffusion.conditioning import encode_mask
    from styleswap.generator.diffusion.engine import ControlNetEngine
    from styleswap.generator.diffusion.presets import build_tiny
    from styleswap.generator.engines.base import CopyRequest

    tmp = Path(tempfile.mkdtemp(prefix="bench_render_"))
    base = build_tiny(tmp / "tiny")
    from styleswap.generator.diffusion.loading import load_unet

    cn = ControlNetModel.from_unet(load_unet(base / "unet"), conditioning_embedding_out_channels=(8, 16, 32, 32))
    cn.save_pretrained(str(tmp / "cn"), safe_serialization=True)
    eng = ControlNetEngine(base_model=str(base), controlnet=str(tmp / "cn"), steps=a.steps, batch_size=a.batch, device="cpu")
    eng.load()
    rng = np.random.default_rng(0)
    reqs = []
    for i in range(a.images):
        m = np.zeros((64, 64), np.uint8)
        m[rng.integers(5, 20) : rng.integers(30, 60), rng.integers(5, 20) : rng.integers(30, 60)] = 1 + i % 4
        reqs.append(CopyRequest(f"c/{i:04d}", 0, i, np.zeros((64, 64), np.float32), m))
    pipe, res = eng.pipeline, eng.resolution

    def batched():
        eng.render(reqs)

    def naive():
        for r in reqs:
            pipe(prompt=eng.prompt_for(r.seed), image=encode_mask(r.mask, res)[None], height=res, width=res,
                 num_inference_steps=a.steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(r.seed),
                 output_type="np")

    results = {}
    for name, fn in (("naive_loop", naive), ("engine_batched", batched)):
        fn()  # warm-up
        times = []
        for _ in range(a.runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        results[name] = {"median_s": med, "images_per_s": a.images / med, "runs_s": times}
    ratio = results["engine_batched"]["images_per_s"] / results["naive_loop"]["images_per_s"]
    print(f"{'method':<16} {'median s':>9} {'images/s':>9}")
    for k, v in results.items():
        print(f"{k:<16} {v['median_s']:>9.3f} {v['images_per_s']:>9.2f}")
    print(f"speed-up batched/naive: {ratio:.2f}x  (images={a.images}, batch={a.batch}, steps={a.steps}, res={res}, "
          f"threads={torch.get_num_threads()})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"settings": vars(a) | {"out": str(a.out), "resolution": res,
                                                       "threads": torch.get_num_threads()},
                                 "results": results, "speedup": ratio}, indent=2))


if __name__ == "__main__":
    main()
