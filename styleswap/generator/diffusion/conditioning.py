"""The ControlNet conditioning image: a fixed, documented encoding of a label map.

Encoding ``"mask"`` (default)
    An RGB image in [0, 1], shape (3, H, W). Background (id 0) is black; label id ``k`` is
    ``styleswap.contract.LABEL_COLORS[k] / 255``. Ids missing from that table get the fixed
    fallback colour ``((37 k) mod 256, (91 k) mod 256, (173 k) mod 256) / 255`` so every id maps to
    one colour forever. The table is part of the model: a ControlNet trained with one table must
    render with the same table.

Encoding ``"mask+canny"``
    The ``"mask"`` image with the Canny edges of the *source image* (controlnet_aux
    ``CannyDetector``, thresholds 100/200 on the 8-bit slice) painted white (1, 1, 1) on top.
    Three channels, so the ControlNet architecture is the same as for ``"mask"``. Edges carry some
    of the source appearance; use it only when the mask alone underdetermines the anatomy.

Masks are only ever resized with nearest neighbour (never interpolated), before colouring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from styleswap.contract import LABEL_COLORS
from styleswap.errors import StyleSwapError

ENCODINGS = ("mask", "mask+canny")


def label_color(label_id: int) -> tuple[int, int, int]:
    if label_id == 0:
        return (0, 0, 0)
    if label_id in LABEL_COLORS:
        return LABEL_COLORS[label_id]
    k = int(label_id)
    return ((37 * k) % 256, (91 * k) % 256, (173 * k) % 256)


def _palette() -> np.ndarray:
    return np.asarray([label_color(i) for i in range(256)], dtype=np.float32) / 255.0


_PALETTE = _palette()


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 label map to ``size`` (an int means square)."""
    h, w = (size, size) if isinstance(size, int) else size
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise StyleSwapError(f"a mask must be 2D (H, W), got shape {mask.shape}")
    if mask.shape == (h, w):
        return mask.astype(np.uint8, copy=False)
    t = torch.from_numpy(mask.astype(np.uint8))[None, None].float()
    out = F.interpolate(t, size=(h, w), mode="nearest-exact")
    return out[0, 0].to(torch.uint8).numpy()


def resize_image(image: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Smooth (antialiased bilinear) resize of a float image (H, W) or (C, H, W) or (N, C, H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    t = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image).float()
    ndim = t.ndim
    while t.ndim < 4:
        t = t[None]
    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return t.reshape(t.shape[:0] + t.shape[4 - ndim :]) if ndim < 4 else t


def canny_edges(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges (bool, H x W) of a float [0, 1] slice via controlnet_aux's CannyDetector."""
    import warnings

    with warnings.catch_warnings():
        # controlnet-aux imports its optional detectors (mediapipe, timm) and warns about each.
        warnings.simplefilter("ignore")
        from controlnet_aux.canny import CannyDetector

    u8 = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    rgb = np.stack([u8] * 3, axis=-1)
    side = max(64, -(-min(u8.shape) // 64) * 64)  # controlnet_aux works in multiples of 64
    edges = CannyDetector()(
        rgb, low_threshold=low, high_threshold=high, detect_resolution=side, image_resolution=side, output_type="np"
    )
    edges = np.asarray(edges)
    if edges.ndim == 3:
        edges = edges[..., 0]
    # controlnet_aux rounds sizes to multiples of 64: bring the edge map back, nearest neighbour.
    return resize_mask((edges > 127).astype(np.uint8), u8.shape).astype(bool)


def encode_mask(
    mask: np.ndarray,
    size: int | tuple[int, int] | None = None,
    encoding: str = "mask",
    image: np.ndarray | None = None,
) -> torch.Tensor:
    """Conditioning image (3, H, W) float32 in [0, 1] of a label map (see the module docstring)."""
    if encoding not in ENCODINGS:
        raise StyleSwapError(f"unknown conditioning encoding {encoding!r}; choose one of: {', '.join(ENCODINGS)}")
    if size is not None:
        mask = resize_mask(mask, size)
    mask = np.asarray(mask)
    if mask.dtype != np.uint8:
        if mask.min() < 0 or mask.max() > 255:
            raise StyleSwapError("mask label ids must be in 0..255")
        mask = mask.astype(np.uint8)
    rgb = _PALETTE[mask]  # (H, W, 3)
    if encoding == "mask+canny":
        if image is None:
            raise StyleSwapError("conditioning 'mask+canny' needs the source image")
        img = resize_image(image, mask.shape).numpy() if np.asarray(image).shape != mask.shape else image
        rgb = rgb.copy()
        rgb[canny_edges(img)] = 1.0
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
