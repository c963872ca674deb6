"""Model presets.

``tiny``
    A Stable Diffusion-shaped model built from config, no download: 64 x 64 images, an 8x VAE
    (latent 8 x 8 x 4), a 2-level U-Net (block_out_channels (32, 64), one layer per block,
    cross-attention dim 32), a 2-layer CLIP text encoder of width 32 and a byte-level
    ``CLIPTokenizer`` written locally (``vocab.json`` = the 256 byte symbols, their ``</w>``
    variants and the two special tokens; ``merges.txt`` = only the version line, so every prompt
    is tokenized character by character). It is saved in the diffusers Stable Diffusion folder
    layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``; safetensors only) and loaded by exactly the code that loads a real SD folder.
    Its VAE and "base" U-Net are random: the VAE must be learned on the source slices before
    anything else (``finetune.learn_vae``), and a Style Swap render with a random base U-Net only
    shows that the plumbing works, not the method.

``sd15``
    A real Stable Diffusion 1.5 folder (or hub id when online) given by the user, 512 x 512.

``sd15-random``
    **RANDOM WEIGHTS: EVERY RENDER IS NOISE. For tests and measurements only, never for data.**
    The exact architectures of Stable Diffusion 1.5 built from config (`sd15_configs`): the U-Net
    (859.5M parameters), the VAE (83.7M), the CLIP ViT-L/14 text encoder (123.1M, 77 tokens) and
    SD's PNDM scheduler config, saved in the same diffusers layout as ``tiny`` and usable wherever a
    ``base_model`` folder is. A ControlNet made from its U-Net (``ControlNetModel.from_unet``) has
    SD's ControlNet shapes (361.3M). It exercises every code path and every cost of the ``sd15``
    path (shapes, memory, speed, fp16/bf16, gradient checkpointing) except the prior itself.
    Its tokenizer is the local byte-level one (model_max_length 77): prompts tokenize one byte per
    token, so a prompt takes more tokens than with SD's real BPE tokenizer (long prompts are cut
    at 77 sooner), and token ids differ. The text encoder keeps SD's vocabulary size (49408, which
    covers the 514 byte-level ids) so its embedding table has SD's shape; only its bos/eos/pad ids
    are set to the byte tokenizer's. ``styleswap_preset.json`` says ``"random_weights": true`` and
    loading such a folder warns. Build it with
    ``python -m styleswap.generator.diffusion.presets sd15-random --out models/sd15-random``
    (4.3 GB of safetensors), or ``preset: sd15-random`` in a build recipe without ``base_model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleswap.errors import StyleSwapError


@dataclass(frozen=True)
class Preset:
    name: str
    resolution: int
    #: True when the model is built from config here (its VAE must be learned first).
    from_config: bool
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 64, True, "built from config: 64x64, 8x VAE learned on the source slices"),
    "sd15": Preset("sd15", 512, False, "a Stable Diffusion 1.5 folder or hub id given with --base-model"),
    "sd15-random": Preset("sd15-random", 512, True,
                          "SD 1.5 architectures with RANDOM weights (renders are noise): for tests and measurements"),
}

#: Token ids of the local byte-level tokenizer (256 bytes, 256 `</w>` variants, then specials).
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
TINY_MAX_LENGTH = 128
SD15_MAX_LENGTH = 77
#: What a random-weights folder's ``styleswap_preset.json`` says, and what loading it warns.
RANDOM_WEIGHTS_WARNING = "random weights: every render is noise (sd15-random exists to test and to measure)"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise StyleSwapError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode symbol map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_byte_tokenizer(folder: Path, model_max_length: int = TINY_MAX_LENGTH) -> None:
    """Write a byte-level CLIP tokenizer (vocab.json, merges.txt, configs) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": model_max_length,
                "bos_token": BOS_TOKEN,
                "eos_token": EOS_TOKEN,
                "pad_token": EOS_TOKEN,
                "unk_token": EOS_TOKEN,
            },
            indent=2,
        )
    )
    from transformers import CLIPTokenizer

    # Read back from the files (the way any SD folder's tokenizer is read) and re-save, which
    # adds tokenizer.json; checks that the vocabulary really tokenizes byte by byte.
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    ids = tok("ab").input_ids
    if ids != [vocab[BOS_TOKEN], vocab["a"], vocab["b</w>"], vocab[EOS_TOKEN]]:
        raise StyleSwapError(f"the byte-level tokenizer in {folder} does not tokenize as expected: {ids}")
    tok.save_pretrained(str(folder))


