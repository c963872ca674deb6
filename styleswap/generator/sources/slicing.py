"""Axial slices of a canonical volume, displayed one fixed way, padded square and resized.

The geometry (RAS+ orientation, the radiological display of axial slices, pad to square, resize)
lives in the neutral `styleswap.volumes.geometry`, where `train predict` finds the same code and
its exact inverse. The recorded spacing is (row spacing, column spacing, slice thickness) in mm
after padding and resizing: in-plane spacing * padded extent / size.

Slice selection
---------------
Every slice with foreground is kept; a fraction ``keep_empty`` of the empty ones is kept, chosen by
a generator seeded from (seed, case_id) alone, so a rebuild keeps the same slices.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

from styleswap.contract import from_unit_float, sample_id
from styleswap.generator.sources.base import SourceSlice
from styleswap.volumes.geometry import ORIENTATION, display_slices, pad_to_square, resize_stack

__all__ = ["ORIENTATION", "CHUNK", "case_rng", "select_slices", "emit_slices", "slice_volume", "display_slices", "pad_to_square", "resize_stack"]

#: Slices resized per torch call; bounds memory for very long volumes while still batching.
CHUNK = 64


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
