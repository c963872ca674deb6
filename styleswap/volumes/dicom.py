"""DICOM series, read with SimpleITK (GDCM underneath: slice sorting, rescale slope/intercept,
geometry), never by hand.

A folder holds one series: its geometry comes back as a NIfTI-style RAS+ affine (DICOM's patient
coordinates are LPS+, so the first two world axes change sign), its voxels as an (X, Y, Z) view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from styleswap.errors import StyleSwapError

#: DICOM files carry "DICM" after a 128-byte preamble (Part 10); files without one are not ours.
_MAGIC_OFFSET, _MAGIC = 128, b"DICM"


def looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == _MAGIC


def is_dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` directly holds at least one DICOM (Part 10) file."""
    return folder.is_dir() and any(p.is_file() and looks_like_dicom(p) for p in sorted(folder.iterdir())[:64])


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a dependency; kept as a one-line message
        raise StyleSwapError("reading DICOM needs SimpleITK: pip install SimpleITK") from None
    return sitk


def series_files(folder: Path) -> list[str]:
    """The files of the one series in ``folder``, in slice order; two series are refused."""
    sitk = _sitk()
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise StyleSwapError(f"{folder}: no readable DICOM series")
    if len(ids) > 1:
        raise StyleSwapError(f"{folder}: {len(ids)} DICOM series in one folder; put each series in its own folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def read_series(folder: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(voxels (X, Y, Z), RAS+ affine, modality or None)`` of the single series in ``folder``."""
    from styleswap.volumes.io import check_memory

    sitk = _sitk()
    files = series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()
        size = info.GetSize()
        check_memory(folder, (int(size[0]), int(size[1]), len(files)))
        image = reader.Execute()
    except StyleSwapError:
        raise
    except Exception as e:  # noqa: BLE001 - SimpleITK raises RuntimeError with multi-line text
        first = " ".join(str(e).split())[:200]
        raise StyleSwapError(f"{folder}: cannot read the DICOM series ({first})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise StyleSwapError(f"{folder}: DICOM series of {image.GetDimension()}D images with "
                             f"{image.GetNumberOfComponentsPerPixel()} components; expected one 3D grayscale volume")
    modality = None
    if reader.HasMetaDataKey(0, "0008|0060"):
        modality = reader.GetMetaData(0, "0008|0060").strip() or None
    voxels = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z) view
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS+ -> RAS+
    return voxels, affine, modality
