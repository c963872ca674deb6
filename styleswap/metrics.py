"""Dice from label counts, for both halves: the trainer's evaluation and the generator's content
check score segmentations with the same arithmetic. Numpy only; belongs to neither half.

The evaluation keeps each case's confusion matrix rather than the three Dice sums: they follow from
it (`counts_from_confusion`), and it also says where an organ's missed voxels went (background, or
another organ), which the Dice alone cannot tell apart."""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) voxel counts of ids 0..num_classes-1: row = ground-truth id, column = predicted id.
    Arrays of any equal shape; an id outside 0..num_classes-1 is refused."""
    p, g = np.asarray(pred).ravel().astype(np.int64), np.asarray(gt).ravel().astype(np.int64)
    if p.size and max(p.max(), g.max()) >= num_classes:
        raise ValueError(f"label id {max(p.max(), g.max())} out of range for {num_classes} classes")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def counts_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (|P & G|, |P|, |G|) for ids 1..C-1: the diagonal and margins of a `confusion_matrix`."""
    confusion = np.asarray(confusion)
    return np.diagonal(confusion)[1:].copy(), confusion.sum(axis=0)[1:], confusion.sum(axis=1)[1:]


def class_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (|P & G|, |P|, |G|) for ids 1..num_classes-1. Arrays of any equal shape."""
    return counts_from_confusion(confusion_matrix(pred, gt, num_classes))


def dice_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Dice per class (ids 1..C-1) of a `confusion_matrix`; NaN where the class is in neither side."""
    return dice_from_counts(*counts_from_confusion(confusion))


def dice_from_counts(inter: np.ndarray, psum: np.ndarray, gsum: np.ndarray) -> np.ndarray:
    """Dice per class from sums; NaN where both prediction and ground truth are empty."""
    inter, psum, gsum = (np.asarray(a, dtype=np.float64) for a in (inter, psum, gsum))
    denom = psum + gsum
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), np.nan)
