"""Bad scans, model folders and output paths of `train predict`; the contract is in test_bad_inputs.py."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bad_input_helpers import AFFINE, nifti, poison_bytes, refused, train, volume

# --- train predict (issue #12): scans, model folders, output paths ----------------------------------


@pytest.fixture
def predict_case(tmp_path):
    """A model folder (untrained, with its config) and a scans folder; returns (model, scans)."""
    from predict_fixtures import tiny_model

    model = tiny_model(tmp_path / "model")
    scans = tmp_path / "scans"
    scans.mkdir()
    return model, scans


def _truncated(path: Path) -> Path:
    nifti(path, volume((32, 32, 12))[0])
    path.write_bytes(path.read_bytes()[:-200])
    return path


@pytest.mark.parametrize("what, make, problem", [
    ("4D", lambda d: nifti(d / "four.nii.gz", np.zeros((24, 24, 6, 2), np.float32)), "4D volume of shape (24, 24, 6, 2); expected a 3D volume"),
    ("NaN", lambda d: nifti(d / "nan.nii.gz", np.where(np.eye(24, dtype=bool)[..., None], np.nan, 1.0).astype(np.float32)), "24 NaN or infinite voxels"),
    ("truncated", lambda d: _truncated(d / "short.nii.gz"), "cannot read voxel data"),
])
def test_predict_refuses_a_bad_scan(tmp_path, predict_case, what, make, problem):
    model, scans = predict_case
    bad = make(scans)
    refused(train, ["predict", scans, "--model", model, "--out", tmp_path / "pred", "--no-progress"], tmp_path, f"{bad}: {problem}")


def test_predict_keeps_finished_cases_whole_when_a_later_scan_is_bad(tmp_path, predict_case):
    """Header problems (4D, type, size, two series) stop a run before the first case; a scan that
    fails while being read (NaN, truncated) stops it there: earlier cases stay complete, the bad
    one leaves no file and no temporary, and no predictions.json claims a finished run."""
    model, scans = predict_case
    nifti(scans / "a_0000.nii.gz", volume()[0])
    bad = _truncated(scans / "b_0000.nii.gz")
    code, _, err = train(["predict", scans, "--model", model, "--out", tmp_path / "pred", "--no-progress"])
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {bad}: cannot read voxel data"), err
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["a.nii.gz"]
    assert nib.load(str(tmp_path / "pred" / "a.nii.gz")).shape == volume()[0].shape


def test_predict_refuses_a_dicom_folder_with_two_series(tmp_path, predict_case):
    from predict_fixtures import dicom_series

    model, _ = predict_case
    stored = np.random.default_rng(0).integers(-100, 100, (16, 16, 4)).astype(np.int16)
    folder = dicom_series(tmp_path / "dicom", stored, AFFINE, series="1.2.3.4.1", prefix="a")
    dicom_series(folder, stored, AFFINE, series="1.2.3.4.2", prefix="b")
    refused(train, ["predict", folder, "--model", model, "--out", tmp_path / "pred", "--no-progress"], tmp_path,
            f"{folder}: 2 DICOM series in one folder; put each series in its own folder")


def test_predict_refuses_model_folders_without_config_or_with_pickle_weights(tmp_path, predict_case):
    model, scans = predict_case
    scan = nifti(scans / "a.nii.gz", volume()[0])
    (model / "config.json").unlink()
    refused(train, ["predict", scan, "--model", model, "--out", tmp_path / "pred"], tmp_path,
            f"{model}: no trained model (config.json + model.safetensors in best/, final/ or the folder)")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "model.pt").write_bytes(poison_bytes("never-run"))
    refused(train, ["predict", scan, "--model", pickled, "--out", tmp_path / "pred"], tmp_path,
            f"{pickled / 'model.pt'}: pickle weights are never loaded")


def test_predict_refuses_output_inside_the_input_or_through_a_link(tmp_path, predict_case):
    model, scans = predict_case
    nifti(scans / "a.nii.gz", volume()[0])
    refused(train, ["predict", scans, "--model", model, "--out", scans / "pred"], tmp_path,
            f"{scans / 'pred'}: output folder is inside the input folder {scans}")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    refused(train, ["predict", scans, "--model", model, "--out", tmp_path / "link"], tmp_path,
            f"{tmp_path / 'link'}: output folder is a symbolic link")
    refused(train, ["predict", scans / "a.nii.gz", "--model", model, "--out", scans], tmp_path,
            f"{scans}: writing a.nii.gz there would overwrite the input")
