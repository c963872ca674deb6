"""Axial slices of a canonical volume, displayed one fixed way, padded square and resized.

Orientation (the one convention every slice in every dataset follows)
----------------------------------------------------------------------
Volumes arrive in nibabel's canonical RAS+ orientation: array axis 0 (X) increases towards the
patient's Right, axis 1 (Y) towards Anterior, axis 2 (Z) towards Superior. Axial slice ``k`` is
``vol[:, :, k]`` and is displayed the radiological way::

    slice2d = vol[::-1, ::-1, k].T

so rows run anterior (top) -> posterior (bottom) and columns run from the patient's right (image
LEFT) to the patient's left (image right), as a radiologist looks at the patient from the feet.
The liver (patient's right) is therefore in the left half of the image, the spleen in the right
half, the spine at the bottom, for CT and MRI alike and whatever the on-disk orientation was.
``slice_index`` is ``k`` in the canonical volume (inferior -> superior).

Geometry
--------
Each kept slice is padded to a square (centered; image with the volume's minimum, mask with 0),
then resized to ``size`` x ``size``: the image with antialiased bilinear interpolation, the mask
with nearest neighbour only (label ids must never be blended). All kept slices of a volume are
resized in one batched call. The recorded spacing is (row spacing, column spacing, slice
thickness) in mm after padding and resizing: in-plane spacing * padded extent / size.

Slice selection
---------------
Every slice with foreground is kept; a fraction ``keep_empty`` of the empty ones is kept, chosen by
a generator seeded from (seed, case_id) alone, so a rebuild keeps the same slices.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from styleswap.contract import from_unit_float, sample_id
from styleswap.generator.sources.base import SourceSlice

ORIENTATION = {
    "canonical": "RAS+ (nibabel.as_closest_canonical)",
    "slice": "axial slice k = vol[:, :, k], displayed as vol[::-1, ::-1, k].T",
    "rows": "anterior (top) -> posterior (bottom)",
    "columns": "patient right (image left) -> patient left (image right)",
    "slice_index": "k in the canonical volume, inferior -> superior",
}
#: Slices resized per torch call; bounds memory for very long volumes while still batching.
CHUNK = 64


def display_slices(volume: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(X, Y, Z) RAS+ volume -> (N, rows, cols) display slices at ``indices`` (see module doc)."""
    return np.ascontiguousarray(volume[::-1, ::-1, indices].transpose(2, 1, 0))


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, case_id) (not on ``hash()``, salted per process)."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{case_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def select_slices(has_foreground: np.ndarray, keep_empty: float, seed: int, case_id: str) -> np.ndarray:
    """Sorted indices of the slices to keep: all with foreground, round(keep_empty * n_empty) others."""
    has_foreground = np.asarray(has_foreground, dtype=bool)
    empty = np.flatnonzero(~has_foreground)
    n_keep = int(round(float(keep_empty) * len(empty)))
    chosen = case_rng(seed, case_id).choice(empty, size=n_keep, replace=False) if n_keep else empty[:0]
    return np.sort(np.concatenate([np.flatnonzero(has_foreground), chosen])).astype(np.int64)


def pad_to_square(stack: np.ndarray, fill: float | int) -> np.ndarray:
    """(N, H, W) -> (N, P, P), P = max(H, W), the content centered."""
    _, h, w = stack.shape
    p = max(h, w)
    top, left = (p - h) // 2, (p - w) // 2
    if p == h and p == w:
        return stack
    return np.pad(stack, ((0, 0), (top, p - h - top), (left, p - w - left)), constant_values=fill)


def resize_stack(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square (N, P, P) float images and uint8 masks -> (N, size, size); one batched call each."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, masks
    with torch.no_grad():
        img = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        # Float32 holds every uint8 id exactly, and nearest-exact only copies values: no blending.
        msk = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
        msk = F.interpolate(msk, size=(size, size), mode="nearest-exact")
    return img[:, 0].clamp_(0.0, 1.0).numpy(), msk[:, 0].round_().numpy().astype(np.uint8)


def emit_slices(
    case_id: str,
    indices: np.ndarray,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    pixel_spacing: tuple[float, float],
    thickness: float,
    fill: float,
    size: int,
    modality: str,
    split: str,
    extra: dict | None = None,
) -> Iterator[SourceSlice]:
    """Display-oriented (N, H, W) float [0, 1] images and uint8 masks -> `SourceSlice`s.

    ``pixel_spacing`` is (row, column) spacing in mm of the unpadded slices.
    """
    _, h, w = images.shape
    padded = max(h, w)
    spacing = (
        float(pixel_spacing[0]) * padded / size,
        float(pixel_spacing[1]) * padded / size,
        float(thickness),
    )
    imgs, msks = resize_stack(pad_to_square(images, fill), pad_to_square(masks, 0), size)
    for i, k in enumerate(indices):
        yield SourceSlice(
            sample_id=sample_id(case_id, int(k)),
            case_id=case_id,
            slice_index=int(k),
            modality=modality,
            image=from_unit_float(imgs[i]),
            mask=msks[i].copy(),  # a copy, so a kept slice does not pin the whole batch in memory
            spacing=spacing,
            split=split,
            extra=dict(extra or {}),
        )


def slice_volume(
    case_id: str,
    image01: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    size: int,
    keep_empty: float,
    seed: int,
    modality: str,
    split: str = "train",
    extra: dict | None = None,
) -> Iterator[SourceSlice]:
    """Normalized RAS+ (X, Y, Z) volume in [0, 1] and its uint8 label -> kept axial `SourceSlice`s.

    ``spacing`` is the voxel size along X, Y, Z; display rows follow Y and columns follow X.
    """
    keep = select_slices(label.reshape(-1, label.shape[2]).any(axis=0), keep_empty, seed, case_id)
    fill = float(image01.min())
    for start in range(0, len(keep), CHUNK):
        idx = keep[start : start + CHUNK]
        yield from emit_slices(
            case_id,
            idx,
            display_slices(image01, idx),
            display_slices(label, idx),
            pixel_spacing=(spacing[1], spacing[0]),
            thickness=spacing[2],
            fill=fill,
            size=size,
            modality=modality,
            split=split,
            extra=extra,
        )
