"""One loader for every Stable Diffusion folder: the tiny and sd15-random presets and a real SD 1.x
folder or hub id. A folder marked ``random_weights`` (sd15-random) loads with a warning: its
renders are noise.

Everything is read with ``from_pretrained(..., use_safetensors=True)``; nothing is unpickled and no
remote code runs. ``local_files_only`` defaults to True for a local folder and to the value of
``HF_HUB_OFFLINE`` for a hub id.

Pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ...) can run arbitrary code when loaded.
A weight folder that holds them and no safetensors is refused with a one-line error naming the
file, from the file names alone (nothing is opened), unless pickle is allowed: ``--allow-pickle``
on ``augment finetune``, ``augment controlnet`` and ``augment build`` (or ``STYLESWAP_ALLOW_PICKLE=1``
in the environment, which is how the flag reaches render workers). Only then is such a folder
loaded, with ``use_safetensors=False``. A recipe cannot allow pickle: trusting a file is the
decision of whoever runs the command, not of whoever wrote the recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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



#: Weight files that are Python pickles (torch.save / legacy diffusers and transformers weights).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOW_PICKLE_ENV = "STYLESWAP_ALLOW_PICKLE"


def pickle_allowed(allow: bool | None = None) -> bool:
    """``allow`` if given, else whether ``STYLESWAP_ALLOW_PICKLE`` is set to a true value."""
    if allow is not None:
        return bool(allow)
    return os.environ.get(ALLOW_PICKLE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def allow_pickle(enabled: bool = True) -> Iterator[None]:
    """Within the block (and in worker processes started in it) pickle weights may be loaded."""
    if not enabled:
        yield
        return
    old = os.environ.get(ALLOW_PICKLE_ENV)
    os.environ[ALLOW_PICKLE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ALLOW_PICKLE_ENV, None)
        else:
            os.environ[ALLOW_PICKLE_ENV] = old


def with_allow_pickle_flag(command: Callable) -> Callable:
    """Decorator of a command with an ``allow_pickle`` parameter (``--allow-pickle``): pickle is
    allowed while that command runs, in its worker processes too (they inherit the environment)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with allow_pickle(bool(kwargs.get("allow_pickle"))):
            return command(*args, **kwargs)

    return wrapper


def pickle_files(folder: Path) -> list[Path]:
    """Pickle weight files directly in ``folder`` (by name only: nothing is opened)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def _has_safetensors(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def refuse_pickle(path: Path) -> StyleSwapError:
    return StyleSwapError(
        f"{path}: pickle weights (loading them can run arbitrary code) and no safetensors next to them; "
        "convert them to safetensors, or pass --allow-pickle if you trust this file"
    )


def _weights_ok(folder: Path, allow: bool | None) -> bool:
    """True when ``folder`` has loadable weights: safetensors, or pickle files that are allowed.
    Pickle files that are not allowed raise (naming the first); no weights at all gives False."""
    if _has_safetensors(folder):
        return True
    pickles = pickle_files(folder)
    if pickles and not pickle_allowed(allow):
        raise refuse_pickle(pickles[0])
    return bool(pickles)


def use_safetensors(folder: Path, allow: bool | None = None) -> bool:
    """What to pass to ``from_pretrained`` for a checked weight folder: False only for a folder of
    allowed pickle weights without safetensors."""
    return _has_safetensors(folder) or not (pickle_allowed(allow) and pickle_files(folder))


def check_sd_folder(folder: str | Path, allow_pickle: bool | None = None) -> Path:
    """Raise a one-line StyleSwapError unless ``folder`` is a diffusers SD layout with safetensors
    (or, where allowed, pickle weights)."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        kind = "pickle " if folder.suffix.lower() in PICKLE_SUFFIXES else ""
        raise StyleSwapError(f"{folder}: a single {kind}file, not a diffusers Stable Diffusion folder (model_index.json, unet/, vae/, ...)")
    if not folder.is_dir():
        raise StyleSwapError(f"base model folder {folder} does not exist")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    tok = folder / "tokenizer"
    if not ((tok / "vocab.json").is_file() or (tok / "tokenizer.json").is_file()):
        missing.append("tokenizer/vocab.json")
    for sub in _WEIGHT_DIRS:
        if (folder / sub).is_dir() and not _weights_ok(folder / sub, allow_pickle):
            missing.append(f"{sub}/*.safetensors")
    if missing:
        raise StyleSwapError(f"{folder} is not a diffusers Stable Diffusion folder: missing {', '.join(missing)}")
    return folder


def check_model_folder(folder: str | Path, what: str, allow_pickle: bool | None = None) -> Path:
    """A single-model folder (a U-Net or ControlNet saved with save_pretrained)."""
    folder = Path(folder).expanduser()
    if folder.is_file() and folder.suffix.lower() in PICKLE_SUFFIXES:
        raise StyleSwapError(f"{folder}: a single pickle file, not a diffusers {what} folder (config.json + *.safetensors)")
    if not (folder / "config.json").is_file() or not _weights_ok(folder, allow_pickle):
        raise StyleSwapError(f"{what} folder {folder} is not a diffusers model folder: missing config.json or *.safetensors")
    return folder


