"""`train predict` end to end: phantom -> `train seg` -> `train predict` -> NIfTI on the input's grid,
every input kind, the artifact's records, and the prediction vs `train eval --images/--labels`."""

from __future__ import annotations

import json
import locale
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import nibabel as nib
import numpy as np
import pytest

from cli_util import augment, ok, train
from predict_fixtures import dicom_series, phantom_volume, reorient, world_centroid
from styleswap.contract import sha256_file
from styleswap.trainer.evaluate import fill_holes


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A few steps of `train seg` on the CT phantom at 64 px (its best/ and a checkpoint)."""
    root = tmp_path_factory.mktemp("predict")
    ok(augment(["ingest", "phantom:3", "--size", "64", "--out", root / "ct", "--no-preview"]))
    ok(train(["seg", "--data", root / "ct", "--out", root / "run", "--steps", "4", "--batch-size", "4", "--workers", "0",
              "--channels", "8", "--depth", "3", "--checkpoint-every", "2", "--no-progress", "--loss", "erm"]))
    return root / "run"


def lps_scan(folder: Path, name: str = "case_a_0000.nii.gz", modality: str = "CT") -> tuple[Path, np.ndarray]:
    """A phantom stored LPS, with distinct qform (code 1) and sform (code 2): (path, stored label)."""
    image, label, ras = phantom_volume(modality, seed=11, shape=(80, 72, 24), spacing=(3.5, 3.5, 6.0))
    stored, affine = reorient(image, ras, "LPS")
    stored_label, _ = reorient(label, ras, "LPS")
    img = nib.Nifti1Image(stored.astype(np.int16) if modality == "CT" else stored, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(folder / name))
    return folder / name, stored_label


def test_model_config_is_a_self_contained_artifact(run):
    cfg = json.loads((run / "best" / "config.json").read_text())
    pre = cfg["preprocessing"]
    assert pre["name"] == "styleswap.volumes.preprocess" and pre["size"] == 64 and pre["modality"] == "CT"
    assert pre["intensity"] == "percentile" and pre["input_norm"] == "unit"
    assert cfg["labels"]["liver"] == 1 and cfg["num_classes"] == 5
    data = cfg["training_data"][0]
    assert data["manifest_sha256"] == sha256_file(run.parent / "ct" / "manifest.json") and data["rows"] > 0
    assert cfg["recipe"]["steps"] == 4 and cfg["recipe"]["loss"] == "erm"


def test_predict_writes_labels_on_the_input_grid(run, tmp_path):
    path, _ = lps_scan(tmp_path / "scans")
    out = tmp_path / "pred"
    text = ok(train(["predict", path, "--model", run, "--out", out, "--tta", "--largest-component", "--save-probabilities", "--no-progress"]))
    assert "case_a" in text
    src, got = nib.load(str(path)), nib.load(str(out / "case_a.nii.gz"))
    assert got.shape == src.shape and np.array_equal(got.affine, src.affine)
    assert int(got.header["qform_code"]) == 1 and int(got.header["sform_code"]) == 2
    assert np.array_equal(got.header.get_qform(), src.header.get_qform()) and np.array_equal(got.header.get_sform(), src.header.get_sform())
    assert np.allclose(got.header.get_zooms(), src.header.get_zooms())
    assert got.get_data_dtype() == np.uint8 and got.header.get_intent()[0] == "label"
    labels = np.asarray(got.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    probs = nib.load(str(out / "case_a_probabilities.nii.gz"))
    p = np.asarray(probs.dataobj)
    assert p.shape == src.shape + (5,) and np.array_equal(probs.affine, src.affine)
    assert np.all(p >= 0) and np.all(p <= 1)
    keep = labels > 0  # where a voxel is labelled, its probabilities are a distribution whose argmax it is
    assert np.allclose(p[keep].sum(-1), 1, atol=5 / 255)
    top2 = np.sort(p[keep], axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1.5 / 255  # 8-bit rounding can tie an untrained net's near-equal scores
    assert clear.sum() > 100 and np.array_equal(p[keep][clear].argmax(-1), labels[keep][clear])
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["model"]["weights_sha256"] == sha256_file(run / "best" / "model.safetensors")
    assert summary["options"]["tta"] and summary["options"]["largest_component"]
    case = summary["cases"]["case_a"]
    assert case["orientation"] == "LPS" and case["shape"] == list(src.shape) and case["modality"]["from"].startswith("model")
    voxel_ml = 3.5 * 3.5 * 6.0 / 1000
    assert case["volumes_ml"]["liver"] == pytest.approx((labels == 1).sum() * voxel_ml, abs=1e-3)
    assert set(case["seconds"]) >= {"read_s", "preprocess_s", "network_s", "postprocess_s", "write_s"}
    assert (out / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["case_a.nii.gz", "case_a_probabilities.nii.gz", "predictions.json", "predictions.png"]


def test_fill_holes_post_processes_the_prediction_on_the_input_grid(run, tmp_path):
    path, _ = lps_scan(tmp_path / "scans")
    ok(train(["predict", path, "--model", run, "--out", tmp_path / "plain", "--no-progress"]))
    ok(train(["predict", path, "--model", run, "--out", tmp_path / "filled", "--fill-holes", "--no-progress"]))
    plain, filled = (np.asarray(nib.load(str(tmp_path / d / "case_a.nii.gz")).dataobj) for d in ("plain", "filled"))
    assert np.array_equal(filled, fill_holes(plain, 5))  # what `train eval --fill-holes` scores
    assert json.loads((tmp_path / "filled" / "predictions.json").read_text())["options"]["fill_holes"] is True


def test_predict_takes_folders_nnunet_dicom_and_checkpoints(run, tmp_path):
    """A folder of NIfTI, an nnU-Net raw folder (modality from dataset.json), a DICOM series, and
    a training checkpoint as the model; the DICOM output sits on the series' world grid."""
    nn = tmp_path / "Dataset001"
    lps_scan(nn / "imagesTs", "mr_7_0000.nii.gz", modality="MRI")
    (nn / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}))
    image, label, ras = phantom_volume("CT", seed=5, shape=(64, 64, 16), spacing=(4.0, 4.0, 6.0))
    stored, affine = reorient(image, ras, "LPS")
    dicom_series(tmp_path / "series_1", np.round(stored), affine)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    out = tmp_path / "pred"
    encoding = locale.getpreferredencoding(False)
    ok(train(["predict", nn, tmp_path / "series_1", "--model", ckpt, "--out", out, "--no-progress"]))
    assert locale.getpreferredencoding(False) == encoding  # reading DICOM leaves the process's text encoding alone
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["cases"]["mr_7"]["modality"] == {"value": "MRI", "from": "dataset.json"}
    assert summary["cases"]["series_1"]["modality"] == {"value": "CT", "from": "DICOM Modality tag"}
    got = nib.load(str(out / "series_1.nii.gz"))
    assert got.shape == stored.shape and np.allclose(got.affine, affine, atol=1e-4)
    assert int(got.header["sform_code"]) == 1 and "".join(nib.aff2axcodes(got.affine)) == "LPS"
    # the DICOM reader's voxels are the stored ones: the label's liver maps to the same world point
    assert np.allclose(world_centroid(reorient(label, ras, "LPS")[0], got.affine, 1), world_centroid(label, ras, 1), atol=1e-3)


