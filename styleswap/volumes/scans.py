"""New scans to segment: what the user pointed at, found cheaply, then read one at a time.

An input is one of:

- a NIfTI file (``.nii`` / ``.nii.gz``); an nnU-Net channel suffix ``_0000`` is dropped from its case id;
- a folder of NIfTI files (all ``*.nii`` / ``*.nii.gz`` directly in it);
- an nnU-Net raw folder (``dataset.json`` + ``imagesTs/``, else ``imagesTr/``; files ``CASE_0000.nii.gz``);
- a DICOM series folder (one series; read with SimpleITK, see `dicom`).

`find_scans` only lists files and reads ``dataset.json``; `load_scan` reads and validates one scan
(3D, numeric, finite, within the memory cap) with the same readers as `augment ingest`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from styleswap.errors import StyleSwapError
from styleswap.volumes import dicom
from styleswap.volumes.geometry import voxel_sizes
from styleswap.volumes.io import NIFTI_ENDINGS, check_finite, normalize_modality, read_nifti, read_voxels, strip_nifti

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ScanRef:
    """Where one scan lives: a NIfTI file or a DICOM series folder."""

    case_id: str
    path: Path
    kind: str  # "nifti" or "dicom"
    modality: str | None = None  # what the data says (dataset.json, DICOM tag); None: nothing


@dataclass
class Scan:
    """One validated scan: voxels in stored order (X, Y, Z), its affine, and the NIfTI header (None
    for DICOM) whose codes and units a prediction copies."""

    ref: ScanRef
    voxels: np.ndarray
    affine: np.ndarray
    header: object | None
    modality: str | None

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_ENDINGS)


def _case_of(path: Path) -> str:
    stem = strip_nifti(path.name)
    m = _CHANNEL_RE.match(stem)
    return m["case"] if m and m["channel"] == "0000" else stem


def _nifti_folder(folder: Path, modality: str | None = None) -> list[ScanRef]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    other = [p for p in files if (m := _CHANNEL_RE.match(strip_nifti(p.name))) and m["channel"] != "0000"]
    if other:
        raise StyleSwapError(f"{other[0]}: a second input channel; only single-channel models are supported")
    return [ScanRef(_case_of(p), p, "nifti", modality) for p in files]


def _nnunet_folder(folder: Path) -> list[ScanRef]:
    try:
        meta = json.loads((folder / "dataset.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StyleSwapError(f"{folder / 'dataset.json'}: not valid JSON ({' '.join(str(e).split())})") from None
    channels = (meta.get("channel_names") or meta.get("modality") or {}) if isinstance(meta, dict) else {}
    modality = normalize_modality(next(iter(channels.values()))) if isinstance(channels, dict) and len(channels) == 1 else None
    for sub in ("imagesTs", "imagesTr"):
        if (folder / sub).is_dir() and any(is_nifti(p) for p in (folder / sub).iterdir()):
            return _nifti_folder(folder / sub, modality)
    raise StyleSwapError(f"{folder}: nnU-Net folder without NIfTI images in imagesTs/ or imagesTr/")


def find_scans(inputs: list[str | Path]) -> list[ScanRef]:
    """Every scan named by ``inputs`` (see the module docstring), with unique case ids."""
    if not inputs:
        raise StyleSwapError("no input given: pass NIfTI files, folders of them, an nnU-Net raw folder or a DICOM series folder")
    refs: list[ScanRef] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise StyleSwapError(f"{path}: no such file or folder")
        if path.is_file():
            if dicom.looks_like_dicom(path):
                raise StyleSwapError(f"{path}: a single DICOM file; pass the folder that holds its series")
            if not is_nifti(path):
                raise StyleSwapError(f"{path}: not a NIfTI file (.nii or .nii.gz) or a DICOM series folder")
            refs.append(ScanRef(_case_of(path), path, "nifti"))
        elif (path / "dataset.json").is_file():
            refs += _nnunet_folder(path)
        elif (found := _nifti_folder(path)):
            refs += found
        elif dicom.is_dicom_folder(path):
            refs.append(ScanRef(path.resolve().name, path, "dicom"))
        else:
            raise StyleSwapError(f"{path}: no NIfTI files (.nii, .nii.gz) and no DICOM series in this folder")
    seen: dict[str, Path] = {}
    for ref in refs:
        if ref.case_id in seen:
            raise StyleSwapError(f"{ref.path}: case id {ref.case_id!r} is also the case id of {seen[ref.case_id]}; rename one")
        seen[ref.case_id] = ref.path
    return refs


def load_scan(ref: ScanRef) -> Scan:
    """Read and validate one scan: a 3D numeric volume, finite, positive voxel sizes."""
    if ref.kind == "dicom":
        voxels, affine, tag = dicom.read_series(ref.path)
        header, modality = None, ref.modality or (normalize_modality(tag) if tag else None)
    else:
        img = read_nifti(ref.path)
        voxels, affine, header, modality = read_voxels(img, ref.path), np.asarray(img.affine, dtype=np.float64), img.header, ref.modality
    check_finite(voxels, ref.path)
    sizes = voxel_sizes(affine)
    if not all(np.isfinite(s) and s > 0 for s in sizes):
        raise StyleSwapError(f"{ref.path}: voxel spacing {sizes} must be positive (a singular affine)")
    return Scan(ref, voxels, affine, header, modality)
