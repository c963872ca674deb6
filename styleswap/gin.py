"""GIN's random shallow convolutional networks, for both halves: the generator renders stored copies
with them (``augment build --engine gin``), the trainer draws fresh ones every step
(``train seg --loss gin-ipa-fresh``, as the GIN-IPA paper trains), and ``gin_forward_released``
computes them as that paper's released code does (``--loss gin-ipa-released``; stored copies of that
computation: `gin_copy_released`, ``augment build --engine gin --engine-opt computation=released``).

Reference: C. Ouyang, C. Chen, S. Li, Z. Li, C. Qin, W. Bai, D. Rueckert, "Causality-inspired
single-source domain generalization for medical image segmentation", IEEE TMI 2022
(arXiv:2111.12525). What one copy is, and why it is computed this way, is documented with the
engine (``styleswap/generator/engines/gin.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from styleswap.errors import StyleSwapError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the shared floor loads no torch at import.

NEGATIVE_SLOPE = 0.2
_EPS = 1e-12


def _draw_net(seed: int, layers: int, channels: int, kernel_sizes: tuple[int, ...], kmax: int):
    """The random net and alpha of one copy, drawn in a fixed order from ``seed`` alone."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(seed))
    weights: list[torch.Tensor] = []
    biases: list[torch.Tensor] = []
    for i in range(layers):
        cin = 1 if i == 0 else channels
        cout = 1 if i == layers - 1 else channels
        k = kernel_sizes[int(torch.randint(len(kernel_sizes), (1,), generator=gen))]
        w = torch.randn(cout, cin, k, k, generator=gen)
        b = torch.randn(cout, generator=gen)
        pad = (kmax - k) // 2
        if pad:
            w = F.pad(w, (pad, pad, pad, pad))
        weights.append(w)
        biases.append(b)
    alpha = torch.rand((), generator=gen)
    return weights, biases, alpha


