"""Helpers and fixtures shared by the hostile-input tests (tests/bad_inputs/, one file per kind of input).

``refused`` runs a command that must be refused and checks the contract of test_bad_inputs.py:
exit code 2, one line on stderr naming the file, and nothing written under the test folder.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import stat
import struct
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cli_util import augment, run_cli

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


# --- helpers -----------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, tuple]:
    """Everything under ``root`` (links not followed): kind, and size + mtime for files and links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = stat.S_IFMT(st.st_mode)
            out[str(p.relative_to(root))] = (kind,) if stat.S_ISDIR(st.st_mode) else (kind, st.st_size, st.st_mtime_ns)
    return out


def refused(run, args, root: Path, *fragments) -> str:
    """Run a command that must be refused; returns the message (without ``error: ``)."""
    before = tree(root)
    code, stdout, err = run([str(a) for a in args])
    assert code == 2, (code, stdout, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert str(f) in err, err
    after = tree(root)
    assert after == before, f"written: {sorted(set(after) ^ set(before))} changed: " + str(
        sorted(k for k in before if k in after and before[k] != after[k]))
    return err[len("error: "):].rstrip("\n")


def train(args):
    from styleswap.trainer.cli import main

    return run_cli(main, args)


def nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def volume(shape=(24, 24, 6)) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(0, 100, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[5:12, 5:12, 2:4] = 1
    return image, label


def pair(tmp: Path, image_affine=AFFINE, label_affine=AFFINE, ext: str = ".nii.gz") -> tuple[Path, Path]:
    image, label = volume()
    return nifti(tmp / f"img{ext}", image, image_affine), nifti(tmp / f"lab{ext}", label, label_affine)


def ingest(source, out: Path, *more) -> list:
    return ["ingest", str(source), "--out", out, "--size", "16", "--no-preview", "--modality", "CT", *more]


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def png_folder(root: Path, n: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 1
        (root / "images" / f"a_{k}.png").write_bytes(png_bytes(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
        (root / "masks" / f"a_{k}.png").write_bytes(png_bytes(mask))
    return root


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header(path: Path, shape=(30000, 30000, 30000), dtype=np.int16) -> Path:
    """A NIfTI of a few hundred bytes whose header claims ``shape`` (no voxel data at all)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(AFFINE, code=1)
    hdr["vox_offset"] = 352
    buf = io.BytesIO()
    hdr.write_to(buf)
    raw = buf.getvalue() + b"\0" * 4
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


class Poison:
    """Unpickling this creates ``marker``: proof that a refused file was never unpickled."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def poison_bytes(marker: Path) -> bytes:
    return pickle.dumps(Poison(marker))


# --- fixtures of the paths and settings tests (imported there as work_fixture, dataset_fixture) ---


@pytest.fixture(name="work")
def work_fixture(tmp_path, monkeypatch):
    """The folder commands run in (what a recipe's relative paths are relative to)."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


@pytest.fixture(name="dataset")
def dataset_fixture(tmp_path, work):
    """A dataset folder made by `augment ingest`, its source pair, and a folder outside it."""
    img, lab = pair(tmp_path)
    code, _, err = augment(ingest(f"{img}:{lab}", work / "ds", "--keep-empty", "0"))
    assert code == 0, err
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not yours")
    return work / "ds", f"{img}:{lab}", outside
