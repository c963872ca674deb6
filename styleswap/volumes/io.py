"""Read and validate medical volumes (NIfTI here, DICOM series in `dicom`), reorient them to RAS+
and remap label ids to the project's.

Neutral like `styleswap.contract`: `augment ingest` reads its training and evaluation volumes
through here, and `train predict` / `train eval --images` read new scans through the same code.

Every problem with a file is a one-line `StyleSwapError` that names the file: users fix their
data from the message alone, and nothing half-understood is ever written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import nibabel as nib
import numpy as np

from styleswap.errors import StyleSwapError
from styleswap.volumes.geometry import canonical_affine, canonical_orientation, to_canonical

NIFTI_ENDINGS = (".nii.gz", ".nii")

#: Image and label affines may differ by float noise (different writers, qform vs sform rounding).
AFFINE_RTOL = 1e-3
AFFINE_ATOL_MM = 1e-2

#: A volume is refused before any voxel is read when its float32 copy would exceed this many GiB
#: (the header's shape says how big it is; a crafted or broken header must not make us allocate).
#: Environment variable ``STYLESWAP_MAX_VOLUME_GIB`` raises or lowers it.
MAX_VOLUME_ENV = "STYLESWAP_MAX_VOLUME_GIB"
DEFAULT_MAX_VOLUME_GIB = 8.0


def normalize_modality(name: str) -> str | None:
    """``CT`` -> CT; MR, MRI, T1, T2, FLAIR, ... -> MRI; anything else -> None (unknown)."""
    s = str(name).strip().upper()
    if s.startswith("CT"):
        return "CT"
    if s.startswith(("MR", "T1", "T2", "FLAIR", "DWI", "ADC", "PD")):
        return "MRI"
    return None


def strip_nifti(name: str) -> str:
    for ending in NIFTI_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def max_volume_bytes() -> int:
    """The memory cap of one decoded volume or image, from ``STYLESWAP_MAX_VOLUME_GIB`` (default 8)."""
    raw = os.environ.get(MAX_VOLUME_ENV, "").strip()
    try:
        gib = float(raw) if raw else DEFAULT_MAX_VOLUME_GIB
    except ValueError:
        gib = float("nan")
    if not gib > 0 or gib == float("inf"):
        raise StyleSwapError(f"{MAX_VOLUME_ENV}={raw!r}: expected a positive number of GiB")
    return int(gib * 2**30)


def check_memory(path: str | Path, shape: tuple[int, ...], what: str = "volume") -> None:
    """Refuse, before reading any voxel, a ``shape`` whose float32 copy exceeds the cap."""
    voxels = 1
    for n in shape:
        voxels *= int(n)
    need, cap = voxels * 4, max_volume_bytes()
    if need > cap:
        raise StyleSwapError(
            f"{path}: {what} of shape {tuple(int(n) for n in shape)} needs {_size(need)} in memory (float32), "
            f"more than the {_size(cap)} limit; set {MAX_VOLUME_ENV} to raise it if the file is genuine"
        )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


# --- labels ------------------------------------------------------------------------------------------


def _format_map(project_labels: Mapping[str, int]) -> str:
    return ", ".join(f"{n}={i}" for n, i in sorted(project_labels.items(), key=lambda kv: kv[1]))


def parse_label_arg(labels: str | Mapping[str, int], project_labels: Mapping[str, int]) -> dict[int, int]:
    """``"liver=5,spleen=1"`` (or ``{"liver": 5, ...}``): names are project label names, ids are the
    ids in the source files. Returns source id -> project id."""
    if isinstance(labels, str):
        pairs: list[tuple[str, str]] = []
        for item in labels.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, ident = item.partition("=")
            if not sep or not name.strip() or not ident.strip():
                raise StyleSwapError(f"--labels {labels!r}: {item!r} is not NAME=ID")
            pairs.append((name.strip(), ident.strip()))
    elif isinstance(labels, Mapping):
        pairs = [(str(k), v) for k, v in labels.items()]
    else:
        raise StyleSwapError(f"--labels: expected 'NAME=ID,...' or a mapping, got {type(labels).__name__}")
    if not pairs:
        raise StyleSwapError(f"--labels {labels!r}: no NAME=ID pairs")

    remap: dict[int, int] = {}
    names: set[str] = set()
    for name, ident in pairs:
        if name not in project_labels:
            raise StyleSwapError(
                f"--labels: unknown label name {name!r}; valid names: {', '.join(project_labels)}"
            )
        try:
            source_id = int(ident)
            if isinstance(ident, float) and ident != source_id:
                raise ValueError
        except (TypeError, ValueError):
            raise StyleSwapError(f"--labels: id of {name!r} must be an integer, got {ident!r}") from None
        if source_id < 0:
            raise StyleSwapError(f"--labels: id of {name!r} must be >= 0, got {source_id}")
        if name in names:
            raise StyleSwapError(f"--labels: {name!r} is given twice")
        if source_id in remap:
            raise StyleSwapError(f"--labels: source id {source_id} is given for two names")
        names.add(name)
        remap[source_id] = int(project_labels[name])
    return remap


@dataclass(frozen=True)
class LabelMap:
    """How source label ids become project label ids.

    ``strict``: a source id that is not a key of ``remap`` is an error (we would not know what it
    is). Otherwise (explicit ``--labels``) it becomes background, as the user asked for a subset.
    """

    remap: dict[int, int]  # source id -> project id
    project: dict[str, int]
    origin: str  # "--labels", "dataset.json" or "identity"
    strict: bool

    def describe(self) -> dict:
        return {
            "origin": self.origin,
            "source_to_project": {str(k): v for k, v in sorted(self.remap.items())},
            "unmapped_ids": "error" if self.strict else "background (0)",
        }

    def apply(self, label: np.ndarray, path: str | Path) -> np.ndarray:
        """Validated uint8 project-id label map of a raw label array (any numeric dtype)."""
        if label.dtype.kind == "f":
            if not np.isfinite(label).all():
                raise StyleSwapError(f"{path}: NaN or infinite voxels in the label map")
            bad = label != np.round(label)
            if bad.any():
                examples = sorted({float(v) for v in label[bad][:1000]})[:3]
                raise StyleSwapError(
                    f"{path}: non-integer label values (e.g. {', '.join(f'{v:g}' for v in examples)}); "
                    "a label map must hold integer ids"
                )
        elif label.dtype.kind not in "iub":
            raise StyleSwapError(f"{path}: label map has dtype {label.dtype}, expected integer ids")
        ids = label.astype(np.int64, copy=False)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0:
            raise StyleSwapError(f"{path}: negative label id {lo}; a label map must hold ids >= 0")
        if hi <= 65535:  # bincount is much faster than unique on a whole volume
            present = np.flatnonzero(np.bincount(ids.ravel(), minlength=1)).tolist()
        else:
            present = np.unique(ids).tolist()
        unknown = [i for i in present if i not in self.remap]
        if self.strict and unknown:
            raise StyleSwapError(
                f"{path}: label ids {unknown} are not in the label map ({_format_map(self.project)}); "
                "pass --labels NAME=ID,..."
            )
        lut = np.zeros(max(hi, max(self.remap, default=0)) + 1, dtype=np.uint8)
        for source_id, project_id in self.remap.items():
            lut[source_id] = project_id
        return lut[ids]


def make_label_map(
    labels: str | Mapping[str, int] | None,
    dataset_labels: Mapping[str, int] | None,
    project_labels: Mapping[str, int],
    dataset_json: str | Path | None = None,
) -> LabelMap:
    """``--labels`` wins; else dataset.json's names; else identity on the project ids."""
    project = dict(project_labels)
    for name, ident in project.items():
        if not 0 <= int(ident) <= 255:
            raise StyleSwapError(f"project label {name!r} has id {ident}; masks are uint8 (0..255)")
    if labels is not None:
        return LabelMap(parse_label_arg(labels, project), project, "--labels", strict=False)
    if dataset_labels:
        remap: dict[int, int] = {}
        for name, source_id in dataset_labels.items():
            if name not in project:
                raise StyleSwapError(
                    f"{dataset_json}: label {name!r} (id {source_id}) is not a project label "
                    f"({_format_map(project)}); pass --labels NAME=ID,... to choose which ids to keep"
                )
            remap[int(source_id)] = project[name]
        return LabelMap(remap, project, "dataset.json", strict=True)
    return LabelMap({i: i for i in project.values()}, project, "identity", strict=True)


