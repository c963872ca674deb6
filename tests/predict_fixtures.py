"""Scans for the predict tests: phantom volumes stored in any orientation, and the label round trip
through the forward preprocessing and its inverse."""

from __future__ import annotations

import locale
from contextlib import contextmanager
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


def tiny_model(folder: Path, size: int = 32, modality: str | None = "CT") -> Path:
    """An untrained model folder with the artifact's config (for error paths: no training)."""
    from styleswap.contract import DEFAULT_LABELS
    from styleswap.trainer.model import build_model, default_config, save_model

    pre = Preprocessing(size=size, modality=modality).to_config()
    cfg = default_config(len(DEFAULT_LABELS), channels=4, depth=2, labels=DEFAULT_LABELS, image_size=[size, size], preprocessing=pre)
    torch.manual_seed(0)
    return save_model(build_model(cfg), folder)


@contextmanager
def _keep_locale():
    """SimpleITK's DICOM writer (GDCM) sets the C library's locale to "C", which would change the
    text encoding of the rest of the test process; reading does not (tested in test_predict)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def dicom_series(folder: Path, stored: np.ndarray, affine: np.ndarray, modality: str = "CT", series: str = "1.2.826.0.1.3680043.2.1125.1", prefix: str = "slice") -> Path:
    """Write ``stored`` (X, Y, Z, integer values) with RAS ``affine`` as a DICOM series, one file a
    slice, with SimpleITK (the geometry in LPS patient coordinates, as DICOM has it)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(stored.transpose(2, 1, 0)).astype(np.int16))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    img.SetDirection([float(v) for v in direction.ravel()])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    cosines = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (("0008|0060", modality), ("0020|000d", series + ".0"), ("0020|000e", series),
                           ("0020|0037", cosines), ("0020|0032", "\\".join(f"{v:.6f}" for v in pos)),
                           ("0020|0013", str(k + 1)), ("0008|0018", f"{series}.{k + 1}"), ("0018|0050", f"{spacing[2]:.6f}"),
                           ("0028|1052", "0"), ("0028|1053", "1")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:04d}.dcm"))
        with _keep_locale():  # GDCM sets the C locale to "C"; the test process must keep its encoding
            writer.Execute(sl)
    return folder
