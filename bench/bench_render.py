"""Batched engine render vs one ``StableDiffusionControlNetPipeline`` call per image, same models.

Same models, scheduler (UniPC), steps, guidance and resolution; images/s of each and the ratio.
Prints a table and writes bench/results/render.json (``--out``).

    python bench/bench_render.py                                  # tiny preset, 64 x 64, CPU
    python bench/bench_render.py --preset sd15-random --device cuda --mixed-precision fp16 --images 16 --batch 16
    python bench/bench_render.py --preset sd15-random --resolution 256 --images 2 --batch 2 --steps 2 --runs 1  # CPU

``sd15-random`` is SD 1.5's architectures with random weights (4.3 GB built from config, no download):
the images are noise, the cost is SD 1.5's. The ControlNet is ``ControlNetModel.from_unet`` of the
base U-Net, untrained (its cost does not depend on its weights). ``--no-sdpa`` swaps every
attention processor for the classic (non-SDPA) one; ``--compile`` wraps the U-Net and the ControlNet
in ``torch.compile`` (the warm-up run pays the compilation). bench/gpu/diffusion.py reuses the
functions here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

GUIDANCE = 7.5


def build_models(preset: str, folder: Path, resolution: int | None = None) -> tuple[Path, Path]:
    """A base model folder of ``preset`` (tiny or sd15-random) and a ControlNet made from its U-Net."""
    from diffusers import ControlNetModel

    from styleswap.generator.diffusion.controlnet import conditioning_channels
    from styleswap.generator.diffusion.loading import load_components
    from styleswap.generator.diffusion.presets import build_sd15_random, build_tiny

    folder = Path(folder)
    base, cn = folder / preset, folder / f"{preset}-controlnet"
    if not (base / "styleswap_preset.json").is_file():
        build_tiny(base, resolution=resolution or 64) if preset == "tiny" else build_sd15_random(base)
    if not (cn / "config.json").is_file():
        comps = load_components(base)
        channels = conditioning_channels(comps.unet, comps.vae_scale_factor)
        ControlNetModel.from_unet(comps.unet, conditioning_embedding_out_channels=channels).save_pretrained(
            str(cn), safe_serialization=True)
    return base, cn


def make_engine(base: Path, cn: Path, *, steps: int, batch: int, device: str, mixed_precision: str = "no",
                resolution: int | None = None):
    """A loaded ControlNetEngine (Style Swap: the base U-Net renders)."""
    import warnings

    from styleswap.generator.diffusion.engine import ControlNetEngine

    eng = ControlNetEngine(base_model=str(base), controlnet=str(cn), steps=steps, batch_size=batch, device=device,
                           mixed_precision=mixed_precision, guidance_scale=GUIDANCE, resolution=resolution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sd15-random's "random weights" warning: known here
        eng.load()
    return eng


def make_requests(n: int, size: int) -> list:
    """``n`` copy requests of distinct rectangle masks on ``size`` x ``size`` slices, seeds 0..n-1."""
    from styleswap.generator.engines.base import CopyRequest

    rng = np.random.default_rng(0)
    reqs = []
    for i in range(n):
        m = np.zeros((size, size), np.uint8)
        lo, hi = size // 12, size // 3
        m[rng.integers(lo, hi) : rng.integers(size // 2, size - 2), rng.integers(lo, hi) : rng.integers(size // 2, size - 2)] = 1 + i % 4
        reqs.append(CopyRequest(f"c/{i:04d}", 0, i, np.zeros((size, size), np.float32), m))
    return reqs


def ingest(source: str, size: int, out: Path, log) -> subprocess.Popen:
    """Start ``augment ingest SOURCE --size SIZE --out OUT`` (e.g. ``phantom:1``), output to ``log``."""
    augment = Path(sys.executable).with_name("augment")
    cmd = [str(augment) if augment.exists() else "augment", "ingest", source, "--size", str(size), "--out", str(out),
           "--overwrite", "--no-preview"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])


def slice_requests(data_dir: Path, slices: int, copies: int) -> list:
    """``copies`` requests for each of the first ``slices`` slices of a dataset folder, seeded as a build does."""
    from styleswap.generator.diffusion.data import load_slices
    from styleswap.generator.engines.base import CopyRequest
    from styleswap.contract import derive_seed

    s = load_slices(data_dir, limit=slices)
    return [CopyRequest(sid, k, derive_seed(0, sid, k), img, msk)
            for sid, img, msk in zip(s.sample_ids, s.images, s.masks) for k in range(copies)]


def set_sdpa(pipe, enabled: bool) -> None:
    """PyTorch's scaled_dot_product_attention (diffusers' default) or the classic attention."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in (pipe.unet, pipe.controlnet, pipe.vae):
        model = getattr(model, "_orig_mod", model)
        model.set_attn_processor(AttnProcessor2_0() if enabled else AttnProcessor())


