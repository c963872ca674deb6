"""Per-step learning rate and intensity jitter: the parts of a training step that are pure functions
of ``(step, generator)``, so a resumed run replays them exactly without any saved state.

Intensity augmentations (``--intensity-aug``, a comma-separated list of):

* ``standard``: per-image gamma, contrast, brightness, noise on originals and copies.
* ``organ``: on copies, `organ_intensity_shift`: each organ gets its own random linear intensity
  map, so the relative brightness of organs (liver vs spleen vs kidneys, which differs between CT
  and each MRI sequence) stops being a usable cue. The class-level location-scale idea of Su et
  al., "Rethinking data augmentation for single-source domain generalization in medical image
  segmentation" (SLAug, AAAI 2023, arXiv:2211.14805).
* ``bias``: on copies, `bias_field`: a smooth random multiplicative field, the coil shading of
  MRI that CT never shows.

Copies get ``organ``, then ``bias``, then ``standard``; originals only ``standard``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LR_SCHEDULES = ("constant", "cosine", "poly")
INTENSITY_AUGS = ("none", "standard", "organ", "bias")


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


def parse_intensity_augs(spec: str) -> tuple[str, ...]:
    """``"standard,organ"`` -> ("standard", "organ"); ``"none"`` or "" -> (). Unknown names raise."""
    names = tuple(n.strip() for n in spec.replace("+", ",").split(",") if n.strip() and n.strip() != "none")
    bad = [n for n in names if n not in INTENSITY_AUGS]
    if bad:
        raise ValueError(f"unknown intensity augmentation {bad[0]!r} (choose from {', '.join(INTENSITY_AUGS)}, comma-separated)")
    return names


def intensity_augment(x: torch.Tensor, generator: torch.Generator, kind: str = "standard") -> torch.Tensor:
    """Random per-image gamma, contrast, brightness and noise on ``x`` (B, C, H, W) in [0, 1].

    The usual photometric jitter of medical segmentation trainers (nnU-Net applies the same
    family): gamma log-uniform in [0.7, 1.5] (applied to the inverted image with probability 0.15,
    nnU-Net's ``invert_image``, so it brightens dark tissue instead), contrast x U(0.75, 1.25) about the image mean, brightness
    + U(-0.1, 0.1), Gaussian noise with sigma U(0, 0.05) on half the images; clipped to [0, 1].
    Parameters are drawn on CPU from ``generator`` so a step is reproducible on any device.
    """
    if kind not in ("none", "standard"):
        raise ValueError(f"unknown intensity augmentation {kind!r} (choose from none, standard)")
    if kind == "none":
        return x
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


def organ_intensity_shift(
    x: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    num_classes: int,
    prob: float = 0.5,
    scale: tuple[float, float] = (0.5, 1.5),
    shift: float = 0.4,
    invert_prob: float = 0.25,
) -> torch.Tensor:
    """Give each organ of each image its own random linear intensity map; background unchanged.

    ``x`` (B, C, H, W) in [0, 1], ``mask`` (B, 1, H, W) label ids aligned with ``x``. With
    probability ``prob`` per image, every organ id ``c >= 1`` draws ``a ~ U(scale)``, negated with
    probability ``invert_prob``, and ``b ~ U(-shift, shift)``, and its pixels become
    ``clip(a * (x - m) + m + b)`` where ``m`` is the organ's mean in that image (so an inverted
    organ keeps its mean before the shift). The organ weights are the one-hot mask smoothed by a
    3x3 box, so an organ's edge changes over a pixel instead of drawing its exact outline, which
    the network could otherwise learn in place of anatomy. Parameters come from ``generator``
    (on CPU), so a step is reproducible on any device.
    """
    b = x.shape[0]
    k = num_classes - 1
    u = torch.rand(b, 1 + 3 * k, generator=generator).to(x.device, x.dtype)
    if k < 1:
        return x
    on = (u[:, 0] < prob).view(b, 1, 1, 1)
    a = (scale[0] + (scale[1] - scale[0]) * u[:, 1 : 1 + k]) * torch.where(u[:, 1 + k : 1 + 2 * k] < invert_prob, -1.0, 1.0)
    off = (u[:, 1 + 2 * k :] * 2 - 1) * shift
    onehot = torch.stack([(mask[:, 0] == c) for c in range(1, num_classes)], dim=1).to(x.dtype)  # (B, K, H, W)
    weight = F.avg_pool2d(onehot, 3, stride=1, padding=1, count_include_pad=False).unsqueeze(2)  # (B, K, 1, H, W)
    area = onehot.sum(dim=(2, 3)).clamp_min(1.0)
    mean = (onehot.unsqueeze(2) * x.unsqueeze(1)).sum(dim=(3, 4)) / area.unsqueeze(2)  # (B, K, C)
    mapped = a.view(b, k, 1, 1, 1) * (x.unsqueeze(1) - mean[..., None, None]) + mean[..., None, None] + off.view(b, k, 1, 1, 1)
    y = x * (1 - weight.sum(dim=1)) + (weight * mapped).sum(dim=1)  # weights sum to <= 1 per pixel
    return torch.where(on, y.clamp(0, 1), x)


def bias_field(x: torch.Tensor, generator: torch.Generator, prob: float = 0.5, strength: float = 0.3, grid: int = 4) -> torch.Tensor:
    """Multiply each image by a smooth random field ``exp(s * f)``; ``x`` (B, C, H, W) in [0, 1].

    ``f`` is a ``grid`` x ``grid`` standard-normal grid upsampled bicubically to the image (a few
    slowly varying bumps across the slice, like receive-coil shading), ``s ~ U(0, strength)``, on
    a fraction ``prob`` of images; the result is clipped to [0, 1]. Drawn from ``generator``.
    """
    b = x.shape[0]
    u = torch.rand(b, 2, generator=generator)
    coarse = torch.randn(b, 1, grid, grid, generator=generator)
    field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=True)
    s = (u[:, 1] * strength * (u[:, 0] < prob)).view(b, 1, 1, 1)
    return (x * torch.exp(s * field).to(x.device, x.dtype)).clamp(0, 1)