def tiny_configs(resolution: int = 64) -> dict[str, dict[str, Any]]:
    """Configs of the tiny preset's models (JSON-able, recorded in describe())."""
    if resolution % 8:
        raise StyleSwapError(f"--resolution {resolution} is not divisible by 8")
    vocab_size = 512 + 2
    return {
        "unet": dict(
            sample_size=resolution // 8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        ),
        "vae": dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=resolution,
        ),
        "text_encoder": dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_MAX_LENGTH,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            projection_dim=32,
        ),
        "scheduler": dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            clip_sample=False,
            steps_offset=1,
        ),
    }


def sd15_configs() -> dict[str, dict[str, Any]]:
    """Configs of Stable Diffusion 1.5's models (its ``*/config.json``), for ``sd15-random``.

    Architecture fields are SD 1.5's exactly; the text encoder's bos/eos/pad ids are the local
    byte-level tokenizer's (512, 513, 513) instead of CLIP's BPE ids.
    """
    return {
        "unet": dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            center_input_sample=False,
            flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            downsample_padding=1,
            mid_block_scale_factor=1,
            act_fn="silu",
            norm_num_groups=32,
            norm_eps=1e-5,
            cross_attention_dim=768,
            attention_head_dim=8,
        ),
        "vae": dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            act_fn="silu",
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        "text_encoder": dict(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=SD15_MAX_LENGTH,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=768,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        ),
        "scheduler": dict(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="epsilon",
        ),
    }


def _save_sd_folder(folder: Path, cfg: dict[str, dict[str, Any]], scheduler_class: str, max_length: int,
                    seed: int, meta: dict[str, Any]) -> Path:
    """Build every model of ``cfg`` (seeded), write the byte tokenizer, save the diffusers layout."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    scheduler = getattr(diffusers, scheduler_class)(**cfg["scheduler"])
    tok_dir = folder / "tokenizer"
    write_byte_tokenizer(tok_dir, model_max_length=max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / "styleswap_preset.json").write_text(json.dumps(meta, indent=2))
    return folder


def build_tiny(folder: str | Path, resolution: int = 64, seed: int = 0) -> Path:
    """Build the ``tiny`` preset from config (seeded) and save it in the diffusers SD layout."""
    meta = {"preset": "tiny", "resolution": resolution, "seed": seed, "vae_learned": False}
    return _save_sd_folder(Path(folder), tiny_configs(resolution), "DDPMScheduler", TINY_MAX_LENGTH, seed, meta)


def build_sd15_random(folder: str | Path, seed: int = 0) -> Path:
    """Build ``sd15-random`` (SD 1.5's architectures, RANDOM weights: renders are noise) and save it
    in the diffusers SD layout. Takes about 4 GB of memory and 4.3 GB of disk."""
    meta = {"preset": "sd15-random", "resolution": 512, "seed": seed, "random_weights": True,
            "warning": RANDOM_WEIGHTS_WARNING}
    return _save_sd_folder(Path(folder), sd15_configs(), "PNDMScheduler", SD15_MAX_LENGTH, seed, meta)


def main(argv: list[str] | None = None) -> None:
    """``python -m styleswap.generator.diffusion.presets tiny|sd15-random --out DIR [--seed N]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m styleswap.generator.diffusion.presets",
                                 description="Build a preset from config and save it as a diffusers SD folder.")
    ap.add_argument("preset", choices=[name for name, p in PRESETS.items() if p.from_config])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if (a.out / "model_index.json").exists():
        raise SystemExit(f"{a.out} already holds a model folder; choose another --out")
    folder = build_tiny(a.out, seed=a.seed) if a.preset == "tiny" else build_sd15_random(a.out, seed=a.seed)
    print(f"{a.preset}: {folder}" + (f"  ({RANDOM_WEIGHTS_WARNING})" if a.preset == "sd15-random" else ""))


if __name__ == "__main__":
    main()
