"""Hostile and broken input, as a security-minded reviewer would feed it (issue #6).

Every case runs a real command line and checks three things: exit code 2, one line on stderr
(``error: <file>: <problem>``) that names the file, and nothing written: the whole test folder is
the same before and after (no output folder, no ``.partial``, no cache, target of a link untouched).
What test_ingest_errors.py and test_cli_errors.py already cover is not repeated here.

The path rules tested in the second part are those of `styleswap.generator.safe_paths`.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
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


def test_poison_works(tmp_path):  # the canary of the pickle tests below is live
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


# --- 2. paths that lead out of the folders a command was given ---------------------------------


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The folder commands run in (what a recipe's relative paths are relative to)."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


def recipe(work: Path, **keys) -> Path:
    img, lab = pair(work)
    lines = {"source": f"{img}:{lab}", "out": "out/ds", "engine": "none", "copies": 0, "size": 16,
             "modality": "CT", "preview": False, **keys}
    path = work / "recipe.yaml"
    path.write_text("".join(f"{k}: {v!r}\n" if isinstance(v, str) else f"{k}: {v}\n" for k, v in lines.items()))
    return path


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("out", "../escape", ["out '../escape' climbs out with '..'", "pass --out on the command line"]),
        ("out", "out/../../escape", ["climbs out with '..'"]),
        ("cache_dir", "../../cache", ["cache_dir '../../cache' climbs out with '..'", "--cache-dir"]),
        ("out", "/tmp/styleswap-escape", ["out '/tmp/styleswap-escape' is an absolute path", "--out /tmp/styleswap-escape"]),
        ("cache_dir", "~/cache", ["cache_dir '~/cache' is an absolute path"]),
    ],
    ids=["out-dotdot", "out-dotdot-inner", "cache-dotdot", "out-absolute", "cache-home"],
)
def test_recipe_write_path_outside_the_working_folder(tmp_path, work, key, value, words):
    path = recipe(work, **{key: value})
    msg = refused(augment, ["build", path], tmp_path, *words)
    assert msg.startswith(f"{path}: {key} ")
    assert not Path("/tmp/styleswap-escape").exists()


def test_recipe_out_through_a_symlink(tmp_path, work):
    (tmp_path / "elsewhere").mkdir()
    (work / "link").symlink_to(tmp_path / "elsewhere")
    path = recipe(work, out="link/ds")
    refused(augment, ["build", path], tmp_path, f"{path}: out 'link/ds' leads through a symbolic link to {tmp_path / 'elsewhere' / 'ds'}")


def test_recipe_paths_inside_or_overridden_on_the_command_line_are_accepted(tmp_path, work):
    path = recipe(work, out="../escape", cache_dir="/somewhere/else")
    code, _, err = augment(["build", str(path), "--out", "ok", "--cache-dir", "cache"])  # the user's own choice
    assert code == 0, err
    assert (work / "ok" / "manifest.json").is_file() and not (tmp_path / "escape").exists()
    code, _, err = augment(["build", str(recipe(work, out="sub/../inside"))])  # '..' that stays inside
    assert code == 0, err
    assert (work / "inside" / "manifest.json").is_file()


@pytest.fixture
def dataset(tmp_path, work):
    """A dataset folder made by `augment ingest`, its source pair, and a folder outside it."""
    img, lab = pair(tmp_path)
    code, _, err = augment(ingest(f"{img}:{lab}", work / "ds", "--keep-empty", "0"))
    assert code == 0, err
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not yours")
    return work / "ds", f"{img}:{lab}", outside


def test_out_is_a_symlink(tmp_path, dataset):
    _, source, outside = dataset
    link = tmp_path / "work" / "link"
    link.symlink_to(outside)
    refused(augment, ingest(source, link), tmp_path,
            f"{link}: the output folder is a symbolic link (to {outside}); refusing to write through it")
    refused(augment, ["build", "--source", source, "--out", link, "--engine", "none", "-k", "0"], tmp_path, link)


@pytest.mark.parametrize("name", ["data", ".partial", "README.md", "preview.png"])
def test_symlink_inside_the_output_folder(tmp_path, dataset, name):
    ds, source, outside = dataset
    target = ds / name
    if target.is_dir():
        shutil.move(str(target), str(outside / name))
    else:
        target.unlink(missing_ok=True)
    target.symlink_to(outside / name if (outside / name).exists() else outside)
    msg = refused(augment, ingest(source, ds, "--overwrite"), tmp_path, target)
    assert msg.startswith(f"{target}: a symbolic link (to ") and "remove the link" in msg
    assert (outside / "keep.txt").read_text() == "not yours"


def test_symlinked_shard_inside_data(tmp_path, dataset):
    ds, source, outside = dataset
    shard = next((ds / "data").iterdir())
    shutil.move(str(shard), str(outside / shard.name))
    shard.symlink_to(outside / shard.name)
    refused(augment, ingest(source, ds, "--overwrite"), tmp_path, f"{shard}: a symbolic link")


@pytest.mark.parametrize("how", ["dotdot", "absolute", "data-symlink"])
def test_manifest_shard_path_escapes(tmp_path, dataset, how):
    """Reading: verify, convert and build from a dataset never open a shard outside its folder."""
    import json

    ds, _, outside = dataset
    mpath = ds / "manifest.json"
    manifest = json.loads(mpath.read_text())
    shard = ds / manifest["shards"][0]["path"]
    if how == "data-symlink":
        shutil.move(str(ds / "data"), str(outside / "data"))
        (ds / "data").symlink_to(outside / "data")
        rel = manifest["shards"][0]["path"]
    else:
        shutil.move(str(shard), str(outside / shard.name))
        rel = "../../outside/" + shard.name if how == "dotdot" else str(outside / shard.name)
        manifest["shards"][0]["path"] = rel
        mpath.write_text(json.dumps(manifest))
    problem = f"{mpath}: shard path {rel!r} escapes the dataset folder"
    refused(augment, ["verify", ds], tmp_path, problem)
    refused(augment, ["convert", ds, "--to", "hdf5", "--out", tmp_path / "work" / "h5"], tmp_path, problem)
    refused(augment, ["build", "--source", ds, "--out", tmp_path / "work" / "gin", "--engine", "gin", "-k", "1"],
            tmp_path, problem)
    # the trainer has its own reader (it imports nothing from the generator): same rule
    refused(train, ["seg", "--data", ds, "--out", tmp_path / "work" / "run", "--steps", "1", "--workers", "0"],
            tmp_path, problem)


def test_msd_dataset_json_lists_a_file_outside_its_folder(tmp_path):
    import json

    root = tmp_path / "msd"
    root.mkdir()
    img, lab = pair(tmp_path)  # next to the dataset folder, not in it
    meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
            "training": [{"image": "../img.nii.gz", "label": str(lab)}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    refused(augment, ingest(root, tmp_path / "out"), tmp_path,
            f"{root / 'dataset.json'}: training[0] image '../img.nii.gz' leads outside {root}")
    meta["training"][0]["image"] = "img.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    shutil.copy(img, root / "img.nii.gz")
    refused(augment, ingest(root, tmp_path / "out"), tmp_path, f"training[0] label {str(lab)!r} leads outside {root}")


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


# --- 5. pickle weights -------------------------------------------------------------------------


def test_trainer_refuses_pickle_weights(tmp_path):
    from trainer_fixtures import write_dataset

    data = write_dataset(tmp_path / "data", n_cases=1, slices=2, size=16)
    marker = tmp_path / "unpickled"
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text('{"arch": "unet", "num_classes": 2, "channels": 4, "depth": 3}')
    (run / "best" / "model.pt").write_bytes(poison_bytes(marker))
    problem = "pickle weights are never loaded (loading them can run arbitrary code); a model folder holds config.json + model.safetensors"
    refused(train, ["eval", "--model", run, "--data", data, "--out", tmp_path / "eval"], tmp_path,
            f"{run / 'best' / 'model.pt'}: {problem}")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(poison_bytes(marker))
    refused(train, ["eval", "--model", ckpt, "--data", data, "--out", tmp_path / "eval"], tmp_path, f"{ckpt}: {problem}")
    assert not marker.exists()


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """The tiny preset twice: ``safe`` (safetensors) and ``pickle`` (the same weights as torch
    pickles), a ``poisoned`` copy of the latter whose weight files create a marker if unpickled,
    and a source dataset."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    from diffusion_fixtures import write_dataset
    from styleswap.generator.diffusion.presets import build_tiny

    root = tmp_path_factory.mktemp("sd")
    build_tiny(root / "safe")
    shutil.copytree(root / "safe", root / "pickle")
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        model = cls.from_pretrained(str(root / "pickle" / sub), use_safetensors=True)
        for f in (root / "pickle" / sub).glob("*.safetensors"):
            f.unlink()
        model.save_pretrained(str(root / "pickle" / sub), safe_serialization=False)
    te = root / "pickle" / "text_encoder" / "model.safetensors"
    torch.save(load_file(str(te)), te.with_name("pytorch_model.bin"))
    te.unlink()
    shutil.copytree(root / "pickle", root / "poisoned")
    for f in (root / "poisoned").rglob("*.bin"):
        f.write_bytes(poison_bytes(root / "unpickled"))
    write_dataset(root / "data", n=2, size=48)
    return root


