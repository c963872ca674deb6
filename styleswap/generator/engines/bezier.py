"""Random Bezier intensity curves as style interventions.

Reference: Z. Su, K. Yao, X. Yang, Q. Wang, J. Sun, K. Huang, "Rethinking data augmentation for
single-source domain generalization in medical image segmentation", AAAI 2023 (arXiv:2211.14805)
(SLAug; its global intensity transform follows the Bezier remapping of Models Genesis).

Per copy, a ``numpy.random.Generator`` seeded by ``request.seed`` draws, in this order:

1. the variant: ``inverted`` with probability ``p_invert``, else ``monotone``;
2. two control points ``P1, P2 ~ U([0, 1]^2)``.

The cubic Bezier curve ``B(t) = (1-t)^3 P0 + 3(1-t)^2 t P1 + 3(1-t) t^2 P2 + t^3 P3`` with
``P0 = (0, 0)`` and ``P3 = (1, 1)`` is sampled at ``points`` values of ``t`` and used as a lookup
table ``y = f(x)`` (``np.interp``). With control points inside the unit square both coordinates
are non-decreasing in ``t``, so ``f`` is monotone non-decreasing; a running maximum removes
floating-point wiggles so this holds exactly.

- monotone: ``out = f(x)``; endpoints ``f(0) = 0`` and ``f(1) = 1``.
- inverted (SLAug's "non-monotone", decreasing curve): ``out = 1 - f(x)``; endpoints map
  ``0 -> 1`` and ``1 -> 0``, so intensity order is reversed (dark organs become bright).

Inputs are clipped to [0, 1]; outputs are float32 in [0, 1]. The work is one vectorised
``np.interp`` per copy; the copy depends on its own seed only, so batching cannot change a bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from styleswap.errors import StyleSwapError
from styleswap.generator.engines.base import Copy, CopyRequest, Engine


def bezier_curve(p1: Sequence[float], p2: Sequence[float], points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Samples (xs, ys) of the cubic Bezier (0,0) -> P1 -> P2 -> (1,1), both non-decreasing."""
    t = np.linspace(0.0, 1.0, points)
    u = 1.0 - t
    b1, b2, b3 = 3 * u * u * t, 3 * u * t * t, t**3  # P0 = (0, 0) contributes nothing
    xs = b1 * p1[0] + b2 * p2[0] + b3
    ys = b1 * p1[1] + b2 * p2[1] + b3
    # np.interp needs non-decreasing xs; the math guarantees it up to rounding.
    return np.maximum.accumulate(xs), np.maximum.accumulate(ys)


def draw_curve(seed: int, p_invert: float = 0.5) -> tuple[bool, np.ndarray]:
    """The (inverted?, control points (2, 2)) of the copy seeded with ``seed``."""
    rng = np.random.default_rng(int(seed))
    inverted = bool(rng.random() < p_invert)
    controls = rng.random((2, 2))
    return inverted, controls


def apply_bezier(image: np.ndarray, controls: np.ndarray, inverted: bool, points: int = 1000) -> np.ndarray:
    """Remap ``image`` (values in [0, 1]) through the curve; float32 in [0, 1]."""
    xs, ys = bezier_curve(controls[0], controls[1], points)
    out = np.interp(np.clip(image, 0.0, 1.0), xs, ys)
    if inverted:
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0).astype(np.float32)


class BezierEngine(Engine):
    """Random monotone or inverted Bezier intensity curves (Su et al., AAAI 2023; see module doc)."""

    name = "bezier"
    renders_on_cpu = True

    def __init__(self, *, p_invert: float = 0.5, points: int = 1000, batch_size: int = 16, **unknown: Any) -> None:
        super().__init__(**unknown)
        if isinstance(p_invert, bool) or not isinstance(p_invert, (int, float)) or not 0.0 <= p_invert <= 1.0:
            raise StyleSwapError(f"bezier: p_invert must be a probability in [0, 1], got {p_invert!r}")
        if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
            raise StyleSwapError(f"bezier: points must be an integer >= 2, got {points!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise StyleSwapError(f"bezier: batch_size must be an integer >= 1, got {batch_size!r}")
        self.p_invert = float(p_invert)
        self.points = int(points)
        self.batch_size = int(batch_size)

    def describe(self) -> dict[str, Any]:
        return {"p_invert": self.p_invert, "points": self.points, "batch_size": self.batch_size}

    def render(self, requests: Sequence[CopyRequest]) -> list[Copy]:
        copies = []
        for r in requests:
            inverted, c = draw_curve(r.seed, self.p_invert)
            image = apply_bezier(np.asarray(r.image, dtype=np.float32), c, inverted, self.points)
            variant = "inverted" if inverted else "monotone"
            prompt = f"bezier({variant}, p1=({c[0, 0]:.2f}, {c[0, 1]:.2f}), p2=({c[1, 0]:.2f}, {c[1, 1]:.2f}))"
            copies.append(Copy(image=image, prompt=prompt))
        return copies