# --- NIfTI -------------------------------------------------------------------------------------------


def read_nifti(path: str | Path) -> nib.spatialimages.SpatialImage:
    """The image header-loaded (data stays on disk), as a 3D image; a trailing singleton 4th
    dimension is squeezed, a real 4D volume is refused, and so is a volume too big for memory
    (`check_memory`), from the header alone."""
    path = Path(path)
    if not path.is_file():
        raise StyleSwapError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise StyleSwapError(f"{path}: empty file (0 bytes)")
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        dtype = np.dtype(img.get_data_dtype())
    except Exception as e:  # nibabel raises many types for a bad file; all mean the same to a user
        raise StyleSwapError(f"{path}: cannot read as NIfTI ({_one_line(e)})") from None
    squeezed = shape[:3] + tuple(n for n in shape[3:] if n != 1) if len(shape) > 3 else shape
    if len(squeezed) != 3:
        raise StyleSwapError(f"{path}: {len(shape)}D volume of shape {shape}; expected a 3D volume (one channel)")
    if min(shape) < 1:
        raise StyleSwapError(f"{path}: empty volume of shape {shape}")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise StyleSwapError(f"{path}: voxel type {dtype} is not supported; expected integer or float voxels")
    check_memory(path, squeezed)
    if len(shape) > 3:
        img = nib.funcs.squeeze_image(img)
    return img


