"""Dice from label counts, for both halves: the trainer's evaluation and the generator's content
check score segmentations with the same arithmetic. Numpy only; belongs to neither half."""

from __future__ import annotations

import numpy as np


def class_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (|P & G|, |P|, |G|) for ids 1..num_classes-1. Arrays of any equal shape."""
    p, g = np.asarray(pred).ravel().astype(np.int64), np.asarray(gt).ravel().astype(np.int64)
    psum = np.bincount(p, minlength=num_classes)[1:num_classes]
    gsum = np.bincount(g, minlength=num_classes)[1:num_classes]
    inter = np.bincount(p[p == g], minlength=num_classes)[1:num_classes]
    return inter, psum, gsum


def dice_from_counts(inter: np.ndarray, psum: np.ndarray, gsum: np.ndarray) -> np.ndarray:
    """Dice per class from sums; NaN where both prediction and ground truth are empty."""
    inter, psum, gsum = (np.asarray(a, dtype=np.float64) for a in (inter, psum, gsum))
    denom = psum + gsum
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), np.nan)
