"""Stage 2: a ControlNet conditioned on the mask encoding, trained on top of the tuned U-Net.

``ControlNetModel.from_unet(tuned_unet)`` copies the tuned encoder; only the ControlNet trains
(the U-Net, text encoder and VAE are frozen). The prompt during training is the instance prompt.
The conditioning image is `conditioning.encode_mask` of each slice's mask (``mask`` or
``mask+canny``), recorded in the saved config as ``styleswap.json`` next to the weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from styleswap.errors import StyleSwapError

from .conditioning import ENCODINGS
from .finetune import DEFAULT_INSTANCE_PROMPT, _frozen_to, diffusion_batch, encode_training_set
from .loading import load_components, load_unet
from .training import TrainArgs, barrier, image_grid, stage_record, train, training_device, write_json

SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)


def conditioning_channels(unet, vae_scale_factor: int) -> tuple[int, ...]:
    """The ControlNet's conditioning-embedding widths: SD's (16, 32, 96, 256) for SD-sized U-Nets,
    (8, 16, 16, 32)-like for tiny ones; one entry per VAE level (downsampling = VAE factor)."""
    n = int(math.log2(vae_scale_factor)) + 1
    if unet.config.block_out_channels[0] >= 128 and n == 4:
        return SD_CONDITIONING_CHANNELS
    return tuple(min(8 * 2**i, 32) for i in range(n))


def train_controlnet(base_model: str | Path, unet: str | Path, data_dir: str | Path, output_dir: str | Path,
                     args: TrainArgs | None = None, instance_prompt: str = DEFAULT_INSTANCE_PROMPT,
                     conditioning: str = "mask", resolution: int | None = None, prompt_set: str = "default",
                     local_files_only: bool | None = None, validation_inference_steps: int = 20,
                     validation_slices: int = 3) -> dict[str, Any]:
    """Train a ControlNet; writes it with save_pretrained to ``output_dir`` (plus controlnet.json).

    Validation grids (``validation/step-<step>.png``): one row per fixed slice (the first
    ``validation_slices``): conditioning image, source image, then for each fixed prompt (the
    instance prompt and two from the prompt set, seeds 0 and 1) the Style Swap render (base U-Net)
    followed by the tuned-U-Net render.
    """
    from diffusers import ControlNetModel

    if conditioning not in ENCODINGS:
        raise StyleSwapError(f"--conditioning must be one of {', '.join(ENCODINGS)}, got {conditioning!r}")
    out = Path(output_dir)
    args = args or TrainArgs(output_dir=out)
    args.output_dir = out
    comps = load_components(base_model, local_files_only=local_files_only, with_unet=False)
    tuned = load_unet(unet)
    slices, res, prompts, emb, mean, std = encode_training_set(comps, data_dir, resolution, instance_prompt,
                                                               training_device(args))
    conds = torch.stack([slices.cond_tensor(i, res, conditioning) for i in range(len(slices))])
    vsf = 2 ** (len(comps.vae.config.block_out_channels) - 1)
    cn = ControlNetModel.from_unet(tuned, conditioning_embedding_out_channels=conditioning_channels(tuned, vsf))
    cn.requires_grad_(True)
    if args.gradient_checkpointing:
        # The loss backpropagates through the frozen U-Net into the ControlNet's residuals, so its
        # activations are kept for the backward pass as well: checkpoint them too.
        tuned.enable_gradient_checkpointing()
    state = {"device": torch.device("cpu"), "dtype": torch.float32}

    def on_device(device, dtype):
        state.update(device=device, dtype=dtype)
        _frozen_to(comps, tuned)(device, dtype)
        _frozen_to(comps, comps.text_encoder, comps.vae)(device, torch.float32)

    def loss_fn(model, idx, gen):
        noisy, t, target = diffusion_batch(comps, mean, std, idx, gen)
        dev, dt = state["device"], state["dtype"]
        noisy, t, e = noisy.to(dev), t.to(dev), emb[idx].to(dev)
        down, mid = model(noisy, t, encoder_hidden_states=e, controlnet_cond=conds[idx].to(dev), return_dict=False)
        pred = tuned(
            noisy.to(dt), t, e.to(dt),
            down_block_additional_residuals=[d.to(dt) for d in down],
            mid_block_additional_residual=mid.to(dt),
        ).sample
        return F.mse_loss(pred.float(), target.to(dev))

    def validate(model, step):
        from .pipeline import build_pipeline, render_batch
        from .prompts import load_prompt_set

        pset = load_prompt_set(prompt_set)
        vprompts = [prompts[0], pset.sample(0), pset.sample(1)]
        k = min(validation_slices, len(slices))
        base_unet = load_components(base_model, local_files_only=local_files_only).unet.to(state["device"])
        cols: list[list] = [[] for _ in range(k)]
        for i in range(k):
            cols[i].append(conds[i].permute(1, 2, 0).numpy())
            cols[i].append(((slices.image_tensor(i, res)[0] + 1) / 2).numpy())
        tuned.float()  # frozen in half precision for training; a pipeline wants one dtype per model set
        for p in vprompts:
            for u in (base_unet, tuned):
                pipe = build_pipeline(comps, u, model, "unipc")
                ims = render_batch(pipe, conds[:k], [p] * k, list(range(k)), steps=validation_inference_steps,
                                   guidance_scale=7.5, conditioning_scale=1.0, resolution=res)
                for i in range(k):
                    cols[i].append(ims[i].numpy())
        tuned.to(state["dtype"])
        (out / "validation").mkdir(parents=True, exist_ok=True)
        image_grid(cols).save(out / "validation" / f"step-{step:06d}.png")

    out.mkdir(parents=True, exist_ok=True)
    result = train(args, cn, loss_fn, len(slices), validate_fn=validate, stage="controlnet", on_device=on_device,
                   extra_state={"instance_prompt": instance_prompt, "conditioning": conditioning})
    if not result.is_main_process:
        barrier()  # the main process saves
        return {"global_step": result.global_step}
    cn.to("cpu", torch.float32).save_pretrained(str(out), safe_serialization=True)
    info = stage_record(result, args, slices.data_hash, base_model=str(base_model), unet=str(unet),
                        controlnet=str(out), conditioning=conditioning, instance_prompt=instance_prompt,
                        resolution=res, resumed_from=result.resumed_from)
    write_json(out / "controlnet.json", info)
    barrier()
    return info
