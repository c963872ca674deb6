"""Segmentation networks (MONAI) that also expose their encoder features, and model folders read back.

A neutral module on the shared floor: the trainer trains and saves these networks, the generator's
content check (`generator.qc`) loads one to score rendered copies, and neither half imports the other.
Weights are read from safetensors only; pickle weights are refused by name, never opened.

The network is described by a plain JSON-able dict (saved as ``config.json`` next to the weights)
so that evaluation rebuilds exactly the trained network::

    {"arch": "unet", "in_channels": 1, "num_classes": 5, "channels": 16, "depth": 4,
     "num_res_units": 2, "labels": {...}, "image_size": [128, 128]}

Architectures:

* ``unet``: ``monai.networks.nets.UNet``, 2D, ``depth`` levels with widths
  ``channels * 2**i`` and stride 2 between levels. Encoder features: the output of each
  down block (depth 0 = H/2, ..., depth-2 = H/2**(depth-1)) and of the bottom block
  (depth-1, same resolution as depth-2).
* ``basicunet``: ``monai.networks.nets.BasicUNet`` (fixed 5 levels; ``depth`` must be 5),
  widths ``(c, c, 2c, 4c, 8c, c)``. Encoder features: ``conv_0`` (H) and ``down_1..4``.
* ``effb2``: ``monai.networks.nets.FlexibleUNet`` with an EfficientNet-B2 encoder, randomly
  initialised (the network SLAug and GIN-IPA report with; 11 M parameters, ``channels`` and
  ``depth`` unused). Encoder features: its five stages (H/2 ... H/32).

Input height and width must be divisible by ``2**(depth-1)`` (``basicunet``: 16, ``effb2``: 32).

``input_norm`` (config key, default ``unit``) says what the network reads: ``unit`` the stored
slice in [0, 1]; ``zscore`` the slice minus its volume's mean, divided by its volume's std (the
reference protocol of GIN-IPA and SLAug); `normalize_input` applies it wherever a network is fed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from styleswap.errors import StyleSwapError
from styleswap.volumes.intensity import INPUT_NORMS, ZSCORE_MIN_STD

#: The architectures `SegNet` builds (``train seg --arch``).
ARCHS = ("unet", "basicunet", "effb2")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def default_config(num_classes: int, arch: str = "unet", channels: int = 16, depth: int = 4, **extra: Any) -> dict[str, Any]:
    cfg = {"arch": arch, "in_channels": 1, "num_classes": int(num_classes), "channels": int(channels), "depth": int(depth), "num_res_units": 2}
    cfg.update(extra)
    return cfg


class SegNet(nn.Module):
    """A MONAI 2D segmentation network whose encoder outputs can be returned with the logits.

    ``forward(x)``: (B, in_channels, H, W) -> logits (B, num_classes, H, W).
    ``forward(x, return_features=True)`` -> (logits, [encoder feature maps, shallow to deep]).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        arch = config.get("arch", "unet")
        c, depth, ncls = int(config["channels"]), int(config["depth"]), int(config["num_classes"])
        inc = int(config.get("in_channels", 1))
        if ncls < 2:
            raise StyleSwapError(f"num_classes must be >= 2 (background included), got {ncls}")
        if arch == "unet":
            from monai.networks.nets import UNet

            if depth < 2:
                raise StyleSwapError(f"--depth must be >= 2 for unet, got {depth}")
            self.net = UNet(
                spatial_dims=2,
                in_channels=inc,
                out_channels=ncls,
                channels=tuple(c * 2**i for i in range(depth)),
                strides=(2,) * (depth - 1),
                num_res_units=int(config.get("num_res_units", 2)),
            )
            encoder, block = [], self.net.model
            for _ in range(depth - 1):  # Sequential(down, SkipConnection(sub), up)
                encoder.append(block[0])
                block = block[1].submodule
            encoder.append(block)  # bottom
            self.feature_channels = [c * 2**i for i in range(depth)]
            self.divisor = 2 ** (depth - 1)
        elif arch == "basicunet":
            from monai.networks.nets import BasicUNet

            if depth != 5:
                raise StyleSwapError(f"basicunet has 5 levels; --depth must be 5, got {depth}")
            feats = (c, c, 2 * c, 4 * c, 8 * c, c)
            self.net = BasicUNet(spatial_dims=2, in_channels=inc, out_channels=ncls, features=feats)
            encoder = [self.net.conv_0, self.net.down_1, self.net.down_2, self.net.down_3, self.net.down_4]
            self.feature_channels = list(feats[:5])
            self.divisor = 16
        elif arch == "effb2":
            from monai.networks.nets import FlexibleUNet

            self.net = FlexibleUNet(in_channels=inc, out_channels=ncls, backbone="efficientnet-b2", pretrained=False, spatial_dims=2)
            self.feature_channels = [16, 24, 48, 120, 352]
            self.divisor = 32
            encoder = []
            self.net.encoder.register_forward_hook(self._stages_hook)  # the encoder returns its stages as a list
        else:
            raise StyleSwapError(f"unknown --arch {arch!r} (choose from {', '.join(ARCHS)})")
        self._captured: list[torch.Tensor] | None = None
        for i, module in enumerate(encoder):
            module.register_forward_hook(self._hook(i))
        self.num_levels = len(encoder) or len(self.feature_channels)

    def _hook(self, i: int):
        def fn(_module, _inp, out):
            if self._captured is not None:
                self._captured[i] = out

        return fn

    def _stages_hook(self, _module, _inp, out):
        if self._captured is not None:
            self._captured[:] = list(out)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise StyleSwapError(f"input size {tuple(x.shape[-2:])} must be divisible by {self.divisor} for this network")
        if not return_features:
            return self.net(x)
        self._captured = [None] * self.num_levels  # type: ignore[list-item]
        try:
            logits = self.net(x)
            feats = list(self._captured)
        finally:
            self._captured = None
        return logits, feats


