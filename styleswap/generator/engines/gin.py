"""GIN: Global Intensity Non-linear augmentation with random shallow convolutional networks.

Reference: C. Ouyang, C. Chen, S. Li, Z. Li, C. Qin, W. Bai, D. Rueckert, "Causality-inspired
single-source domain generalization for medical image segmentation", IEEE TMI 2022
(arXiv:2111.12525).

Per copy, a freshly initialised shallow conv net ``g`` (``layers`` conv layers, ``channels``
intermediate channels, each layer's kernel size drawn from ``kernel_sizes``, weights and biases
from N(0, 1), LeakyReLU(0.2) between layers, none after the last) is applied to the grayscale
image fed as one channel. The paper replicates gray images to three channels; with a random linear
first layer that only rescales the first layer's weights, which the normalisation below removes,
so one channel is used here.

Output of one copy, for input ``x`` in [0, 1] and ``alpha ~ U(0, 1)``::

    g_s   = g(x) * ||x||_F / ||g(x)||_F          # the paper's rescaling to the input's norm
    mixed = alpha * g_s + (1 - alpha) * x       # convex mix (mix=True); mixed = g_s otherwise
    out   = (mixed - min(mixed)) / (max(mixed) - min(mixed))   # per-image min-max to [0, 1]

Rescaling before mixing makes ``alpha`` a real weight (the raw net output can be 100x the input's
magnitude). Min-max (rather than clipping to the input's range) is chosen because GIN often
inverts or shifts contrast and clipping would saturate whole organs. A constant ``mixed`` (e.g. an
all-air slice) is returned clipped to [0, 1] instead of divided by zero.

``computation: released`` computes each copy as the GIN-IPA authors' released code does instead
(`styleswap.gin.gin_copy_released`): GIN of the slice z-scored, LeakyReLU(0.01), zero padding, the
net's output mixed with the input before the mix is rescaled to the input's norm, no min-max; the
result is then min-maxed per slice only to be stored. Drawn on the fly in training, the released
computation's row scored 76.8 % MRI -> CT against 63.0 % for this one's (README, benchmark rows 9 and
8, which also differ in jitter and blending field); this setting asks whether stored copies gain too.

Batching: all requests of one ``render`` call that share a shape are stacked, and each layer is
one grouped convolution (``groups = batch``) whose per-group weights come from that request's own
``torch.Generator().manual_seed(request.seed)``. Kernels smaller than the largest allowed size are
zero-padded to it (a 1x1 kernel centred in a 3x3 one computes the same values), so one conv call
serves mixed kernel sizes. Borders use replicate padding so the random bias does not paint a frame
that min-max would then stretch.

Bitwise independence of the batch: oneDNN (mkldnn) picks different blockings for different group
counts, which changed values by up to ~5e-6 between a copy rendered alone and inside a batch of 16
(measured, torch 2.14 CPU); after 8-bit quantisation a few pixels per image would differ, breaking
"same bytes for any batching". ``gin_forward`` therefore runs its convolutions with oneDNN disabled
(``torch.backends.mkldnn.flags(enabled=False)``): torch's native grouped convolution computes each
group separately, so a copy is bitwise identical in any batch, and on CPU it measured as fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from styleswap.errors import StyleSwapError
from styleswap.generator.engines.base import Copy, CopyRequest, Engine
from styleswap.gin import gin_copy_released, gin_forward  # the networks themselves, shared with the trainer

# torch is imported where copies are computed, not with the module: a build's planner looks the
# engine up by name, and with --workers N only the render processes need torch (its import is a
# second of a cheap build's start-up).


#: ``computation``: as the paper describes GIN (`gin_forward`) or as its released code computes it.
COMPUTATIONS = ("paper", "released")


def _check_int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; "layers: true" in a YAML recipe is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise StyleSwapError(f"gin: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class GINEngine(Engine):
    """Random shallow conv nets as style interventions (Ouyang et al., TMI 2022; see module doc)."""

    name = "gin"
    uses_torch = True
    renders_on_cpu = True

    def __init__(
        self,
        *,
        layers: int = 4,
        channels: int = 2,
        kernel_sizes: Sequence[int] = (1, 3),
        mix: bool = True,
        computation: str = "paper",
        batch_size: int = 16,
        **unknown: Any,
    ) -> None:
        super().__init__(**unknown)
        self.layers = _check_int("layers", layers, 1)
        self.channels = _check_int("channels", channels, 1)
        if isinstance(kernel_sizes, (str, bytes)) or not isinstance(kernel_sizes, Sequence) or not kernel_sizes:
            raise StyleSwapError(f"gin: kernel_sizes must be a non-empty list of odd integers, got {kernel_sizes!r}")
        ks = tuple(_check_int("kernel_sizes entry", k, 1) for k in kernel_sizes)
        if any(k % 2 == 0 for k in ks):
            raise StyleSwapError(f"gin: kernel_sizes must be odd (centred kernels), got {list(ks)}")
        self.kernel_sizes = ks
        if not isinstance(mix, bool):
            raise StyleSwapError(f"gin: mix must be true or false, got {mix!r}")
        self.mix = mix
        if computation not in COMPUTATIONS:
            raise StyleSwapError(f"gin: computation must be one of {', '.join(COMPUTATIONS)}, got {computation!r}")
        if computation == "released" and not mix:
            raise StyleSwapError("gin: mix: false has no released counterpart (the released code always mixes)")
        self.computation = computation
        self.batch_size = _check_int("batch_size", batch_size, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "channels": self.channels,
            "kernel_sizes": list(self.kernel_sizes),
            "mix": self.mix,
            "computation": self.computation,
            "batch_size": self.batch_size,
        }

    @property
    def prompt(self) -> str:
        released = ", released" if self.computation == "released" else ""
        return f"gin(layers={self.layers}, channels={self.channels}{released})"

    def render(self, requests: Sequence[CopyRequest]) -> list[Copy]:
        import torch

        results: list[np.ndarray | None] = [None] * len(requests)
        # Stack only same-shape images; a copy never depends on its batch-mates, so grouping is free.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            if r.image.ndim != 2:
                raise StyleSwapError(f"gin: {r.sample_id}: expected a 2D image, got shape {r.image.shape}")
            by_shape.setdefault(r.image.shape, []).append(i)
        with torch.no_grad():
            for idx in by_shape.values():
                for start in range(0, len(idx), self.batch_size):
                    chunk = idx[start : start + self.batch_size]
                    x = torch.from_numpy(np.stack([np.asarray(requests[i].image, dtype=np.float32) for i in chunk]))
                    seeds = [requests[i].seed for i in chunk]
                    if self.computation == "released":
                        out = gin_copy_released(x, seeds, self.layers, self.channels, self.kernel_sizes).numpy()
                    else:
                        out = gin_forward(x, seeds, self.layers, self.channels, self.kernel_sizes, self.mix).numpy()
                    for j, i in enumerate(chunk):
                        results[i] = np.ascontiguousarray(out[j], dtype=np.float32)
        return [Copy(image=img, prompt=self.prompt) for img in results]  # type: ignore[arg-type]
