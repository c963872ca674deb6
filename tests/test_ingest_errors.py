"""Bad input gives one-line `StyleSwapError`s that name the file and the problem."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from styleswap.errors import StyleSwapError
from styleswap.generator.sources.ingest import open_source

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def volume(shape=(8, 8, 3)) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:5, 2:5, 1] = 1
    return image, label


def stream_error(source, **kw) -> str:
    """The message of the error raised by opening or streaming ``source``; it must be one line."""
    kw.setdefault("modality", "MRI")
    kw.setdefault("size", 8)
    with pytest.raises(StyleSwapError) as info:
        list(open_source(source, **kw).slices())
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shapes_differ(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", label[:, :6])
    msg = stream_error(f"{img}:{lab}")
    assert str(lab) in msg and "(8, 6, 3)" in msg and "(8, 8, 3)" in msg


def test_label_ids_not_in_the_label_map(tmp_path):
    image, label = volume()
    label[0, 0, 0] = 7
    label[1, 1, 1] = 5
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{lab}: label ids [5, 7] are not in the label map (background=0, liver=1")
    assert "--labels" in msg


@pytest.mark.parametrize("bad, what", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_nan_or_inf_voxels(tmp_path, bad, what):
    image, label = volume()
    image[3, 3, 1] = bad
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{img}:") and what in msg and "1 NaN or infinite voxels" in msg


def test_4d_volume_refused_but_trailing_singleton_squeezed(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", np.stack([image, image], axis=-1))
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{img}: 4D volume of shape (8, 8, 3, 2)")
    nifti(img, image[..., None])  # (8, 8, 3, 1): one channel, accepted
    assert len(list(open_source(f"{img}:{lab}", modality="MRI", size=8, keep_empty=0).slices())) == 1


def test_empty_file(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = tmp_path / "lab.nii.gz"
    lab.write_bytes(b"")
    assert stream_error(f"{img}:{lab}") == f"{lab}: empty file (0 bytes)"


@pytest.mark.parametrize("gzipped", [False, True])
def test_corrupt_file(tmp_path, gzipped):
    image, label = volume()
    img = tmp_path / "img.nii.gz"
    junk = np.random.default_rng(1).bytes(4096)
    img.write_bytes(gzip.compress(junk) if gzipped else junk)
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{img}: cannot read")


def test_truncated_file(tmp_path):
    image, label = volume((32, 32, 16))
    img = nifti(tmp_path / "img.nii.gz", image)
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{img}: cannot read")


def test_folder_matching_no_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    msg = stream_error(str(tmp_path / "stuff"))
    assert msg.startswith(f"{tmp_path / 'stuff'}: matches no supported layout (tried: nnU-Net raw")
    for layout in ("MSD", "NIfTI image:label pairs", "PNG folder", "phantom"):
        assert layout in msg


def test_missing_path_and_missing_label(tmp_path):
    assert stream_error(str(tmp_path / "nope")) == f"{tmp_path / 'nope'}: no such file or folder"
    image, _ = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    msg = stream_error(f"{img}:{tmp_path / 'lab.nii.gz'}")
    assert msg.startswith(f"{tmp_path / 'lab.nii.gz'}: missing label file")
    msg = stream_error(str(img))  # an image alone
    assert str(img) in msg and "needs its label" in msg


def test_nnunet_missing_label_is_found_before_streaming(tmp_path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}}))
    image, _ = volume()
    nifti(root / "imagesTr" / "x_0000.nii.gz", image)
    with pytest.raises(StyleSwapError, match=r"labelsTr/x\.nii\.gz: missing label file"):
        open_source(str(root))  # no streaming needed


def test_mismatched_affine(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    lab = nifti(tmp_path / "lab.nii.gz", label, shifted)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{lab}: affine differs from the image's ({img})")
    tiny = AFFINE.copy()
    tiny[0, 3] = 1e-4  # float noise is tolerated
    nifti(lab, label, tiny)
    assert list(open_source(f"{img}:{lab}", modality="MRI", size=8).slices())


def test_non_integer_labels(tmp_path):
    image, label = volume()
    fl = label.astype(np.float32)
    fl[0, 0, 0] = 1.5
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", fl)
    msg = stream_error(f"{img}:{lab}")
    assert msg.startswith(f"{lab}: non-integer label values (e.g. 1.5)")


def test_unknown_label_name(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}", labels="liver=5,pancreas=7")
    assert msg == "--labels: unknown label name 'pancreas'; valid names: background, liver, kidney_right, kidney_left, spleen"
    assert "is not NAME=ID" in stream_error(f"{img}:{lab}", labels="liver:5")
    assert "must be an integer" in stream_error(f"{img}:{lab}", labels="liver=x")


def test_modality_required_for_loose_files(tmp_path):
    image, label = volume()
    img = nifti(tmp_path / "img.nii.gz", image)
    lab = nifti(tmp_path / "lab.nii.gz", label)
    msg = stream_error(f"{img}:{lab}", modality=None)
    assert str(img) in msg and "--modality" in msg


def test_dataset_label_not_in_project_set(tmp_path):
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "pancreas": 1}}
    (root / "dataset.json").write_text(json.dumps(meta))
    image, label = volume()
    nifti(root / "imagesTr" / "x_0000.nii.gz", image)
    nifti(root / "labelsTr" / "x.nii.gz", label)
    msg = stream_error(str(root))
    assert msg.startswith(f"{root / 'dataset.json'}: label 'pancreas' (id 1) is not a project label") and "--labels" in msg
    # --labels resolves it
    assert list(open_source(str(root), labels="liver=1", size=8, keep_empty=0).slices())


def test_rgb_png_mask_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a_1.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(tmp_path / "masks" / "a_1.png")
    msg = stream_error(str(tmp_path))
    assert msg.startswith(f"{tmp_path / 'masks' / 'a_1.png'}: RGB mask")
