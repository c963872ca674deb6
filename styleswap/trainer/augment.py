"""On-the-fly augmentation of a training batch, composed of small steps like MONAI's ``Compose``.

A batch becomes `Views`: the images the step's method feeds the network (the original and/or its
style-intervened copies, see `styleswap.trainer.methods`), their shared mask and each image's
volume statistics. `build_augmenter` composes, from the run's settings:

1. `Geometric`: one random affine per slice (flip with left/right relabelling, rotation, zoom,
   shear, shift) and an optional elastic field, identical for every view and the mask.
2. the method's own derivation of views (SLAug's location-scale images, GIN-IPA's blending).
3. on copies only: ``organ`` (`organ_intensity_shift`), ``bias`` (`bias_field`), ``lla``
   (`random_classwise_location_scale`), in that order.
4. ``standard`` photometric jitter (`intensity_augment`), copies first, then the original.
5. `normalize_input`: what the network reads (``unit`` or per-volume ``zscore``).

Every random draw comes from the step's generator on the CPU, so a step is a pure function of
``(seed, step)`` and a resumed run replays it exactly. The draws of one step are ordered as
listed, and a step that is switched off draws nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from styleswap.trainer.model import normalize_input


@dataclass
class Views:
    """The images of one training step (each (B, C, H, W)), which of them are copies, the shared
    mask (B, 1, H, W) label ids and each slice's volume (mean, std) (B, 2)."""

    images: list[torch.Tensor]
    is_copy: list[bool]
    mask: torch.Tensor
    stats: torch.Tensor


Step = Callable[[Views, torch.Generator], Views]


def compose(steps: Sequence[Step]) -> Step:
    def run(views: Views, generator: torch.Generator) -> Views:
        for step in steps:
            views = step(views, generator)
        return views

    return run


