"""Per-step learning rate and intensity jitter: the parts of a training step that are pure functions
of ``(step, generator)``, so a resumed run replays them exactly without any saved state.
"""

from __future__ import annotations

import math

import torch

LR_SCHEDULES = ("constant", "cosine", "poly")
INTENSITY_AUGS = ("none", "standard")


def lr_at(step: int, total: int, base: float, schedule: str = "constant", warmup: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total``.

    ``constant``: ``base``; ``cosine``: half a cosine from ``base`` to 0; ``poly``: nnU-Net's
    ``base * (1 - t)^0.9``. A linear warm-up over the first ``warmup`` steps comes on top of any.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r} (choose from {', '.join(LR_SCHEDULES)})")
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return base * (1.0 - t) ** 0.9
    return base


def intensity_augment(x: torch.Tensor, generator: torch.Generator, kind: str = "standard") -> torch.Tensor:
    """Random per-image gamma, contrast, brightness and noise on ``x`` (B, C, H, W) in [0, 1].

    The usual photometric jitter of medical segmentation trainers (nnU-Net applies the same
    family): gamma log-uniform in [0.7, 1.5] (applied to the inverted image with probability 0.15,
    nnU-Net's ``invert_image``, so it brightens dark tissue instead), contrast x U(0.75, 1.25) about the image mean, brightness
    + U(-0.1, 0.1), Gaussian noise with sigma U(0, 0.05) on half the images; clipped to [0, 1].
    Parameters are drawn on CPU from ``generator`` so a step is reproducible on any device.
    """
    if kind == "none":
        return x
    if kind not in INTENSITY_AUGS:
        raise ValueError(f"unknown intensity augmentation {kind!r} (choose from {', '.join(INTENSITY_AUGS)})")
    b = x.shape[0]
    u = torch.rand(b, 6, generator=generator)
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    u = u.to(x.device, x.dtype).view(b, 6, 1, 1, 1).unbind(1)
    gamma = torch.exp(math.log(0.7) + u[0] * (math.log(1.5) - math.log(0.7)))
    invert = u[1] < 0.15
    y = torch.where(invert, 1 - x, x).clamp_min(0).pow(gamma)
    y = torch.where(invert, 1 - y, y)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * (0.75 + 0.5 * u[2]) + mean + (u[3] * 0.2 - 0.1)
    y = y + noise * (u[4] * 0.05) * (u[5] < 0.5)
    return y.clamp(0, 1)
