"""Paths that lead out of the folders a command was given (safe_paths); the contract is in test_bad_inputs.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bad_input_helpers import (
    augment,
    dataset_fixture,  # noqa: F401 (the fixture dataset)
    ingest,
    pair,
    refused,
    train,
    work_fixture,  # noqa: F401 (the fixture work)
)

# --- 2. paths that lead out of the folders a command was given ---------------------------------


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