def _source(ref: str | Path, local_files_only: bool | None, allow_pickle: bool | None = None) -> tuple[str, bool]:
    p = Path(str(ref)).expanduser()
    if p.exists() or str(ref).startswith((".", "/", "~")):
        return str(check_sd_folder(p, allow_pickle)), True
    # A hub id ("org/name"): only ever downloaded when online and allowed.
    return str(ref), _offline() if local_files_only is None else local_files_only


def check_local_models(settings: dict[str, Any]) -> None:
    """Check the local model folders an engine will load (``base_model``, ``controlnet``, and
    ``unet`` when rendering with it), by file names only: called where the engine is made, in the
    main process, so a bad or pickle-only folder fails before a build writes anything."""
    base = settings.get("base_model")
    if base and (Path(str(base)).expanduser().exists() or str(base).startswith((".", "/", "~"))):
        check_sd_folder(base)
    if settings.get("controlnet"):
        check_model_folder(settings["controlnet"], "ControlNet")
    if settings.get("unet") and not settings.get("style_swap", True):
        check_model_folder(settings["unet"], "U-Net")


def warn_if_random_weights(folder: Path) -> bool:
    """Warn (and return True) when ``folder`` is marked as random weights (``sd15-random``)."""
    from .presets import RANDOM_WEIGHTS_WARNING

    meta = Path(folder) / "styleswap_preset.json"
    if meta.is_file() and json.loads(meta.read_text()).get("random_weights"):
        warnings.warn(f"{folder}: {RANDOM_WEIGHTS_WARNING}", UserWarning, stacklevel=3)
        return True
    return False


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


def load_components(ref: str | Path, local_files_only: bool | None = None, with_unet: bool = True,
                    allow_pickle: bool | None = None) -> SDComponents:
    """Load VAE, text encoder, tokenizer, U-Net and scheduler of an SD folder or hub id."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    quiet_libraries()

    src, lfo = _source(ref, local_files_only, allow_pickle)
    kw = dict(local_files_only=lfo)
    local = Path(src).is_dir()

    def safe(sub: str) -> bool | None:
        if local:
            return use_safetensors(Path(src) / sub, allow_pickle)
        return None if pickle_allowed(allow_pickle) else True  # a hub id: prefer safetensors

    try:
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", use_safetensors=safe("vae"), **kw)
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", use_safetensors=safe("text_encoder"), **kw)
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        unet = (UNet2DConditionModel.from_pretrained(src, subfolder="unet", use_safetensors=safe("unet"), **kw)
                if with_unet else None)
        unet_cfg = unet.config if unet is not None else UNet2DConditionModel.load_config(src, subfolder="unet", **kw)
        sample_size = unet_cfg["sample_size"] if isinstance(unet_cfg, dict) else unet_cfg.sample_size
        scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    except (OSError, EnvironmentError) as exc:
        raise StyleSwapError(f"cannot load Stable Diffusion model {src}: {str(exc).splitlines()[0]}") from None
    for m in (vae, text_encoder, unet):
        if m is not None:
            m.eval()
    if local:
        warn_if_random_weights(Path(src))
    return SDComponents(vae, text_encoder, tokenizer, unet, scheduler, src, int(sample_size))


def load_unet(folder: str | Path, local_files_only: bool = True, allow_pickle: bool | None = None):
    from diffusers import UNet2DConditionModel

    quiet_libraries()

    folder = check_model_folder(folder, "U-Net", allow_pickle)
    return UNet2DConditionModel.from_pretrained(str(folder), use_safetensors=use_safetensors(folder, allow_pickle),
                                                local_files_only=local_files_only).eval()


def load_controlnet(folder: str | Path, local_files_only: bool = True, allow_pickle: bool | None = None):
    from diffusers import ControlNetModel

    quiet_libraries()

    folder = check_model_folder(folder, "ControlNet", allow_pickle)
    return ControlNetModel.from_pretrained(str(folder), use_safetensors=use_safetensors(folder, allow_pickle),
                                           local_files_only=local_files_only).eval()


def folder_hash(folder: str | Path) -> str | None:
    """sha256 over the relative names and bytes of a model folder's configs and safetensors."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    # Pickle weights count where they are the weights (no safetensors beside them, --allow-pickle).
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (
        p.suffix in (".json", ".safetensors", ".txt")
        or (p.suffix.lower() in PICKLE_SUFFIXES and not _has_safetensors(p.parent))))
    files = [p for p in files if "checkpoint-" not in str(p.relative_to(folder)) and "validation" not in p.parts]
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
