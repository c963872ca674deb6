"""Bad input through `augment ingest`: one line on stderr, exit code 2, no output folder left."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli_util import augment


def nifti(path: Path, data: np.ndarray, affine=None) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


def good_pair(tmp: Path, name: str = "case") -> tuple[np.ndarray, np.ndarray]:
    img = np.random.default_rng(0).normal(0, 100, (24, 24, 6)).astype(np.float32)
    lbl = np.zeros((24, 24, 6), np.uint8)
    lbl[5:12, 5:12, 2:4] = 1
    return img, lbl


def case(tmp: Path, img: np.ndarray, lbl: np.ndarray, name: str = "case") -> str:
    return f"{nifti(tmp / f'{name}.nii.gz', img)}:{nifti(tmp / f'{name}_seg.nii.gz', lbl)}"


def corrupt(tmp: Path, kind: str) -> str:
    img, lbl = good_pair(tmp)
    if kind == "shape":
        return case(tmp, img, lbl[:, :20])
    if kind == "labels":
        lbl[0, 0, 0], lbl[1, 1, 1] = 7, 9
        return case(tmp, img, lbl)
    if kind == "nan":
        img[3, 3, 3] = np.nan
        return case(tmp, img, lbl)
    if kind == "inf":
        img[3, 3, 3] = np.inf
        return case(tmp, img, lbl)
    if kind == "4d":
        return case(tmp, np.stack([img, img], axis=-1), lbl)
    if kind == "empty":
        (tmp / "empty.nii.gz").write_bytes(b"")
        return f"{tmp / 'empty.nii.gz'}:{nifti(tmp / 'seg.nii.gz', lbl)}"
    if kind == "garbage":
        (tmp / "junk.nii.gz").write_bytes(np.random.default_rng(1).bytes(4096))
        return f"{tmp / 'junk.nii.gz'}:{nifti(tmp / 'seg.nii.gz', lbl)}"
    if kind == "layout":
        folder = tmp / "random-folder"
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        return str(folder)
    raise AssertionError(kind)


# (kind, words the message must contain, whether it names the image file, the label file or the folder)
CASES = [
    ("shape", ["shape"], "case"),
    ("labels", ["7", "9", "label"], "case_seg"),
    ("nan", ["NaN"], "case"),
    ("inf", ["inf"], "case"),
    ("4d", ["4D"], "case"),
    ("empty", ["empty"], "empty.nii.gz"),
    ("garbage", [], "junk.nii.gz"),
    ("layout", ["nnU-Net", "MSD", "PNG"], "random-folder"),
]


@pytest.mark.parametrize("kind, words, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, kind, words, names):
    source = corrupt(tmp_path, kind)
    out = tmp_path / "out"
    code, stdout, err = augment(["ingest", source, "--out", str(out), "--size", "16", "--no-preview", "--modality", "CT"])
    assert code == 2, (stdout, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    low = err.lower()
    for w in words:
        assert w.lower() in low, err
    assert names in err, err
    assert not out.exists()


def test_good_pair_ingests(tmp_path):
    img, lbl = good_pair(tmp_path)
    out = tmp_path / "out"
    code, _, err = augment(["ingest", case(tmp_path, img, lbl), "--out", str(out), "--size", "16",
                            "--keep-empty", "0", "--no-preview", "--modality", "MRI"])
    assert code == 0, err
    import json

    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["slices"] == 2  # only the two slices with foreground
    assert m["copies"] == 0 and m["engine"]["name"] == "none"