def _random_nets(x: torch.Tensor, seeds: Sequence[int], layers: int, channels: int, kernel_sizes: Sequence[int],
                 pad_mode: str, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of ``x`` (B, H, W) float32 through its own random net; returns the raw outputs
    (B, H, W) and each net's mixing weight alpha (B,)."""
    import torch
    import torch.nn.functional as F

    if x.ndim != 3 or len(seeds) != x.shape[0]:
        raise StyleSwapError(f"gin: expected (B, H, W) images and B seeds, got {tuple(x.shape)} and {len(seeds)}")
    ks = tuple(int(k) for k in kernel_sizes)
    kmax = max(ks)
    b, h, w = x.shape
    nets = [_draw_net(s, layers, channels, ks, kmax) for s in seeds]
    out = x.reshape(1, b, h, w)  # batch folded into channels: one grouped conv per layer
    p = kmax // 2
    with warnings.catch_warnings():
        # flags() also re-sets oneDNN's TF32 switch, which warns about Intel GPUs: irrelevant here.
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            for i in range(layers):
                weight = torch.cat([n[0][i] for n in nets], dim=0).to(x.device)  # drawn on the CPU
                bias = torch.cat([n[1][i] for n in nets], dim=0).to(x.device)
                if p:
                    out = F.pad(out, (p, p, p, p), mode=pad_mode)
                out = F.conv2d(out, weight, bias, groups=b)
                if i < layers - 1:
                    out = F.leaky_relu(out, slope)
    return out.reshape(b, h, w), torch.stack([n[2] for n in nets]).to(x.device)


def _frobenius(x: torch.Tensor) -> torch.Tensor:
    """Each image's Frobenius norm, shaped (B, 1, 1) to scale (B, H, W)."""
    return x.reshape(x.shape[0], -1).norm(dim=1).view(-1, 1, 1)


def gin_forward(
    images: torch.Tensor,
    seeds: Sequence[int],
    layers: int = 4,
    channels: int = 2,
    kernel_sizes: Sequence[int] = (1, 3),
    mix: bool = True,
    return_parts: bool = False,
):
    """GIN on a batch: ``images`` (B, H, W) float32 in [0, 1], one seed per image.

    Returns (B, H, W) float32 in [0, 1]. With ``return_parts`` also returns a dict with ``g_s``
    (net output rescaled to the input's norm), ``alpha`` (B,) and ``mixed`` (before min-max), for
    tests and inspection.
    """
    import torch

    x = images.to(torch.float32)
    g, alpha = _random_nets(x, seeds, layers, channels, kernel_sizes, pad_mode="replicate", slope=NEGATIVE_SLOPE)
    g_s = g * (_frobenius(x) / _frobenius(g).clamp_min(_EPS))
    if mix:
        a = alpha.view(-1, 1, 1)
        mixed = a * g_s + (1 - a) * x
    else:
        mixed = g_s
    lo = mixed.amin(dim=(1, 2), keepdim=True)
    hi = mixed.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    flat = span <= 1e-6
    result = torch.where(flat, mixed.clamp(0, 1), (mixed - lo) / torch.where(flat, torch.ones_like(span), span))
    result = result.clamp(0, 1)  # guard rounding just outside [0, 1]
    if return_parts:
        return result, {"g_s": g_s, "alpha": alpha, "mixed": mixed}
    return result


def gin_forward_released(images: torch.Tensor, seeds: Sequence[int], layers: int = 4, channels: int = 2,
                         kernel_sizes: Sequence[int] = (1, 3)) -> torch.Tensor:
    """GIN as the GIN-IPA authors' released code computes it (``train seg --loss gin-ipa-released``).

    ``images`` (B, H, W) are z-scored slices (each minus its volume's mean, over its std), one seed
    per image. Against `gin_forward`: LeakyReLU's default slope 0.01, zero padding, and the net's
    raw output is mixed with the input before the mix is rescaled to the input's Frobenius norm, with
    no min-max, so the result keeps the input's energy but not a fixed range, and a net with a large
    output outweighs the input whatever alpha says (the original keeps about 0.38 of the mix on
    average on the benchmark's MRI training slices, against 0.5). Kept from `gin_forward`: kernel
    sizes drawn per image (the released code draws one per layer for the whole batch) and one gray
    channel (it tiles gray to three and keeps three output channels for its 3-channel encoder).
    """
    import torch

    x = images.to(torch.float32)
    g, alpha = _random_nets(x, seeds, layers, channels, kernel_sizes, pad_mode="constant", slope=0.01)
    a = alpha.view(-1, 1, 1)
    mixed = a * g + (1 - a) * x
    return mixed * (_frobenius(x) / _frobenius(mixed).clamp_min(_EPS))


#: A slice whose standard deviation is below this (in [0, 1] units) has no contrast to intervene on.
_FLAT_STD = 1e-6


def gin_copy_released(images: torch.Tensor, seeds: Sequence[int], layers: int = 4, channels: int = 2,
                      kernel_sizes: Sequence[int] = (1, 3)) -> torch.Tensor:
    """A stored copy of `gin_forward_released`: ``images`` (B, H, W) in [0, 1] -> (B, H, W) in [0, 1].

    Each slice is z-scored by its own mean and std (the released code uses its volume's; an engine
    sees one slice at a time), goes through `gin_forward_released`, and the result is min-maxed per
    slice so that the contract's PNG can hold it without clipping its tails. A trainer that z-scores
    its input (``train seg --input-norm zscore``) therefore reads the released output up to one
    affine map per slice. A flat slice (no contrast) is returned as it is: its z-score is undefined,
    and the nets' bias would only paint the zero padding's frame.
    """
    import torch

    x = images.to(torch.float32)
    mean = x.mean(dim=(1, 2), keepdim=True)
    std = x.std(dim=(1, 2), keepdim=True)
    flat = std <= _FLAT_STD
    z = (x - mean) / torch.where(flat, torch.ones_like(std), std)
    out = gin_forward_released(z, seeds, layers, channels, kernel_sizes)
    lo = out.amin(dim=(1, 2), keepdim=True)
    span = out.amax(dim=(1, 2), keepdim=True) - lo
    flat = flat | (span <= _EPS)
    unit = (out - lo) / torch.where(flat, torch.ones_like(span), span)
    return torch.where(flat, x, unit).clamp(0, 1)  # clamp: rounding just outside [0, 1]
