"""Stage 0 (tiny preset only): learn the VAE on the source slices. Stage 1: DreamBooth tuning.

DreamBooth here is instance tuning without prior preservation: the U-Net learns to denoise the
source slices given the instance prompt (default ``"a sks {modality} slice"``, modality from each
row). The text encoder and the VAE are frozen; latents and prompt embeddings are computed once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from styleswap.errors import StyleSwapError

from .data import SliceSet, load_slices
from .loading import SDComponents, check_sd_folder, folder_hash, load_components
from .training import TrainArgs, barrier, image_grid, stage_record, train, training_device, write_json

DEFAULT_INSTANCE_PROMPT = "a sks {modality} slice"


def instance_prompts(slices: SliceSet, template: str = DEFAULT_INSTANCE_PROMPT) -> list[str]:
    return [template.format(modality=m) for m in slices.modalities]


@torch.no_grad()
def encode_text(comps: SDComponents, prompts: list[str]) -> torch.Tensor:
    """(N, L, D) CLIP hidden states, one forward per unique prompt."""
    unique = list(dict.fromkeys(prompts))
    tok = comps.tokenizer(unique, padding="max_length", max_length=comps.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    emb = comps.text_encoder(tok.input_ids.to(comps.text_encoder.device))[0].float().cpu()
    return emb[[unique.index(p) for p in prompts]]


@torch.no_grad()
def encode_latent_stats(comps: SDComponents, slices: SliceSet, resolution: int, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of every slice (sampled afresh at every step)."""
    means, stds = [], []
    dev = comps.vae.device
    for s in range(0, len(slices), batch):
        x = torch.stack([slices.image_tensor(i, resolution) for i in range(s, min(s + batch, len(slices)))])
        post = comps.vae.encode(x.to(dev, comps.vae.dtype)).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def encode_training_set(comps: SDComponents, data_dir: str | Path, resolution: int | None, instance_prompt: str,
                        device: torch.device | None = None):
    """What both diffusion stages train on: (slices, resolution, instance prompts, their embeddings,
    latent mean and std per slice), with the frozen text encoder and VAE run once up front, on
    ``device`` (the training device) when given; the results are kept on the CPU."""
    slices = load_slices(data_dir)
    if device is not None:
        comps.vae.to(device)
        comps.text_encoder.to(device)
    res = resolution or comps.resolution
    if res % 8:
        raise StyleSwapError(f"--resolution {res} is not divisible by 8")
    prompts = instance_prompts(slices, instance_prompt)
    emb = encode_text(comps, prompts)
    mean, std = encode_latent_stats(comps, slices, res)
    return slices, res, prompts, emb, mean, std


def diffusion_batch(comps: SDComponents, mean, std, idx, gen):
    """Noisy latents, timesteps and the training target of one micro-batch (all on CPU)."""
    sched = comps.scheduler
    sf = float(comps.vae.config.scaling_factor)
    shift = getattr(comps.vae.config, "shift_factor", None) or 0.0
    lat = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) - shift
    lat = lat * sf
    noise = torch.randn(lat.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=gen)
    noisy = sched.add_noise(lat, noise, t)
    ptype = sched.config.prediction_type
    if ptype == "epsilon":
        target = noise
    elif ptype == "v_prediction":
        target = sched.get_velocity(lat, noise, t)
    else:
        raise StyleSwapError(f"unsupported prediction_type {ptype!r} in the scheduler config")
    return noisy, t, target


def _frozen_to(comps: SDComponents, *models):
    def move(device: torch.device, dtype: torch.dtype) -> None:
        for m in models:
            if m is not None:
                m.requires_grad_(False)
                m.to(device, dtype)

    return move


# --- stage 0: the VAE of a preset built from config ----------------------------------------------


