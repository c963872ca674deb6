"""Volume geometry: RAS+ reorientation, display slices, pad to square, resize, and their inverse.

Orientation (the one convention every slice in every dataset follows)
----------------------------------------------------------------------
Volumes are read in nibabel's canonical RAS+ orientation: array axis 0 (X) increases towards the
patient's Right, axis 1 (Y) towards Anterior, axis 2 (Z) towards Superior. `to_canonical` gives it
as a *view* of the array as stored (flips and a transpose, chosen by `canonical_orientation` from
the affine exactly as ``nibabel.as_closest_canonical`` does), so writing a prediction into
``to_canonical(out, ornt)`` lands it in the scan's own voxel order with nothing to invert.

Axial slice ``k`` is ``vol[:, :, k]`` and is displayed the radiological way::

    slice2d = vol[::-1, ::-1, k].T

so rows run anterior (top) -> posterior (bottom) and columns run from the patient's right (image
LEFT) to the patient's left (image right), as a radiologist looks at the patient from the feet.
The liver (patient's right) is therefore in the left half of the image, the spleen in the right
half, the spine at the bottom, for CT and MRI alike and whatever the on-disk orientation was.
``slice_index`` is ``k`` in the canonical volume (inferior -> superior). `from_display` inverts it.

Pad and resize
--------------
Each slice is padded to a square (centered; image with the volume's minimum, mask with 0), then
resized to ``size`` x ``size``: the image with antialiased bilinear interpolation, the mask with
nearest neighbour only (label ids must never be blended). The inverse (`resize_back`, then
`crop_square`) resizes per-class scores back to the padded square (bilinear, the same pixel-centre
convention, ``align_corners=False``) and cuts the padding off; labels are the argmax of the scores
on the scan's own grid, never a nearest-neighbour blow-up of a small label image.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

ORIENTATION = {
    "canonical": "RAS+ (nibabel.as_closest_canonical)",
    "slice": "axial slice k = vol[:, :, k], displayed as vol[::-1, ::-1, k].T",
    "rows": "anterior (top) -> posterior (bottom)",
    "columns": "patient right (image left) -> patient left (image right)",
    "slice_index": "k in the canonical volume, inferior -> superior",
}


# --- orientation ---------------------------------------------------------------------------------


def canonical_orientation(affine: np.ndarray) -> np.ndarray:
    """The (3, 2) nibabel orientation that takes the stored array to RAS+ (``io_orientation``)."""
    return nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """A RAS+ *view* of a stored (X, Y, Z) array (no copy: flips and a transpose)."""
    return nib.orientations.apply_orientation(array, ornt)


def canonical_affine(affine: np.ndarray, ornt: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The affine of ``to_canonical(array, ornt)`` (as ``nibabel.as_closest_canonical`` computes it)."""
    return np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(ornt, shape[:3])


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Length in mm of a step along each array axis (the columns of the affine's 3 x 3 part)."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0)))


# --- display slices --------------------------------------------------------------------------------


def display_slices(volume: np.ndarray, indices: np.ndarray | slice) -> np.ndarray:
    """(X, Y, Z) RAS+ volume -> (N, rows, cols) display slices at ``indices`` (see module doc)."""
    return np.ascontiguousarray(volume[::-1, ::-1, indices].transpose(2, 1, 0))


def from_display(stack: np.ndarray) -> np.ndarray:
    """Inverse of `display_slices` on the last two axes: (..., N, rows, cols) -> (..., X, Y, N) view."""
    moved = np.moveaxis(stack, -3, -1)  # (..., rows, cols, N) = (..., Y, X, N) reversed
    return np.swapaxes(moved, -3, -2)[..., ::-1, ::-1, :]


# --- pad to square and resize ------------------------------------------------------------------------


def square_box(h: int, w: int) -> tuple[int, int, int]:
    """``(P, top, left)``: the padded square's side and where the (h, w) content sits in it."""
    p = max(h, w)
    return p, (p - h) // 2, (p - w) // 2


def pad_to_square(stack: np.ndarray, fill: float | int) -> np.ndarray:
    """(N, H, W) -> (N, P, P), P = max(H, W), the content centered."""
    _, h, w = stack.shape
    p, top, left = square_box(h, w)
    if p == h and p == w:
        return stack
    return np.pad(stack, ((0, 0), (top, p - h - top), (left, p - w - left)), constant_values=fill)


def crop_square(stack, h: int, w: int):
    """Inverse of `pad_to_square`: (..., P, P) -> (..., h, w) (numpy arrays and tensors alike)."""
    _, top, left = square_box(h, w)
    return stack[..., top : top + h, left : left + w]


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Square (N, P, P) float images in [0, 1] -> (N, size, size): antialiased bilinear, one call."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    with torch.no_grad():
        img = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return img[:, 0].clamp_(0.0, 1.0).numpy()


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Square (N, P, P) uint8 label maps -> (N, size, size), nearest neighbour only."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks
    with torch.no_grad():
        # Float32 holds every uint8 id exactly, and nearest-exact only copies values: no blending.
        msk = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
        msk = F.interpolate(msk, size=(size, size), mode="nearest-exact")
    return msk[:, 0].round_().numpy().astype(np.uint8)


def resize_stack(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square (N, P, P) float images and uint8 masks -> (N, size, size); one batched call each."""
    return resize_images(images, size), resize_masks(masks, size)


def resize_back(scores: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of the resize for per-class scores: (N, C, size, size) -> (N, C, P, P), bilinear with
    the forward's pixel-centre convention (antialiased when it shrinks)."""
    if scores.shape[-1] == p and scores.shape[-2] == p:
        return scores
    return F.interpolate(scores, size=(p, p), mode="bilinear", antialias=p < scores.shape[-1], align_corners=False)
