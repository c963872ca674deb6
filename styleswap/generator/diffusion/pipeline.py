"""The Stable Diffusion ControlNet pipeline, as rendering and ControlNet validation both use it.

Inference only: `build_pipeline` assembles a pipeline from loaded components (no safety checker),
`render_batch` renders one batch with one ``torch.Generator`` per image. The engine (`engine`)
and the ControlNet stage's validation grids (`controlnet`) both import it; neither imports the other.
"""

from __future__ import annotations

import torch

from styleswap.errors import StyleSwapError

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
