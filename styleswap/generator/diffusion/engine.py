"""``ControlNetEngine``: mask-conditioned Style Swap rendering (registry name ``controlnet``).

Rendering, per batch of requests (one pipeline call per batch):

1. each request's mask is resized nearest-neighbour to the model resolution and encoded as the
   conditioning image (`conditioning.encode_mask`, the encoding the ControlNet was trained with);
2. each copy's prompt is drawn from the prompt set with the copy's seed;
3. the batch's unique prompts (and the negative prompt) are encoded once;
4. one ``torch.Generator`` (CPU) per image, seeded with ``request.seed``, draws that image's
   initial latents, so an image does not depend on the batch it is rendered in;
5. the pipeline output (RGB in [0, 1]) becomes grayscale as the **mean of R, G and B**, and is
   resized back to the request's image size with antialiased bilinear; float32 in [0, 1].

Style Swap (``style_swap=True``, the method): the ControlNet is attached to the *base* U-Net of
``base_model``. ``style_swap=False`` attaches it to the tuned U-Net (``unet``), for the ablation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from styleswap.errors import StyleSwapError
from styleswap.generator.engines.base import Copy, CopyRequest, Engine

from .conditioning import ENCODINGS, encode_mask, resize_image
from .training import MIXED_PRECISION, weight_dtype

SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}


def build_pipeline(comps, unet, controlnet, scheduler: str = "unipc"):
    """A StableDiffusionControlNetPipeline from loaded components (no safety checker)."""
    import diffusers
    from diffusers import StableDiffusionControlNetPipeline

    if scheduler not in SCHEDULERS:
        raise StyleSwapError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    sched = getattr(diffusers, SCHEDULERS[scheduler]).from_config(comps.scheduler.config)
    pipe = StableDiffusionControlNetPipeline(
        vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=unet,
        controlnet=controlnet, scheduler=sched, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def render_batch(pipe, conds: torch.Tensor, prompts: list[str], seeds: list[int], *, steps: int,
                 guidance_scale: float, conditioning_scale: float, resolution: int,
                 negative_prompt: str = "") -> torch.Tensor:
    """One pipeline call for a batch: (B, R, R) grayscale float32 in [0, 1] on CPU."""
    device = pipe._execution_device
    unique = list(dict.fromkeys(prompts))
    do_cfg = guidance_scale > 1.0
    pe, ne = pipe.encode_prompt(
        unique, device, 1, do_cfg, negative_prompt=[negative_prompt] * len(unique) if do_cfg else None
    )
    index = [unique.index(p) for p in prompts]
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    latents = pipe(
        prompt_embeds=pe[index],
        negative_prompt_embeds=ne[index] if do_cfg else None,
        image=conds.to(device, pipe.controlnet.dtype),
        height=resolution,
        width=resolution,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        controlnet_conditioning_scale=conditioning_scale,
        generator=generators,
        output_type="latent",
    ).images
    return decode(pipe, latents).mean(dim=1).clamp(0, 1).cpu()


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) RGB float32 in [0, 1], decoded in the VAE's own dtype: the engine keeps the VAE
    in float32 under fp16 (the pipeline's own decoding would hand it half-precision latents)."""
    vae = pipe.vae
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return (image.float() * 0.5 + 0.5).clamp(0, 1)