def _unreadable(e: BaseException, path: Path) -> str:
    """nibabel's reason, on one line, without the path the message already starts with."""
    return _one_line(e).replace(str(path), "the file")


def read_voxels(img, path: str | Path) -> np.ndarray:
    """The voxels as stored (nibabel applies the header's scaling); a short file fails here."""
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # truncated gzip, short file, ...
        raise StyleSwapError(f"{path}: cannot read voxel data ({_unreadable(e, Path(path))})") from None


def canonical_voxels(img, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(RAS+ view of the voxels, its affine)``: what ``nibabel.as_closest_canonical`` gives, as a
    view of the stored array (see `geometry.to_canonical`)."""
    ornt = canonical_orientation(img.affine)
    data = read_voxels(img, path)
    return to_canonical(data, ornt), canonical_affine(img.affine, ornt, data.shape)


def check_finite(array: np.ndarray, path: str | Path, chunk: int = 16) -> None:
    """Refuse NaN or infinite voxels (checked a few slices at a time: no volume-sized mask)."""
    if array.dtype.kind != "f":
        return
    bad = sum(int(np.size(array[..., k : k + chunk]) - np.count_nonzero(np.isfinite(array[..., k : k + chunk])))
              for k in range(0, array.shape[-1], chunk))
    if bad:
        raise StyleSwapError(f"{path}: {bad} NaN or infinite voxels")


def check_same_grid(img, lab, image_path: str | Path, label_path: str | Path) -> None:
    """A label must share its image's voxel grid: same shape, same affine (to float noise)."""
    if img.shape != lab.shape:
        raise StyleSwapError(
            f"{label_path}: label shape {tuple(lab.shape)} differs from image shape {tuple(img.shape)} of {image_path}"
        )
    if not np.allclose(img.affine, lab.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(img.affine - lab.affine).max())
        raise StyleSwapError(
            f"{label_path}: affine differs from the image's ({image_path}) by up to {diff:.3g}"
            f"{_grid_difference(lab.affine, img.affine)}; image and label must share one voxel grid"
        )


def _grid_difference(label_affine: np.ndarray, image_affine: np.ndarray) -> str:
    """What differs between two affines, in words: orientation, spacing and/or origin."""

    def fmt(v: np.ndarray) -> str:
        return "(" + ", ".join(f"{float(x):g}" for x in v) + ")"

    parts = []
    lab_axes = "".join(nib.aff2axcodes(label_affine))
    img_axes = "".join(nib.aff2axcodes(image_affine))
    if lab_axes != img_axes:
        parts.append(f"orientation {lab_axes} vs {img_axes}")
    lab_zooms = np.sqrt((label_affine[:3, :3] ** 2).sum(axis=0))
    img_zooms = np.sqrt((image_affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(lab_zooms, img_zooms, rtol=AFFINE_RTOL, atol=AFFINE_ATOL_MM):
        parts.append(f"spacing {fmt(lab_zooms)} vs {fmt(img_zooms)} mm")
    if not np.allclose(label_affine[:3, 3], image_affine[:3, 3], rtol=AFFINE_RTOL, atol=AFFINE_ATOL_MM):
        parts.append(f"origin {fmt(label_affine[:3, 3])} vs {fmt(image_affine[:3, 3])} mm")
    return f" ({'; '.join(parts)})" if parts else ""