def normalize_input(x: torch.Tensor, stats: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> what a network with ``input_norm`` ``mode`` reads.

    ``stats`` (B, 2): each image's volume mean and std in the same [0, 1] units."""
    if mode == "unit":
        return x
    if mode != "zscore":
        raise StyleSwapError(f"unknown input_norm {mode!r} (choose from {', '.join(INPUT_NORMS)})")
    stats = stats.to(x.device, x.dtype)
    return (x - stats[:, :1, None, None]) / stats[:, 1:, None, None].clamp_min(ZSCORE_MIN_STD)


def zscore_inverse(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """The inverse of `normalize_input`'s ``zscore``: z-scored images -> the slice's [0, 1] units."""
    stats = stats.to(x.device, x.dtype)
    return x * stats[:, 1:, None, None].clamp_min(ZSCORE_MIN_STD) + stats[:, :1, None, None]


def build_model(config: dict[str, Any]) -> SegNet:
    return SegNet(config)


#: Weight files that are Python pickles: loading one can run arbitrary code, so none is ever
#: loaded (our models are safetensors only); they are recognised by name, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle(path: Path) -> StyleSwapError:
    return StyleSwapError(
        f"{path}: pickle weights are never loaded (loading them can run arbitrary code); "
        f"a model folder holds {CONFIG_NAME} + {WEIGHTS_NAME}, as written by 'train seg'"
    )


#: Key prefix of the segmentation network inside a training checkpoint's model.safetensors.
TRAINING_PREFIX = "net."


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder (``best/`` preferred, then ``final/``) or a folder with config.json.

    Pickle weights (``*.pt``, ``*.bin``, ...) in place of ``model.safetensors`` are refused by name."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise refuse_pickle(path)
    for cand in (path / "best", path / "final", path):
        if (cand / CONFIG_NAME).is_file() and (cand / WEIGHTS_NAME).is_file():
            return cand
    for cand in (path / "best", path / "final", path):
        pickles = sorted(p for p in cand.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file()) if cand.is_dir() else []
        if pickles:
            raise refuse_pickle(pickles[0])
    raise StyleSwapError(f"{path}: no trained model ({CONFIG_NAME} + {WEIGHTS_NAME} in best/, final/ or the folder)")


def read_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json`` (the network, and what the trainer recorded with it)."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StyleSwapError(f"{path}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict) or "num_classes" not in config:
        raise StyleSwapError(f"{path}: not a StyleSwap model config (no num_classes)")
    return config


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SegNet:
    from safetensors.torch import load_file

    folder = resolve_model_dir(path)
    model = SegNet(read_config(folder))
    try:
        state = load_file(str(folder / WEIGHTS_NAME), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise StyleSwapError(f"{folder / WEIGHTS_NAME}: cannot read the weights ({' '.join(str(e).split())})") from None
    inner = {k[len(TRAINING_PREFIX) :]: v for k, v in state.items() if k.startswith(TRAINING_PREFIX)}
    if set(state) != set(model.state_dict()) and set(inner) == set(model.state_dict()):
        # a training checkpoint (checkpoints/step-N) holds the network under "net." beside the
        # PatchNCE heads, which inference does not need
        state = inner
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise StyleSwapError(f"{folder / WEIGHTS_NAME}: weights do not fit the network in {CONFIG_NAME} ({first[:160]})") from None
    return model
