"""GIN's random shallow convolutional networks, for both halves: the generator renders stored copies
with them (``augment build --engine gin``), the trainer draws fresh ones every step
(``train seg --loss gin-ipa-fresh``, as the GIN-IPA paper trains).

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
    import torch.nn.functional as F

    if images.ndim != 3 or len(seeds) != images.shape[0]:
        raise StyleSwapError(f"gin: expected (B, H, W) images and B seeds, got {tuple(images.shape)} and {len(seeds)}")
    ks = tuple(int(k) for k in kernel_sizes)
    kmax = max(ks)
    b, h, w = images.shape
    nets = [_draw_net(s, layers, channels, ks, kmax) for s in seeds]
    x = images.to(torch.float32)
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
                    out = F.pad(out, (p, p, p, p), mode="replicate")
                out = F.conv2d(out, weight, bias, groups=b)
                if i < layers - 1:
                    out = F.leaky_relu(out, NEGATIVE_SLOPE)
    g = out.reshape(b, h, w)
    norm_x = x.reshape(b, -1).norm(dim=1)
    norm_g = g.reshape(b, -1).norm(dim=1).clamp_min(_EPS)
    g_s = g * (norm_x / norm_g).view(b, 1, 1)
    alpha = torch.stack([n[2] for n in nets]).to(x.device)
    if mix:
        a = alpha.view(b, 1, 1)
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
