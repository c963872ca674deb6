"""One loader for every Stable Diffusion folder: the tiny preset and a real SD 1.x folder or hub id.

Everything is read with ``from_pretrained(..., use_safetensors=True)``; nothing is unpickled and no
remote code runs. ``local_files_only`` defaults to True for a local folder and to the value of
``HF_HUB_OFFLINE`` for a hub id.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from styleswap.errors import StyleSwapError

#: Files a local folder must hold to be a diffusers Stable Diffusion layout.
REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)
_WEIGHT_DIRS = ("unet", "vae", "text_encoder")


def quiet_libraries() -> None:
    """Keep diffusers/transformers to errors: their per-load weight bars and dtype notes would
    bury the build's own progress bar and one-line errors."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")



def check_sd_folder(folder: str | Path) -> Path:
    """Raise a one-line StyleSwapError unless ``folder`` is a diffusers SD layout with safetensors."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise StyleSwapError(f"base model folder {folder} does not exist")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    tok = folder / "tokenizer"
    if not ((tok / "vocab.json").is_file() or (tok / "tokenizer.json").is_file()):
        missing.append("tokenizer/vocab.json")
    for sub in _WEIGHT_DIRS:
        if (folder / sub).is_dir() and not any((folder / sub).glob("*.safetensors")):
            missing.append(f"{sub}/*.safetensors")
    if missing:
        raise StyleSwapError(f"{folder} is not a diffusers Stable Diffusion folder: missing {', '.join(missing)}")
    return folder


def check_model_folder(folder: str | Path, what: str) -> Path:
    """A single-model folder (a U-Net or ControlNet saved with save_pretrained)."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise StyleSwapError(f"{what} folder {folder} is not a diffusers model folder: missing config.json or *.safetensors")
    return folder


def _source(ref: str | Path, local_files_only: bool | None) -> tuple[str, bool]:
    p = Path(str(ref)).expanduser()
    if p.exists() or str(ref).startswith((".", "/", "~")):
        return str(check_sd_folder(p)), True
    # A hub id ("org/name"): only ever downloaded when online and allowed.
    return str(ref), _offline() if local_files_only is None else local_files_only


@dataclass
class SDComponents:
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any
    source: str
    unet_sample_size: int = 64

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        return int(self.unet_sample_size) * self.vae_scale_factor


def load_components(ref: str | Path, local_files_only: bool | None = None, with_unet: bool = True) -> SDComponents:
    """Load VAE, text encoder, tokenizer, U-Net and scheduler of an SD folder or hub id."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    quiet_libraries()

    src, lfo = _source(ref, local_files_only)
    kw = dict(local_files_only=lfo)
    try:
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", use_safetensors=True, **kw)
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", use_safetensors=True, **kw)
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", use_safetensors=True, **kw) if with_unet else None
        unet_cfg = unet.config if unet is not None else UNet2DConditionModel.load_config(src, subfolder="unet", **kw)
        sample_size = unet_cfg["sample_size"] if isinstance(unet_cfg, dict) else unet_cfg.sample_size
        scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    except (OSError, EnvironmentError) as exc:
        raise StyleSwapError(f"cannot load Stable Diffusion model {src}: {str(exc).splitlines()[0]}") from None
    for m in (vae, text_encoder, unet):
        if m is not None:
            m.eval()
    return SDComponents(vae, text_encoder, tokenizer, unet, scheduler, src, int(sample_size))


def load_unet(folder: str | Path, local_files_only: bool = True):
    from diffusers import UNet2DConditionModel

    quiet_libraries()

    folder = check_model_folder(folder, "U-Net")
    return UNet2DConditionModel.from_pretrained(str(folder), use_safetensors=True, local_files_only=local_files_only).eval()


def load_controlnet(folder: str | Path, local_files_only: bool = True):
    from diffusers import ControlNetModel

    quiet_libraries()

    folder = check_model_folder(folder, "ControlNet")
    return ControlNetModel.from_pretrained(str(folder), use_safetensors=True, local_files_only=local_files_only).eval()


def folder_hash(folder: str | Path) -> str | None:
    """sha256 over the relative names and bytes of a model folder's configs and safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt"))
    files = [p for p in files if "checkpoint-" not in str(p.relative_to(folder)) and "validation" not in p.parts]
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