def diffusion_commands(sd: Path, tmp: Path) -> dict[str, tuple[list, Path]]:
    poisoned, data = sd / "poisoned", sd / "data"
    unet_bin = poisoned / "unet" / "diffusion_pytorch_model.bin"
    return {
        "finetune": (["finetune", "--data", data, "--out", tmp / "ft", "--base-model", poisoned], unet_bin),
        "controlnet": (["controlnet", "--data", data, "--out", tmp / "cn", "--base-model", sd / "safe",
                        "--unet", poisoned / "unet"], unet_bin),
        "build-models-given": (["build", "--source", data, "--out", tmp / "ds", "--engine", "controlnet", "-k", "1",
                                "-e", f"base_model={poisoned}", "-e", f"unet={sd / 'safe' / 'unet'}",
                                "-e", f"controlnet={sd / 'safe' / 'unet'}", "--cache-dir", tmp / "cache"], unet_bin),
        "build-trains": (["build", "--source", data, "--out", tmp / "ds", "--engine", "controlnet", "-k", "1",
                          "-e", f"base_model={poisoned}", "--cache-dir", tmp / "cache"], unet_bin),
        "build-controlnet": (["build", "--source", data, "--out", tmp / "ds", "--engine", "controlnet", "-k", "1",
                              "-e", f"base_model={sd / 'safe'}", "-e", f"unet={sd / 'safe' / 'unet'}",
                              "-e", f"controlnet={poisoned / 'unet'}", "--cache-dir", tmp / "cache"], unet_bin),
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", ["finetune", "controlnet", "build-models-given", "build-trains", "build-controlnet"])
def test_diffusion_commands_refuse_pickle_weights(sd, tmp_path, command):
    args, named = diffusion_commands(sd, tmp_path)[command]
    msg = refused(augment, args, tmp_path)
    assert msg == (f"{named}: pickle weights (loading them can run arbitrary code) and no safetensors next to them; "
                   "convert them to safetensors, or pass --allow-pickle if you trust this file")
    assert not (sd / "unpickled").exists()


@pytest.mark.slow
def test_allow_pickle_loads_pickle_weights(sd, tmp_path):
    from styleswap.generator.diffusion.loading import ALLOW_PICKLE_ENV

    out = tmp_path / "ft"
    code, _, err = augment(["finetune", "--data", sd / "data", "--out", out, "--base-model", sd / "pickle",
                            "--allow-pickle", "--max-train-steps", "1", "--train-batch-size", "2", "--device", "cpu"])
    assert code == 0, err
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # what we write is safetensors
    assert ALLOW_PICKLE_ENV not in os.environ  # allowed for that command only
    refused(augment, ["finetune", "--data", sd / "data", "--out", tmp_path / "again", "--base-model", sd / "pickle"],
            tmp_path, "--allow-pickle")


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


# --- 6. build settings of the wrong type or out of range (checked before anything runs) --------


@pytest.mark.parametrize(
    "line, key, expected, shown",
    [
        ("copies: four", "copies", "an integer", "'four'"),
        ("copies: 2.7", "copies", "an integer", "2.7"),
        ('size: "64"', "size", "an integer", "'64'"),
        ("engine_settings: [1, 2]", "engine_settings", "a mapping of KEY: VALUE", "[1, 2]"),
        ("keep_empty: yes", "keep_empty", "a number", "True"),  # YAML's yes is true, not 1.0
        ("preview: 0", "preview", "true or false", "0"),
        ("seed: null", "seed", "an integer", "None"),
        ("source: {a: 1}", "source", "a string or a list of strings", "{'a': 1}"),
    ],
    ids=["copies-word", "copies-float", "size-string", "settings-list", "keep-empty-yes", "preview-int", "seed-null",
         "source-mapping"],
)
def test_recipe_value_of_the_wrong_type(tmp_path, work, line, key, expected, shown):
    path = work / "recipe.yaml"
    path.write_text(f"source: phantom:1\nout: out/ds\nengine: bezier\n{line}\n")
    msg = refused(augment, ["build", path], tmp_path)
    assert msg == f"{path}: {key} must be {expected}, got {shown}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modality", "PET"], "--modality must be one of CT, MRI (MR, T1, T2, FLAIR, ... count as MRI), got 'PET'"),
        (["--engine", "gin", "--copies", "0"],
         "--copies is 0, so engine 'gin' would render nothing; for originals only use engine none (augment ingest)"),
        (["--engine", "gin", "--copies", "-1"], "--copies must be >= 0, got -1"),
        (["--keep-empty", "1.5"], "--keep-empty must be within [0, 1], got 1.5"),
        (["--qc-min-dice", "1.5"], "--qc-min-dice must be within [0, 1], got 1.5"),
        (["--qc-tries", "0"], "--qc-tries must be >= 1, got 0"),
        (["--engine", "none", "--copies", "0", "--qc-model", "m"],
         "--qc-model checks rendered copies, and this build renders none (copies 0)"),
    ],
    ids=["modality", "no-copies", "negative-copies", "keep-empty", "qc-min-dice", "qc-tries", "qc-without-copies"],
)
def test_build_flag_out_of_range(tmp_path, work, args, message):
    assert refused(augment, ["build", "--source", "phantom:1", "--out", "ds", *args], tmp_path) == message