def compile_models(pipe, backend: str = "inductor") -> None:
    """``torch.compile`` the U-Net and the ControlNet (diffusers' recipe; the pipeline unwraps them)."""
    pipe.unet = torch.compile(pipe.unet, backend=backend)
    pipe.controlnet = torch.compile(pipe.controlnet, backend=backend)


def batched(eng, reqs) -> Callable[[], None]:
    return lambda: eng.render(reqs)


def naive(eng, reqs) -> Callable[[], None]:
    """One pipeline call per image: prompt encoding, conditioning, sampling and decoding each time
    (decoded as the engine decodes: in the VAE's dtype, float32 under fp16)."""
    from styleswap.generator.diffusion.conditioning import encode_mask
    from styleswap.generator.diffusion.pipeline import decode

    pipe, res, steps = eng.pipeline, int(eng.resolution), eng.settings["steps"]

    def run() -> None:
        for r in reqs:
            latents = pipe(prompt=eng.prompt_for(r.seed), image=encode_mask(r.mask, res)[None], height=res, width=res,
                           num_inference_steps=steps, guidance_scale=GUIDANCE,
                           generator=torch.Generator().manual_seed(r.seed), output_type="latent").images
            decode(pipe, latents).cpu()

    return run


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_images(fn: Callable[[], None], images: int, runs: int) -> dict:
    """Warm-up once (compilation, kernel selection), then the median of ``runs`` timed runs."""
    t = time.perf_counter()
    fn()
    sync()
    warm = time.perf_counter() - t
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"images": images, "warmup_s": warm, "runs_s": times, "median_s": med, "images_per_s": images / med,
            "seconds_per_image": med / images}


def compare(eng, reqs, naive_images: int, runs: int) -> dict:
    """images/s of the batched engine on ``reqs`` and of the per-image pipeline on the first
    ``naive_images`` of them (its cost per image does not depend on how many), and the ratio."""
    out = {"engine_batched": time_images(batched(eng, reqs), len(reqs), runs),
           "naive_per_image": time_images(naive(eng, reqs[:naive_images]), naive_images, runs)}
    out["speedup"] = out["engine_batched"]["images_per_s"] / out["naive_per_image"]["images_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "sd15-random"), default="tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--naive-images", type=int, default=None, help="images of the per-image loop (default: --images)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=None, help="render size (default: the model's, 64 or 512)")
    ap.add_argument("--size", type=int, default=64, help="slice size of the requests (copies come back at this size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    ap.add_argument("--no-sdpa", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--models", type=Path, default=None, help="folder to build (or reuse) the models in")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:  # sd15-random: 5.7 GB, removed after
        run(a, a.models or Path(tmp))


def run(a: argparse.Namespace, models: Path) -> None:
    base, cn = build_models(a.preset, models)
    eng = make_engine(base, cn, steps=a.steps, batch=a.batch, device=a.device, mixed_precision=a.mixed_precision,
                      resolution=a.resolution)
    set_sdpa(eng.pipeline, not a.no_sdpa)
    if a.compile:
        compile_models(eng.pipeline)
    reqs = make_requests(a.images, a.size)
    res = compare(eng, reqs, a.naive_images or a.images, a.runs)
    print(f"{'method':<16} {'median s':>9} {'images/s':>9}")
    for k in ("naive_per_image", "engine_batched"):
        v = res[k]
        print(f"{k:<16} {v['median_s']:>9.3f} {v['images_per_s']:>9.2f}")
    print(f"speed-up batched/naive: {res['speedup']:.2f}x  (preset={a.preset}, images={a.images}, batch={a.batch}, "
          f"steps={a.steps}, res={eng.resolution}, device={a.device}, threads={torch.get_num_threads()})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    settings = vars(a) | {"out": str(a.out), "models": str(a.models), "resolution": eng.resolution,
                          "threads": torch.get_num_threads()}
    a.out.write_text(json.dumps({"settings": settings, "results": res, "speedup": res["speedup"]}, indent=2, default=str))


if __name__ == "__main__":
    main()