class ControlNetEngine(Engine):
    """Style Swap with a mask-conditioned ControlNet (see the module docstring)."""

    name = "controlnet"
    needs_dataset = True

    @classmethod
    def prepare(cls, settings: dict[str, Any], source_dir: Path | None, cache_dir: Path) -> dict[str, Any]:
        """Train what is missing (VAE for tiny, DreamBooth, ControlNet), reuse what exists."""
        from .chain import ensure_models
        from .loading import check_local_models

        check_local_models({"base_model": settings.get("base_model")})  # before the cache is written
        return ensure_models(settings, source_dir, cache_dir)

    def __init__(
        self,
        base_model: str | None = None,
        unet: str | None = None,
        controlnet: str | None = None,
        style_swap: bool = True,
        scheduler: str = "unipc",
        steps: int = 20,
        guidance_scale: float = 7.5,
        controlnet_conditioning_scale: float = 1.0,
        resolution: int | None = None,
        batch_size: int = 8,
        negative_prompt: str = "",
        prompt_set: str = "default",
        mixed_precision: str = "no",
        device: str | None = None,
        conditioning: str | None = None,
        local_files_only: bool | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(**unknown)
        if not base_model or not controlnet:
            raise StyleSwapError("engine 'controlnet' needs base_model and controlnet (run `augment finetune` and `augment controlnet`, or let `augment build` train them)")
        if not style_swap and not unet:
            raise StyleSwapError("engine 'controlnet' with style_swap: false needs unet (the tuned U-Net folder)")
        if resolution is not None and (int(resolution) <= 0 or int(resolution) % 8):
            raise StyleSwapError(f"engine 'controlnet': resolution {resolution} is not divisible by 8")
        if scheduler not in SCHEDULERS:
            raise StyleSwapError(f"engine 'controlnet': unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if mixed_precision not in MIXED_PRECISION:
            raise StyleSwapError(f"engine 'controlnet': mixed_precision must be one of {', '.join(MIXED_PRECISION)}")
        if int(steps) < 1 or int(batch_size) < 1:
            raise StyleSwapError("engine 'controlnet': steps and batch_size must be >= 1")
        if conditioning is not None and conditioning not in ENCODINGS:
            raise StyleSwapError(f"engine 'controlnet': conditioning must be one of {', '.join(ENCODINGS)}")
        from .prompts import load_prompt_set

        self.prompt_set = load_prompt_set(prompt_set)  # fails early on a missing or empty set
        self.settings: dict[str, Any] = dict(
            base_model=str(base_model), unet=str(unet) if unet else None, controlnet=str(controlnet),
            style_swap=bool(style_swap), scheduler=scheduler, steps=int(steps), guidance_scale=float(guidance_scale),
            controlnet_conditioning_scale=float(controlnet_conditioning_scale),
            resolution=int(resolution) if resolution else None, batch_size=int(batch_size),
            negative_prompt=negative_prompt, prompt_set=str(prompt_set), mixed_precision=mixed_precision,
            device=device, conditioning=conditioning, local_files_only=local_files_only,
        )
        self.batch_size = int(batch_size)
        self.pipeline = None
        self.resolution: int | None = self.settings["resolution"]
        self.conditioning: str = conditioning or "mask"
        from .loading import check_local_models

        check_local_models(self.settings)  # bad or pickle-only folders fail here, before a build writes

    # -- loading ----------------------------------------------------------------------------------
    def load(self) -> None:
        if self.pipeline is not None:
            return
        from .loading import load_components, load_controlnet, load_unet

        s = self.settings
        comps = load_components(s["base_model"], local_files_only=s["local_files_only"], with_unet=s["style_swap"])
        unet = comps.unet if s["style_swap"] else load_unet(s["unet"])
        cn = load_controlnet(s["controlnet"])
        meta = Path(s["controlnet"]) / "controlnet.json"
        if s["conditioning"] is None and meta.is_file():
            self.conditioning = json.loads(meta.read_text()).get("conditioning", "mask")
        dtype = weight_dtype(s["mixed_precision"])
        device = torch.device(s["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
        pipe = build_pipeline(comps, unet, cn, s["scheduler"])
        pipe.to(device, dtype)
        if dtype == torch.float16:
            pipe.vae.to(torch.float32)  # fp16 VAE decoding overflows on SD 1.x
        self.pipeline = pipe
        self.resolution = self.resolution or comps.resolution

    # -- rendering --------------------------------------------------------------------------------
    def prompt_for(self, seed: int) -> str:
        return self.prompt_set.sample(seed)

    def render(self, requests: Sequence[CopyRequest]) -> list[Copy]:
        if not requests:
            return []
        self.load()
        s, res = self.settings, int(self.resolution)
        out: list[Copy] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            conds = torch.stack([encode_mask(r.mask, res, self.conditioning, image=r.image) for r in chunk])
            prompts = [self.prompt_for(r.seed) for r in chunk]
            gray = render_batch(
                self.pipeline, conds, prompts, [r.seed for r in chunk], steps=s["steps"],
                guidance_scale=s["guidance_scale"], conditioning_scale=s["controlnet_conditioning_scale"],
                resolution=res, negative_prompt=s["negative_prompt"],
            )
            for r, g, p in zip(chunk, gray, prompts):
                h, w = r.image.shape
                img = resize_image(g, (h, w)).clamp(0, 1).numpy().astype(np.float32)
                out.append(Copy(image=img, prompt=p))
        return out

    # -- provenance -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        from .loading import folder_hash

        s = dict(self.settings)
        hashes = {}
        for key in ("base_model", "unet", "controlnet"):
            if s.get(key) and Path(s[key]).is_dir():
                hashes[key] = folder_hash(s[key])
        return {
            **s,
            "resolution": self.resolution,
            "conditioning": self.conditioning,
            "render_unet": "base" if s["style_swap"] else "tuned",
            "grayscale": "mean of RGB",
            "prompt_set_sha256": self.prompt_set.digest(),
            "model_sha256": hashes,
        }