def test_ingest_modality_that_is_not_one(tmp_path, work):
    img, lab = pair(tmp_path)
    msg = refused(augment, ["ingest", f"{img}:{lab}", "--out", "ds", "--modality", "PET"], tmp_path)
    assert msg == "--modality must be one of CT, MRI (MR, T1, T2, FLAIR, ... count as MRI), got 'PET'"


def test_size_other_than_the_ingested_datasets(tmp_path, dataset):
    ds, _, _ = dataset  # ingested at 16 px
    msg = refused(augment, ["build", "--source", ds, "--out", "gin", "--engine", "gin", "-k", "1", "--size", "64"],
                  tmp_path)
    assert msg == (f"{ds}: the dataset's slices are 16 px, not the 64 px of --size; re-ingest the raw data with "
                   "--size 64 (augment ingest), or leave the size out")
    code, _, err = augment(["build", "--source", str(ds), "--out", "gin", "--engine", "gin", "-k", "1",
                            "--size", "16", "--no-preview"])  # its own size, or none, is fine
    assert code == 0, err


# --- 7. two writers of one folder ----------------------------------------------------------------


def test_a_second_build_into_a_folder_being_written_is_refused(tmp_path, work):
    """Two identical builds into one folder at once, as real processes: the second is refused with
    one line naming the folder and the first's pid, writes nothing, and the first finishes."""
    import socket
    import subprocess
    import sys
    import time

    go = tmp_path / "go"  # the first build waits at its first row until this exists
    argv = [sys.executable, "-m", "styleswap.generator.cli", "build", "--source", "phantom:1", "--out", "ds",
            "--engine", "bezier", "-k", "1", "--size", "32", "--keep-empty", "0", "--no-preview"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESWAP_TEST_")}
    first = subprocess.Popen(argv, cwd=work, env={**env, "STYLESWAP_TEST_HOLD_AT": f"rows:1:{go}"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not Path(f"{go}.reached").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else "timeout"
            time.sleep(0.1)
        before = tree(tmp_path)
        second = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr == (f"error: ds: another augment build is writing here (pid {first.pid} on "
                                 f"{socket.gethostname()}); wait for it to finish or stop it\n")
        assert tree(tmp_path) == before
    finally:
        go.touch()
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert augment(["verify", str(work / "ds")])[0] == 0
    assert not (work / "ds" / ".lock").exists()


# --- 8. the content check's model (augment build --qc-model), checked before anything renders -----


def qc_model(folder: Path, labels: dict[str, int], size: int) -> Path:
    from styleswap.networks import SegNet, default_config
    from styleswap.trainer.model import save_model

    return save_model(SegNet(default_config(len(labels), channels=4, depth=2, labels=labels, image_size=[size, size])),
                      folder)


def test_qc_model_with_pickle_weights(tmp_path, dataset):
    ds, _, _ = dataset
    from styleswap.contract import DEFAULT_LABELS

    model = qc_model(tmp_path / "model", DEFAULT_LABELS, 16)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (model / "model.pt").write_bytes(poison_bytes(marker))
    msg = refused(augment, ["build", "--source", ds, "--out", "gin", "--engine", "gin", "-k", "1", "--qc-model", model],
                  tmp_path)
    assert msg == (f"{model / 'model.pt'}: pickle weights are never loaded (loading them can run arbitrary code); "
                   "a model folder holds config.json + model.safetensors, as written by 'train seg'")
    assert not marker.exists()


def test_qc_model_with_another_label_map(tmp_path, dataset):
    ds, _, _ = dataset
    model = qc_model(tmp_path / "model", {"background": 0, "liver": 1}, 16)
    msg = refused(augment, ["build", "--source", ds, "--out", "gin", "--engine", "gin", "-k", "1", "--qc-model", model],
                  tmp_path)
    assert msg == (f"{model / 'config.json'}: the model's label map {{'background': 0, 'liver': 1}} differs from the "
                   "dataset's {'background': 0, 'liver': 1, 'kidney_right': 2, 'kidney_left': 3, 'spleen': 4}; "
                   "the content check needs a model trained on the same labels")


def test_qc_model_of_another_size(tmp_path, work):
    from styleswap.contract import DEFAULT_LABELS

    model = qc_model(tmp_path / "model", DEFAULT_LABELS, 32)
    msg = refused(augment, ["build", "--source", "phantom:1", "--out", "ds", "--size", "48", "--engine", "bezier",
                            "-k", "1", "--qc-model", model], tmp_path)
    assert msg == (f"{model / 'config.json'}: the model reads [32, 32] pixel slices, the dataset's are [48, 48]; "
                   "train the check's model at the dataset's size")



def test_min_qc_dice_on_data_without_the_column(tmp_path):
    from trainer_fixtures import write_dataset

    data = write_dataset(tmp_path / "data", n_cases=1, slices=2, size=16)
    msg = refused(train, ["seg", "--data", data, "--out", tmp_path / "run", "--min-qc-dice", "0.8", "--steps", "1"],
                  tmp_path)
    assert msg == (f"{data / 'data' / 'train-00000-of-00002.parquet'}: --min-qc-dice needs the qc_dice column, which "
                   "datasets built with 'augment build --qc-model' have; this one has none")