def learn_vae(base_model: str | Path, data_dir: str | Path, output_dir: str | Path, args: TrainArgs | None = None,
              kl_weight: float = 1e-6, resolution: int | None = None) -> Path:
    """Train the VAE of ``base_model`` on the source slices and write a full SD folder with it.

    The output is ``base_model`` with ``vae/`` replaced (and ``scaling_factor`` set to 1/std of the
    learned latents, as Stable Diffusion does), loadable by `loading.load_components`.
    """
    base = check_sd_folder(base_model)
    out = Path(output_dir)
    args = args or TrainArgs(output_dir=out, max_train_steps=400, learning_rate=1e-3, train_batch_size=8)
    args.output_dir = out
    comps = load_components(base)
    slices = load_slices(data_dir)
    res = resolution or comps.resolution
    images = torch.stack([slices.image_tensor(i, res) for i in range(len(slices))])
    vae = comps.vae
    vae.requires_grad_(True)
    state = {"device": torch.device("cpu")}

    def on_device(device, dtype):
        state["device"] = device

    def loss_fn(model, idx, gen):
        x = images[idx].to(state["device"])
        post = model.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(x.device)
        rec = model.decode(z).sample
        return F.mse_loss(rec.float(), x) + kl_weight * post.kl().mean()

    out.mkdir(parents=True, exist_ok=True)
    result = train(args, vae, loss_fn, len(slices), stage="vae", on_device=on_device)
    if not result.is_main_process:
        barrier()  # the main process saves
        return out
    vae = vae.to("cpu", torch.float32).eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[s : s + 8]).latent_dist.mean for s in range(0, len(images), 8)])
        rec = torch.cat([vae.decode(vae.encode(images[s : s + 8]).latent_dist.mean).sample for s in range(0, len(images), 8)])
    scaling = float(1.0 / max(lat.std().item(), 1e-6))
    vae.register_to_config(scaling_factor=scaling)
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(out / sub, ignore_errors=True)
        shutil.copytree(base / sub, out / sub)
    shutil.copy2(base / "model_index.json", out / "model_index.json")
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    meta: dict[str, Any] = {}
    if (base / "styleswap_preset.json").is_file():
        meta = json.loads((base / "styleswap_preset.json").read_text())
    meta.update(
        vae_learned=True, data_hash=slices.data_hash, vae_steps=result.global_step, scaling_factor=scaling,
        reconstruction_mse=float(F.mse_loss(rec, images)), vae_seconds_per_step=result.seconds_per_step,
        base_model=str(base), base_hash=folder_hash(base),
    )
    write_json(out / "styleswap_preset.json", meta)
    barrier()
    return out


# --- stage 1: DreamBooth --------------------------------------------------------------------------


def finetune(base_model: str | Path, data_dir: str | Path, output_dir: str | Path, args: TrainArgs | None = None,
             instance_prompt: str = DEFAULT_INSTANCE_PROMPT, resolution: int | None = None,
             local_files_only: bool | None = None, validation_seeds: tuple[int, ...] = (0, 1, 2),
             validation_inference_steps: int = 20) -> dict[str, Any]:
    """DreamBooth-tune the U-Net of ``base_model`` on a dataset folder; returns what it wrote.

    Writes ``<output_dir>/unet`` (save_pretrained, safetensors), ``<output_dir>/finetune.json`` and,
    while training, ``checkpoint-<step>/`` and ``validation/step-<step>.png`` (rows: base U-Net,
    tuned U-Net; columns: validation seeds; prompt: the instance prompt).
    """
    out = Path(output_dir)
    args = args or TrainArgs(output_dir=out)
    args.output_dir = out
    comps = load_components(base_model, local_files_only=local_files_only)
    slices, res, prompts, emb, mean, std = encode_training_set(comps, data_dir, resolution, instance_prompt,
                                                               training_device(args))
    unet = comps.unet
    unet.requires_grad_(True)
    base_unet_ref = base_model
    state = {"device": torch.device("cpu"), "dtype": torch.float32}

    def on_device(device, dtype):
        state.update(device=device, dtype=dtype)
        _frozen_to(comps, comps.text_encoder, comps.vae)(device, dtype if dtype != torch.float16 else torch.float32)

    def loss_fn(model, idx, gen):
        noisy, t, target = diffusion_batch(comps, mean, std, idx, gen)
        dev = state["device"]
        pred = model(noisy.to(dev), t.to(dev), emb[idx].to(dev)).sample
        return F.mse_loss(pred.float(), target.to(dev))

    def validate(model, step):
        from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler

        base_unet = load_components(base_unet_ref, local_files_only=local_files_only).unet.to(state["device"])
        rows = []
        for u in (base_unet, model):
            pipe = StableDiffusionPipeline(
                vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=u,
                scheduler=UniPCMultistepScheduler.from_config(comps.scheduler.config),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            gens = [torch.Generator().manual_seed(s) for s in validation_seeds]
            ims = pipe([prompts[0]] * len(gens), height=res, width=res, num_inference_steps=validation_inference_steps,
                       generator=gens, output_type="np").images
            rows.append([im for im in ims])
        (out / "validation").mkdir(parents=True, exist_ok=True)
        image_grid(rows).save(out / "validation" / f"step-{step:06d}.png")

    out.mkdir(parents=True, exist_ok=True)
    result = train(args, unet, loss_fn, len(slices), validate_fn=validate, stage="finetune", on_device=on_device,
                   extra_state={"instance_prompt": instance_prompt})
    if not result.is_main_process:
        barrier()  # the main process saves
        return {"global_step": result.global_step}
    unet.to("cpu", torch.float32).save_pretrained(str(out / "unet"), safe_serialization=True)
    info = stage_record(result, args, slices.data_hash, base_model=str(base_model), unet=str(out / "unet"),
                        instance_prompt=instance_prompt, resolution=res)
    write_json(out / "finetune.json", info)
    barrier()
    return info
