"""Hostile and broken input, as a security-minded reviewer would feed it (issue #6).

Every case runs a real command line and checks three things: exit code 2, one line on stderr
(``error: <file>: <problem>``) that names the file, and nothing written: the whole test folder is
the same before and after (no output folder, no ``.partial``, no cache, target of a link untouched).
What test_ingest_errors.py and test_cli_errors.py already cover is not repeated here.

The other hostile inputs, checked the same way, are in test_bad_inputs_paths.py (paths that lead
out of folders, the rules of `styleswap.generator.safe_paths`), test_bad_inputs_weights.py
(pickle weights), test_bad_inputs_predict.py (`train predict`), test_bad_inputs_settings.py
(build settings, two writers, the content check's model) and test_bad_inputs_training.py
(`train seg` and `train eval`), all in this folder; their helpers are in
bad_input_helpers.py.
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from bad_input_helpers import (
    AFFINE,
    augment,
    huge_header,
    ingest,
    nifti,
    pair,
    png_chunk,
    png_folder,
    poison_bytes,
    refused,
    volume,
)


def test_poison_works(tmp_path):  # the canary of the pickle tests in test_bad_inputs_*.py is live
    pickle.loads(poison_bytes(tmp_path / "ran"))
    assert (tmp_path / "ran").exists()


# --- 1. truncated and corrupt files ------------------------------------------------------------


@pytest.mark.parametrize("ext, flipped", [(".nii.gz", False), (".nii", False), (".nii", True)],
                         ids=["nii.gz", "nii", "nii-LAS"])
def test_truncated_nifti(tmp_path, ext, flipped):
    # flipped: an LAS image is reoriented to RAS+ before its voxels are converted, which reads them
    aff = np.diag([-1.5, 1.5, 3.0, 1.0]) if flipped else AFFINE
    image, label = volume((48, 48, 16))
    img = nifti(tmp_path / f"img{ext}", image, aff)
    lab = nifti(tmp_path / f"lab{ext}", label, aff)
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    msg = refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path, img)
    assert msg.startswith(f"{img}: cannot read voxel data (")


def test_file_name_with_a_newline_stays_one_line(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img\nforged.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", label)
    img.write_bytes(img.read_bytes()[:100])
    msg = refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path)
    assert str(img).replace("\n", "\\n") in msg, msg


RGB = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])


@pytest.mark.parametrize("dtype, shown", [(np.complex64, "complex64"), (RGB, "[('R', 'u1'), ('G', 'u1'), ('B', 'u1')]")],
                         ids=["complex", "rgb"])
def test_voxel_type_that_is_not_a_number(tmp_path, dtype, shown):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", np.zeros(image.shape, dtype))
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path)
    assert msg == f"{img}: voxel type {shown} is not supported; expected integer or float voxels"


def _truncate(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _corrupt(b: bytes) -> bytes:
    c = bytearray(b)
    at = b.index(b"IDAT") + 20
    c[at : at + 8] = b"\xff" * 8
    return bytes(c)


def _jpeg(_: bytes) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


PNG_CASES = [
    ("images", "truncated", _truncate, "cannot read as PNG (image file is truncated)"),
    ("images", "corrupt", _corrupt, "cannot read as PNG (broken data stream when reading image file)"),
    ("masks", "truncated", _truncate, "cannot read as PNG (image file is truncated)"),
    ("masks", "empty", lambda b: b"", "empty file (0 bytes)"),
    ("images", "empty", lambda b: b"", "empty file (0 bytes)"),
    ("images", "jpeg", _jpeg, "cannot read as PNG (not PNG data)"),
]


@pytest.mark.parametrize("where, kind, damage, problem", PNG_CASES, ids=[f"{c[0]}-{c[1]}" for c in PNG_CASES])
def test_bad_png(tmp_path, where, kind, damage, problem):
    root = png_folder(tmp_path / "pngs")
    bad = root / where / "a_1.png"
    bad.write_bytes(damage(bad.read_bytes()))
    msg = refused(augment, ingest(root, tmp_path / "out"), tmp_path, bad)
    assert msg == f"{bad}: {problem}"


# --- 3. label on another voxel grid than its image ---------------------------------------------


@pytest.mark.parametrize(
    "label_affine, what",
    [
        (np.diag([1.5, 1.5, 2.5, 1.0]), "(spacing (1.5, 1.5, 2.5) vs (1.5, 1.5, 3) mm)"),
        (np.diag([-1.5, 1.5, 3.0, 1.0]), "(orientation LAS vs RAS)"),
        (np.array([[0, 1.5, 0, 0], [1.5, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]]), "(orientation ARS vs RAS)"),
    ],
    ids=["spacing", "flipped", "axes-swapped"],
)
def test_label_grid_differs(tmp_path, label_affine, what):
    img, lab = pair(tmp_path, label_affine=label_affine)
    msg = refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path, lab, img)
    assert msg.startswith(f"{lab}: affine differs from the image's ({img}) by up to ") and what in msg


def test_label_spacing_within_tolerance_is_accepted(tmp_path):
    img, lab = pair(tmp_path, label_affine=np.diag([1.5, 1.5, 3.002, 1.0]))  # float noise of another writer
    code, _, err = augment(ingest(f"{img}:{lab}", tmp_path / "out"))
    assert code == 0, err


# --- 4. volumes too big for memory, refused from the header --------------------------------------


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_header_claims_a_huge_volume(tmp_path, ext):
    img = huge_header(tmp_path / f"img{ext}")
    _, label = volume()
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path)
    assert msg == (f"{img}: volume of shape (30000, 30000, 30000) needs 100,582.8 GiB in memory (float32), more than "
                   "the 8.0 GiB limit; set STYLESWAP_MAX_VOLUME_GIB to raise it if the file is genuine")


def test_huge_label_header_is_refused_without_allocating(tmp_path):
    import tracemalloc

    from styleswap.errors import StyleSwapError
    from styleswap.generator.sources.ingest import open_source

    image, _ = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = huge_header(tmp_path / "lab.nii.gz", (20000, 20000, 200), np.uint8)
    tracemalloc.start()
    try:
        with pytest.raises(StyleSwapError, match=r"lab\.nii\.gz: volume of shape \(20000, 20000, 200\) needs 298\.0 GiB"):
            list(open_source(f"{img}:{lab}", modality="CT", size=16).slices())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak


def test_memory_limit_is_configurable(tmp_path, monkeypatch):
    img, lab = pair(tmp_path)
    monkeypatch.setenv("STYLESWAP_MAX_VOLUME_GIB", "0.000001")  # about 1 KiB
    msg = refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path)
    assert msg.startswith(f"{img}: volume of shape (24, 24, 6) needs 13.5 KiB in memory (float32), more than the 1.0 KiB limit")
    pngs = png_folder(tmp_path / "pngs")
    msg = refused(augment, ingest(pngs, tmp_path / "out"), tmp_path)
    assert msg.startswith(f"{pngs / 'images' / 'a_0.png'}: image of shape (32, 32) needs 4.0 KiB in memory")
    monkeypatch.setenv("STYLESWAP_MAX_VOLUME_GIB", "lots")
    assert refused(augment, ingest(f"{img}:{lab}", tmp_path / "out"), tmp_path) == (
        "STYLESWAP_MAX_VOLUME_GIB='lots': expected a positive number of GiB")


def test_png_header_claims_a_huge_image(tmp_path):
    root = png_folder(tmp_path / "pngs")
    bomb = root / "images" / "a_1.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
                     + png_chunk(b"IEND", b""))
    msg = refused(augment, ingest(root, tmp_path / "out"), tmp_path)
    assert msg.startswith(f"{bomb}: refusing to decode (Image size (900000000 pixels) exceeds limit")
