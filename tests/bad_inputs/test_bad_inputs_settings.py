"""Build settings, two writers of one folder, the content check's model; the contract is in test_bad_inputs.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bad_input_helpers import (
    augment,
    dataset_fixture,  # noqa: F401 (the fixture dataset)
    pair,
    poison_bytes,
    refused,
    train,
    tree,
    work_fixture,  # noqa: F401 (the fixture work)
)

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