def test_hub_model_id_downloads_only_the_artifact(run, tmp_path, monkeypatch):
    calls = {}

    def fake_snapshot(repo_id, repo_type=None, revision=None, allow_patterns=None):
        calls.update(repo_id=repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns)
        return str(run / "best")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path, _ = lps_scan(tmp_path / "scans")
    ok(train(["predict", path, "--model", "hf://alice/abdomen-seg@v1", "--out", tmp_path / "pred", "--no-progress"]))
    assert calls == {"repo_id": "alice/abdomen-seg", "repo_type": "model", "revision": "v1",
                     "allow_patterns": ["config.json", "model.safetensors", "README.md"]}
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["model"]["id"] == "hf://alice/abdomen-seg@v1"


@pytest.mark.slow
@pytest.mark.realdata
def test_prediction_on_a_real_mri_scores_what_raw_eval_scores(shared_data, tmp_path):
    """A model trained briefly on MRI slices; its written prediction of a dev case, read back with
    nibabel and scored by hand, matches `train eval --images/--labels` to 0.5 points."""
    mr = shared_data / "abdomen-mr-dev"
    ok(augment(["ingest", mr, "--size", "64", "--out", tmp_path / "mr", "--no-preview"]))
    ok(train(["seg", "--data", tmp_path / "mr", "--out", tmp_path / "run", "--steps", "60", "--batch-size", "8", "--workers", "0",
              "--channels", "8", "--depth", "3", "--loss", "erm", "--lr", "3e-3", "--no-progress"]))
    case = "chaos_01"
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    os.symlink(mr / "imagesTr" / f"{case}_0000.nii.gz", images / f"{case}_0000.nii.gz")
    os.symlink(mr / "labelsTr" / f"{case}.nii.gz", labels / f"{case}.nii.gz")
    ok(train(["predict", images, "--model", tmp_path / "run", "--out", tmp_path / "pred", "--no-progress"]))
    pred = np.asarray(nib.load(str(tmp_path / "pred" / f"{case}.nii.gz")).dataobj)
    gt = np.asarray(nib.load(str(labels / f"{case}.nii.gz")).dataobj)
    by_hand = {o: 2 * ((pred == i) & (gt == i)).sum() / ((pred == i).sum() + (gt == i).sum())
               for i, o in enumerate(["liver", "kidney_right", "kidney_left", "spleen"], start=1)}
    assert by_hand["liver"] > 0.1  # it learned something (0.28 measured): the comparison below is not between zeros
    ok(train(["eval", "--model", tmp_path / "run", "--images", images, "--labels", labels, "--out", tmp_path / "eval"]))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for organ, value in by_hand.items():
        assert metrics["per_case"][case][organ] * 100 == pytest.approx(value * 100, abs=0.5), organ
    # its confusion counts every voxel of the scan's own grid under its true label
    confusion = np.array(metrics["per_case"][case]["confusion"])
    assert confusion.sum(axis=1).tolist() == np.bincount(gt.ravel().astype(np.int64), minlength=5).tolist()


