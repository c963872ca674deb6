"""Scans for the predict tests: phantom volumes stored in any orientation, and the label round trip
through the forward preprocessing and its inverse."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from styleswap.generator.sources.phantom import generate_cases
from styleswap.volumes import geometry
from styleswap.volumes.preprocess import Preprocessing, PreparedScan

NUM_CLASSES = 5


def phantom_volume(modality: str = "CT", seed: int = 3, shape=(96, 96, 32), spacing=(3.0, 3.0, 5.0)):
    """(image, label, RAS affine) of one phantom case; the affine's origin is the volume centre."""
    vol = next(generate_cases(1, seed=seed, shape=shape, spacing=spacing, modality=modality))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * np.array(spacing)
    return vol.image.astype(np.float32), vol.label, affine


def reorient(array: np.ndarray, affine: np.ndarray, axcodes: str, rotate_deg: float = 0.0):
    """The same voxels stored in ``axcodes`` order, with the affine that keeps every voxel's world
    position; ``rotate_deg`` then turns the whole scan about the world z axis (an oblique scan)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(tuple(axcodes)))
    stored = np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape)
    if rotate_deg:
        a = np.deg2rad(rotate_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        new_affine = rot @ new_affine
    return stored, new_affine


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def label_round_trip(label: np.ndarray, affine: np.ndarray, size: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``label`` (stored order) through the forward preprocessing of masks (RAS+ view, display
    slices, pad, nearest resize: what ingest stores) and back through `PreparedScan.write_back`
    (one-hot scores resized back, cropped, un-displayed, written through the RAS+ view)."""
    prep = PreparedScan(label, affine, Preprocessing(size=size), "MRI", chunk=16)
    out = np.zeros(label.shape, dtype=np.uint8)
    for k0, k1 in prep.chunks():
        shown = geometry.display_slices(prep.canon, slice(k0, k1))
        small = geometry.resize_masks(geometry.pad_to_square(shown, 0), size)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(small).long(), num_classes).permute(0, 3, 1, 2).float()
        prep.write_back(k0, k1, onehot, out)
    return out


def world_centroid(label: np.ndarray, affine: np.ndarray, organ: int) -> np.ndarray:
    ijk = np.argwhere(label == organ).mean(axis=0)
    return (affine @ np.append(ijk, 1.0))[:3]


def dice(a: np.ndarray, b: np.ndarray, organ: int) -> float:
    x, y = a == organ, b == organ
    return 2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum())
