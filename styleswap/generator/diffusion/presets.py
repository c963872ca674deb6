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
}

#: Token ids of the local byte-level tokenizer (256 bytes, 256 `</w>` variants, then specials).
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
TINY_MAX_LENGTH = 128


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


def build_tiny(folder: str | Path, resolution: int = 64, seed: int = 0) -> Path:
    """Build the ``tiny`` preset from config (seeded) and save it in the diffusers SD layout."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    cfg = tiny_configs(resolution)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    scheduler = DDPMScheduler(**cfg["scheduler"])
    tok_dir = folder / "tokenizer"
    write_byte_tokenizer(tok_dir)
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
    (folder / "styleswap_preset.json").write_text(
        json.dumps({"preset": "tiny", "resolution": resolution, "seed": seed, "vae_learned": False}, indent=2)
    )
    return folder