# --- train push ------------------------------------------------------------------------------------


class RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def create_commit(self, **kw):
        self.calls.append(("create_commit", kw["repo_id"], kw))


def test_push_dry_run_shows_files_and_a_parsable_card_and_sends_nothing(run, tmp_path, monkeypatch):
    import yaml

    api = RecordingApi()
    monkeypatch.setattr("styleswap.hub_publish.default_api", lambda: api)
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken1234567890")
    ok(train(["eval", "--model", run, "--data", run.parent / "ct", "--out", run / "eval-ct"]))
    code, out, err = train(["push", run, "--repo-id", "alice/abdomen-seg", "--license", "cc-by-nc-4.0", "--dry-run"])
    assert code == 0, err
    assert "hf_FAKEtoken" not in out + err and api.calls == []
    files = [line.split(" -> ")[1].split(" (")[0] for line in out.splitlines() if " -> " in line and line.endswith("bytes)")]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    card = out[out.index("---\n"):out.index("dry run:")]
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "styleswap" and meta["license"] == "cc-by-nc-4.0" and "ct" in meta["tags"]
    metrics = json.loads((run / "eval-ct" / "metrics.json").read_text())
    assert f"| liver | {metrics['per_organ']['liver']['mean'] * 100:.1f} |" in card  # the latest eval's Dice table
    assert "train predict --model hf://alice/abdomen-seg" in card and sha256_file(run / "best" / "model.safetensors") in card


def test_push_sends_one_commit_of_the_artifact(run, monkeypatch):
    api = RecordingApi()
    monkeypatch.setattr("styleswap.hub_publish.default_api", lambda: api)
    ok(train(["push", run / "final", "--repo-id", "alice/abdomen-seg", "--license", "apache-2.0", "--revision", "v1"]))
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_repo", "create_branch", "create_commit"] and api.calls[0][2]["repo_type"] == "model"
    ops = api.calls[2][2]["operations"]
    assert sorted(op.path_in_repo for op in ops) == ["README.md", "config.json", "model.safetensors"]
    assert api.calls[2][2]["revision"] == "v1"


@pytest.mark.parametrize("args, words", [
    (["--repo-id", "not a repo", "--license", "mit"], "--repo-id must be NAMESPACE/NAME"),
    (["--repo-id", "alice/seg"], "no license"),
    (["--repo-id", "alice/seg", "--license", "MIT License"], "--license must be a lowercase Hub license id"),
])
def test_push_refusals(run, args, words):
    code, out, err = train(["push", run, *args, "--dry-run"])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err, err