# --- geometry ------------------------------------------------------------------------------------
def geometric_augment(
    images: list[torch.Tensor],
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    flip_prob: float = 0.5,
    rotate_deg: float = 15.0,
    scale: float = 0.1,
    swap: torch.Tensor | None = None,
    shear_deg: float = 0.0,
    shift: float = 0.0,
    elastic: float = 0.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Apply one random spatial transform per sample, identically to every image and the mask.

    Shapes: each image (B, C, H, W) float; ``mask`` (B, 1, H, W) integer. Per sample: a
    horizontal flip with probability ``flip_prob`` (mask ids permuted by ``swap`` when flipped), a
    rotation in [-rotate_deg, rotate_deg], an isotropic zoom in [1 - scale, 1 + scale], a shear of
    the x axis along y in [-shear_deg, shear_deg], a shift of up to ``shift`` of the image size
    along each axis, and an elastic displacement: a 6 x 6 grid of N(0, (elastic/2)^2)-pixel
    offsets upsampled bicubically, so the anatomy bends smoothly by about ``elastic`` pixels at
    most. Images are resampled bilinearly, the mask with nearest neighbour (values stay in the
    label set); outside pixels are 0 (background). Parameters are drawn on CPU from ``generator``;
    a term that is 0 draws nothing.
    """
    b, _, h, w = mask.shape
    u = torch.rand(b, 3, generator=generator)
    flip = u[:, 0] < flip_prob
    angle = (u[:, 1] * 2 - 1) * math.radians(rotate_deg)
    zoom = 1 + (u[:, 2] * 2 - 1) * scale
    shear = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(shear_deg) if shear_deg else torch.zeros(b)
    offset = (torch.rand(b, 2, generator=generator) * 2 - 1) * 2 * shift if shift else torch.zeros(b, 2)
    coarse = torch.randn(b, 2, 6, 6, generator=generator) * (elastic / 2) if elastic else None
    if not flip.any() and rotate_deg == 0 and scale == 0 and not shear_deg and not shift and coarse is None:
        return images, mask
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sx = torch.where(flip, -1.0, 1.0)
    k = torch.tan(shear)
    # output (x, y) samples input at A @ (x, y) + t: shear, then rotation/zoom, then a mirror of the x axis
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, (cos * k - sin) * sx
    theta[:, 1, 0], theta[:, 1, 1] = sin, sin * k + cos
    theta[:, :, 2] = offset
    dev = mask.device
    grid = F.affine_grid(theta.to(dev), list(mask.shape), align_corners=False)
    if coarse is not None:  # pixels -> grid units (2 / size per pixel), (dx, dy) as grid_sample wants
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        field = field * torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1)
        grid = grid + field.permute(0, 2, 3, 1).to(dev, grid.dtype)
    out = [F.grid_sample(im, grid.to(im.dtype), mode="bilinear", padding_mode="zeros", align_corners=False) for im in images]
    m = F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).round().long()
    if swap is not None and flip.any():
        swapped = swap.to(dev)[m]
        m = torch.where(flip.to(dev)[:, None, None, None], swapped, m)
    return out, m


@dataclass
class Geometric:
    flip_prob: float
    rotate_deg: float
    scale: float
    shear_deg: float
    shift: float
    elastic: float
    swap: torch.Tensor | None

    def __call__(self, views: Views, generator: torch.Generator) -> Views:
        images, mask = geometric_augment(
            views.images, views.mask, generator, flip_prob=self.flip_prob, rotate_deg=self.rotate_deg, scale=self.scale,
            swap=self.swap, shear_deg=self.shear_deg, shift=self.shift, elastic=self.elastic,
        )  # fmt: skip
        return replace(views, images=images, mask=mask)


# --- intensity -----------------------------------------------------------------------------------
def intensity_augment(x: torch.Tensor, generator: torch.Generator, kind: str = "standard") -> torch.Tensor:
    """Random per-image gamma, contrast, brightness and noise on ``x`` (B, C, H, W) in [0, 1].

    The usual photometric jitter of medical segmentation trainers (nnU-Net applies the same
    family): gamma log-uniform in [0.7, 1.5] (applied to the inverted image with probability 0.15,
    nnU-Net's ``invert_image``, so it brightens dark tissue instead), contrast x U(0.75, 1.25) about
    the image mean, brightness + U(-0.1, 0.1), Gaussian noise with sigma U(0, 0.05) on half the
    images; clipped to [0, 1]. Parameters are drawn on CPU from ``generator`` so a step is
    reproducible on any device.
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
    the network could otherwise learn in place of anatomy. The class-level location-scale idea of
    Su et al., "Rethinking data augmentation for single-source domain generalization in medical
    image segmentation" (SLAug, AAAI 2023, arXiv:2211.14805).
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


def smooth_field(coarse: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A (B, C, g, g) grid of values -> (B, C, H, W), upsampled bicubically: a slowly varying field."""
    return F.interpolate(coarse, size=tuple(size), mode="bicubic", align_corners=True)


def bias_field(x: torch.Tensor, generator: torch.Generator, prob: float = 0.5, strength: float = 0.3, grid: int = 4) -> torch.Tensor:
    """Multiply each image by a smooth random field ``exp(s * f)``; ``x`` (B, C, H, W) in [0, 1].

    ``f`` is a ``grid`` x ``grid`` standard-normal grid upsampled bicubically to the image (a few
    slowly varying bumps across the slice, like receive-coil shading), ``s ~ U(0, strength)``, on
    a fraction ``prob`` of images; the result is clipped to [0, 1]. Drawn from ``generator``.
    """
    b = x.shape[0]
    u = torch.rand(b, 2, generator=generator)
    field = smooth_field(torch.randn(b, 1, grid, grid, generator=generator), x.shape[-2:])
    s = (u[:, 1] * strength * (u[:, 0] < prob)).view(b, 1, 1, 1)
    return (x * torch.exp(s * field).to(x.device, x.dtype)).clamp(0, 1)


# --- SLAug's location-scale augmentation -------------------------------------------------------
def bezier_remap(values: torch.Tensor, generator: torch.Generator, inverse: bool, points: int = 64) -> torch.Tensor:
    """Map ``values`` (any shape) through a random cubic Bezier intensity curve over their range.

    The curve runs from (min, min) to (max, max) with two control points drawn uniformly inside
    the range, so it rises monotonically; with ``inverse`` it is mirrored to fall from max to min
    (contrasts inverted, as SLAug does for the background always and for organs half the time).
    Values between the curve's samples are interpolated linearly.
    """
    lo, hi = values.min(), values.max()
    r = torch.rand(4, generator=generator).to(values.device, values.dtype)
    px = torch.stack([lo, lo + (hi - lo) * r[0], lo + (hi - lo) * r[1], hi])
    py = torch.stack([lo, lo + (hi - lo) * r[2], lo + (hi - lo) * r[3], hi])
    if hi <= lo:
        return values
    t = torch.linspace(0, 1, points, device=values.device, dtype=values.dtype)[:, None]
    basis = torch.cat([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], dim=1)  # (points, 4)
    xs, _ = torch.sort(basis @ px)
    ys, _ = torch.sort(basis @ py)
    if inverse:
        ys = ys.flip(0)
    flat = values.reshape(-1)
    j = torch.searchsorted(xs, flat).clamp(1, points - 1)
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    w = ((flat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return (y0 + w * (y1 - y0)).reshape(values.shape)


def location_scale(values: torch.Tensor, generator: torch.Generator, slide: float = 0.2) -> torch.Tensor:
    """``clip(scale * v + location, 0, 1)``: scale ~ N(1, 0.1) clipped to [0.9, 1.1], location
    ~ N(0, 0.5) clipped so that the 20th..80th percentiles of ``v`` stay inside [0, 1]."""
    g = torch.randn(2, generator=generator).tolist()
    scale = min(max(1.0 + 0.1 * g[0], 0.9), 1.1)
    q = torch.quantile(values.reshape(-1).float(), torch.tensor([slide, 1 - slide], device=values.device)).tolist()
    location = min(max(0.5 * g[1], 0.0 - q[0]), 1.0 - q[1])
    return (values * scale + location).clamp(0, 1)


def global_location_scale(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SLAug's GLA: each image (B, C, H, W) in [0, 1] through a monotone Bezier curve, then a
    random location and scale."""
    return torch.stack([location_scale(bezier_remap(im, generator, inverse=False), generator) for im in x])


def classwise_location_scale(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, num_classes: int,
                             background: float = 0.01) -> torch.Tensor:  # fmt: skip
    """SLAug's LLA: the background (label 0) through an inverting Bezier curve, every organ present
    through its own curve (inverting with probability 0.5), each then with its own location and
    scale; pixels darker than ``background`` (air) keep their value."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        im, m = x[i], mask[i].expand_as(x[i])
        res = im.clone()
        for c in range(num_classes):
            sel = m == c
            if not sel.any():
                continue
            inverse = True if c == 0 else bool(torch.rand(1, generator=generator).item() < 0.5)
            res[sel] = location_scale(bezier_remap(im[sel], generator, inverse=inverse), generator)
        out[i] = torch.where(im <= background, im, res)
    return out


def random_classwise_location_scale(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, num_classes: int,
                                    prob: float = 0.5) -> torch.Tensor:  # fmt: skip
    """``lla`` on copies: `classwise_location_scale` on a fraction ``prob`` of the images."""
    on = torch.rand(x.shape[0], generator=generator) < prob
    if not on.any():
        return x
    out = x.clone()
    out[on] = classwise_location_scale(x[on], mask[on.to(mask.device)], generator, num_classes)
    return out


@dataclass
class OnCopies:
    """Apply ``fn(x, mask, generator)`` to every copy (not to the original)."""

    fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]

    def __call__(self, views: Views, generator: torch.Generator) -> Views:
        images = [self.fn(x, views.mask, generator) if c else x for x, c in zip(views.images, views.is_copy)]
        return replace(views, images=images)


def jitter(views: Views, generator: torch.Generator) -> Views:
    """``standard`` photometric jitter on every image: copies first, then the original."""
    order = [i for i, c in enumerate(views.is_copy) if c] + [i for i, c in enumerate(views.is_copy) if not c]
    images = list(views.images)
    for i in order:
        images[i] = intensity_augment(images[i], generator, "standard")
    return replace(views, images=images)


@dataclass
class Normalize:
    mode: str

    def __call__(self, views: Views, generator: torch.Generator) -> Views:
        return replace(views, images=[normalize_input(x, views.stats, self.mode) for x in views.images])


def build_augmenter(cfg, swap: torch.Tensor | None, num_classes: int, derive: Step | None = None) -> Step:
    """The composed augmentation of a run (`TrainConfig` ``cfg``); ``derive`` is the method's own step."""
    augs = cfg.intensity_augs()
    steps: list[Step] = [Geometric(cfg.flip_prob, cfg.rotate_deg, cfg.scale, cfg.shear_deg, cfg.shift, cfg.elastic, swap)]
    if derive is not None:
        steps.append(derive)
    if "organ" in augs:
        steps.append(OnCopies(lambda x, m, g: organ_intensity_shift(x, m, g, num_classes)))
    if "bias" in augs:
        steps.append(OnCopies(lambda x, m, g: bias_field(x, g)))
    if "lla" in augs:
        steps.append(OnCopies(lambda x, m, g: random_classwise_location_scale(x, m, g, num_classes)))
    if "standard" in augs:
        steps.append(jitter)
    steps.append(Normalize(cfg.input_norm))
    return compose(steps)
