"""The content check (``augment build --qc-model``) and ``train seg --min-qc-dice``.

Scores on hand-made cases (exact Dice), the documented seed sequence checked copy by copy against
an independent re-render, byte identity across reruns, ``--workers``, formats and a killed build,
the column in the contract (optional, versioned), the card and manifest, and the trainer's filter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_util import augment
from styleswap import contract
from styleswap.errors import StyleSwapError
from styleswap.generator import dataset
from styleswap.generator.qc import CheckSettings, ContentCheck, mean_dice

SIZE = 48
SEED = 3
MIN = 0.05  # the untrained model below scores phantom copies around 0.05: some pass, some do not
COMMON = ["--size", str(SIZE), "--keep-empty", "0", "--rows-per-shard", "7", "--no-preview", "--seed", str(SEED)]
GIN = ["--engine", "gin", "--copies", "2"]


def rows(folder: Path) -> list[dict]:
    return list(dataset.iter_rows(folder))


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").iterdir())}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained model folder with the phantom's labels and size (config.json + safetensors)."""
    from predict_fixtures import tiny_model

    return tiny_model(tmp_path_factory.mktemp("qc") / "model", size=SIZE)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model) -> dict[str, Path]:
    """Builds of phantom:1 (25 slices, 2 GIN copies each): with the check, in both formats, and without."""
    root = tmp_path_factory.mktemp("builds")
    out = {}
    for name, extra in (("qc", ["--qc-model", str(model), "--qc-min-dice", str(MIN)]),
                        ("qc-h5", ["--qc-model", str(model), "--qc-min-dice", str(MIN), "--format", "hdf5"]),
                        ("plain", [])):
        code, _, err = augment(["build", "--source", "phantom:1", "--out", str(root / name), *GIN, *COMMON, *extra])
        assert code == 0, err
        out[name] = root / name
    return out


# --- the score -----------------------------------------------------------------------------------


def _mask(*boxes: tuple[int, int, int, int, int]) -> np.ndarray:
    m = np.zeros((8, 8), np.uint8)
    for label, y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = label
    return m


@pytest.mark.parametrize("pred, mask, expected", [
    (_mask((1, 0, 2, 0, 2), (2, 4, 6, 4, 6)), _mask((1, 0, 2, 0, 2), (2, 4, 6, 4, 6)), 1.0),  # the mask itself
    (_mask(), _mask(), 1.0),  # no organ in either
    (_mask(), _mask((1, 0, 2, 0, 2)), 0.0),  # the organ missed
    (_mask((1, 0, 2, 0, 2)), _mask(), 0.0),  # an organ that is not there
    (_mask((1, 0, 2, 0, 2)), _mask((1, 0, 2, 1, 3)), 0.5),  # 2 of 4 + 4 pixels: 2 * 2 / 8
    (_mask((1, 0, 2, 0, 2), (3, 6, 8, 6, 8)), _mask((1, 0, 2, 1, 3)), 0.25),  # (0.5 + 0) / 2 organs
    (_mask((1, 0, 4, 0, 4)), _mask((1, 0, 4, 0, 2), (4, 0, 4, 2, 4)), 2 / 3 / 2),  # (2 * 8 / 24 + 0) / 2
])
def test_mean_dice_on_hand_made_cases(pred, mask, expected):
    assert mean_dice(pred, mask) == np.float32(expected)


class LabelDecoder(torch.nn.Module):
    """A stand-in network whose argmax is the stored pixel value read as a label id (0..4)."""

    def forward(self, x):
        ids = torch.arange(5, dtype=x.dtype).view(1, 5, 1, 1)
        return -((x * 255 - ids) ** 2)


def test_a_copy_that_is_the_mask_scores_1_and_a_constant_image_0(model):
    check = ContentCheck(CheckSettings(str(model), "-", 0.8, 3), build_seed=0)
    check.net = LabelDecoder()
    mask = _mask((1, 0, 3, 0, 3), (2, 4, 8, 1, 5), (4, 5, 7, 6, 8))
    constant = np.zeros_like(mask)
    bright = np.full_like(mask, 4)  # read as spleen everywhere: the mask's spleen is 4 of 64 pixels
    scores = check.score([mask.copy(), constant, bright], [mask] * 3, ["c"] * 3)
    assert scores[:2] == [1.0, 0.0]
    assert scores[2] == np.float32((0 + 0 + 2 * 4 / (64 + 4)) / 3)  # liver, kidney_right, spleen


def test_retry_seeds_follow_the_documented_formula():
    tries = [contract.retry_seed(7, "case/0003", 1, t) for t in range(4)]
    assert tries[0] == contract.derive_seed(7, "case/0003", 1)  # try 0 is the copy's own seed
    for t in (1, 2, 3):
        key = f"7\x00case/0003\x001\x00retry\x00{t}".encode()
        assert tries[t] == int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)
    assert len(set(tries)) == 4 and all(0 <= s < 2**63 for s in tries)
    with pytest.raises(ValueError):
        contract.retry_seed(7, "case/0003", 1, -1)


# --- the build -----------------------------------------------------------------------------------


def test_each_copy_is_its_first_passing_try_or_else_its_best(built, model):
    """Re-render every try of every copy outside the build, score it, and apply the documented rule:
    the first try at or above the threshold, else the best (earliest of equal scores)."""
    from styleswap.generator.engines.base import CopyRequest
    from styleswap.generator.engines.gin import GINEngine

    engine = GINEngine()
    check = ContentCheck(CheckSettings(str(model), "-", MIN, 3), build_seed=SEED)
    kept_at, threads = Counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # as in the build (see generator.qc)
    try:
        for r in rows(built["qc"]):
            for c in range(2):
                tries = []
                for t in range(3):
                    seed = contract.retry_seed(SEED, r["sample_id"], c, t)
                    req = CopyRequest(r["sample_id"], c, seed, contract.to_unit_float(r["image"]), r["mask"])
                    stored = contract.from_unit_float(engine.render([req])[0].image, r["image"].dtype)
                    tries.append((seed, stored, check.score([stored], [r["mask"]], [r["case_id"]])[0]))
                passing = [t for t in range(3) if tries[t][2] >= MIN]
                kept = passing[0] if passing else max(range(3), key=lambda t: (tries[t][2], -t))
                seed, stored, score = tries[kept]
                assert r["seeds"][c] == seed and r["qc_dice"][c] == score, (r["sample_id"], c)
                np.testing.assert_array_equal(r["augmented"][c], stored)
                kept_at["flagged" if not passing else kept] += 1
    finally:
        torch.set_num_threads(threads)
    # every branch of the rule happened: passed at once, passed on a later try, kept below the threshold
    assert kept_at[0] and (kept_at[1] or kept_at[2]) and kept_at["flagged"], kept_at
    summary = manifest(built["qc"])["qc"]["summary"]
    assert summary["tries_used"] == {"1": kept_at[0], "2": kept_at[1], "3": kept_at[2] + kept_at["flagged"]}
    assert summary["below_min"] == kept_at["flagged"] and summary["copies"] == sum(kept_at.values())


def test_a_rerun_gives_the_same_bytes_and_formats_agree(built, model, tmp_path):
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "again"), *GIN, *COMMON,
                            "--qc-model", str(model), "--qc-min-dice", str(MIN)])
    assert code == 0, err
    assert shard_bytes(tmp_path / "again") == shard_bytes(built["qc"])
    a, b = rows(built["qc"]), rows(built["qc-h5"])
    assert [(r["sample_id"], r["seeds"], r["qc_dice"]) for r in a] == [(r["sample_id"], r["seeds"], r["qc_dice"]) for r in b]
    assert all(np.array_equal(x, y) for r, s in zip(a, b) for x, y in zip(r["augmented"], s["augmented"]))
    assert manifest(built["qc"])["qc"] == manifest(built["qc-h5"])["qc"]


@pytest.mark.slow
def test_any_number_of_workers_gives_the_same_bytes(built, model, tmp_path):
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "w2"), *GIN, *COMMON,
                            "--qc-model", str(model), "--qc-min-dice", str(MIN), "--workers", "2"])
    assert code == 0, err
    assert shard_bytes(tmp_path / "w2") == shard_bytes(built["qc"])


def test_copies_that_pass_at_once_keep_the_bytes_of_a_build_without_the_check(built, model, tmp_path):
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "pass"), *GIN, *COMMON,
                            "--qc-model", str(model), "--qc-min-dice", "0"])
    assert code == 0, err
    checked, plain = rows(tmp_path / "pass"), rows(built["plain"])
    assert [r["seeds"] for r in checked] == [r["seeds"] for r in plain]
    for r, s in zip(checked, plain):
        assert all(np.array_equal(x, y) for x, y in zip(r["augmented"], s["augmented"]))
        assert len(r["qc_dice"]) == 2 and "qc_dice" not in s
    assert manifest(tmp_path / "pass")["qc"]["summary"]["tries_used"] == {"1": 2 * len(plain), "2": 0, "3": 0}
    # the column is versioned: format 2 with it, 1 (what builds wrote before the check) without
    assert manifest(tmp_path / "pass")["format_version"] == 2 and manifest(built["plain"])["format_version"] == 1
    assert not any(k.startswith("qc_") for k in manifest(built["plain"])["recipe"]) and "qc" not in manifest(built["plain"])


def test_convert_and_verify_keep_the_column(built, tmp_path):
    h5, back = tmp_path / "h5", tmp_path / "back"
    for args in (["convert", built["qc"], "--to", "hdf5", "--out", h5], ["convert", h5, "--to", "parquet", "--out", back],
                 ["verify", h5], ["verify", back], ["verify", built["qc-h5"]]):
        code, _, err = augment([str(a) for a in args])
        assert code == 0, (args, err)
    assert shard_bytes(back) == shard_bytes(built["qc"])  # Parquet -> HDF5 -> Parquet: the same bytes
    assert manifest(back)["qc"] == manifest(built["qc"])["qc"] and manifest(h5)["format_version"] == 2
    import h5py

    with h5py.File(next((h5 / "data").iterdir())) as f:
        assert f["qc_dice"].dtype == np.float32 and f["qc_dice"].shape[1] == 2 and f.attrs["format_version"] == 2
    # a manifest that does not say what the shards hold fails verification
    m = manifest(back)
    del m["qc"]
    (back / "manifest.json").write_text(json.dumps(m))
    code, _, err = augment(["verify", str(back)])
    assert code == 1 and "has a qc_dice column, but the manifest records no content check" in err, err


def test_card_and_manifest_show_the_distribution(built, model):
    m = manifest(built["qc"])["qc"]
    assert m["weights_sha256"] == contract.sha256_file(model / "model.safetensors")
    assert (m["min_dice"], m["tries"], m["input_norm"]) == (MIN, 3, "unit")
    scores = np.asarray([d for r in rows(built["qc"]) for d in r["qc_dice"]], np.float64)
    s = m["summary"]
    assert s["copies"] == scores.size == 2 * manifest(built["qc"])["counts"]["slices"]
    assert (s["min"], s["median"], s["max"]) == tuple(round(float(np.percentile(scores, q)), 4) for q in (0, 50, 100))
    assert s["below_min"] == int((scores < MIN).sum()) and s["fraction_below_min"] == round(s["below_min"] / scores.size, 4)
    card = (built["qc"] / "README.md").read_text()
    assert "## Content check" in card and f"| {scores.size} | {s['min']:.3f} | {s['q1']:.3f} |" in card
    assert "name: qc_dice" in card.split("---")[1]  # the features of the front matter
    assert "## Content check" not in (built["plain"] / "README.md").read_text()

    import datasets

    files = sorted(str(p) for p in (built["qc"] / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.features["qc_dice"].feature.dtype == "float32" and len(ds[0]["qc_dice"]) == 2


def test_every_engine_and_a_zscore_model(tmp_path):
    """Bezier copies are checked the same way; a model reading z-scored slices gets each case's
    volume statistics (the raw source is ingested first, into the cache)."""
    from predict_fixtures import tiny_model

    zmodel = tiny_model(tmp_path / "z", size=SIZE)
    cfg = json.loads((zmodel / "config.json").read_text())
    (zmodel / "config.json").write_text(json.dumps({**cfg, "input_norm": "zscore"}))
    code, _, err = augment(["build", "--source", "phantom:1", "--out", str(tmp_path / "bz"), "--engine", "bezier",
                            "--copies", "2", *COMMON, "--qc-model", str(zmodel), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    m = manifest(tmp_path / "bz")
    assert m["qc"]["input_norm"] == "zscore" and m["qc"]["summary"]["copies"] == 2 * m["counts"]["slices"]
    assert any((tmp_path / "cache").glob("source-*/manifest.json"))
    assert all(len(r["qc_dice"]) == 2 for r in rows(tmp_path / "bz"))


def test_the_fingerprint_holds_the_check_by_weights_and_settings(model, tmp_path):
    from styleswap.generator.config import BuildConfig
    from styleswap.generator.plan import plan_build

    def fp(**kw):
        cfg = BuildConfig(source="phantom:1", out=str(tmp_path / "o"), size=SIZE, keep_empty=0.0, **kw)
        cfg.validate()
        return plan_build(cfg).fingerprint

    plain = fp()
    assert "qc" not in plain and not any(k.startswith("qc_") for k in plain["recipe"])
    base = fp(qc_model=str(model), qc_min_dice=0.5)
    moved = tmp_path / "moved"
    shutil.copytree(model, moved)
    assert fp(qc_model=str(moved), qc_min_dice=0.5) == base  # the weights count, not where they are
    assert fp(qc_model=str(model), qc_min_dice=0.6) != base
    assert fp(qc_model=str(model), qc_min_dice=0.5, qc_tries=2) != base
    from styleswap.networks import SegNet
    from styleswap.trainer.model import save_model

    torch.manual_seed(5)  # the same network, other weights
    other = save_model(SegNet(json.loads((model / "config.json").read_text())), tmp_path / "other")
    assert fp(qc_model=str(other), qc_min_dice=0.5) != base


@pytest.mark.slow
def test_a_killed_build_resumes_to_the_same_bytes_and_refuses_other_settings(built, model, tmp_path):
    argv = ["build", "--source", "phantom:1", "--out", "ds", *GIN, *COMMON, "--qc-model", str(model),
            "--qc-min-dice", str(MIN)]
    env = {**os.environ, "STYLESWAP_TEST_KILL_AT": "receipt:2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "styleswap.generator.cli", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, _, err = augment([*argv[:-1], "0.5"])  # other content-check settings: refused
        assert code == 2 and "other settings" in err, err
        code, out, err = augment(argv)
        assert code == 0 and "resuming" in out, (out, err)
    finally:
        os.chdir(old)
    assert shard_bytes(tmp_path / "ds") == shard_bytes(built["qc"])


# --- the trainer's filter ------------------------------------------------------------------------


def qc_rows(scores: list[list[float]]) -> list[dict]:
    from trainer_fixtures import make_rows

    out = make_rows(n_cases=1, slices=len(scores), size=16, copies=2)
    for r, s in zip(out, scores):
        r["qc_dice"] = s
    return out


SCORES = [[0.9, 0.1], [0.1, 0.2], [0.95, 0.85], [0.3, 0.81]]


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_slice_stream_draws_only_copies_that_passed(tmp_path, fmt):
    from trainer_fixtures import write_dataset

    from styleswap.trainer.data import SliceStream, open_dataset, qc_filter

    data = open_dataset(write_dataset(tmp_path / "d", rows=qc_rows(SCORES), fmt=fmt, num_shards=1, size=16, copies=2))
    rows_by_id = {r["sample_id"]: r for r in qc_rows(SCORES)}
    drawn: dict[str, set] = {}
    for epoch in range(12):
        stream = SliceStream([data], shuffle=False, seed=0, min_qc_dice=0.8)
        stream.set_epoch(epoch)
        for item in stream:
            r = rows_by_id[item["sample_id"]]
            got = (item["augmented"][0].numpy() * 255).round().astype(np.uint8)
            which = [k for k, a in enumerate(r["augmented"]) if np.array_equal(a, got)]
            drawn.setdefault(item["sample_id"], set()).update(which if item["has_copy"] else ["original"])
            if not item["has_copy"]:
                assert torch.equal(item["augmented"], item["image"])
    ids = sorted(drawn)
    assert [drawn[i] for i in ids] == [{0}, {"original"}, {0, 1}, {1}]
    assert qc_filter([data], 0.8) == ("--min-qc-dice 0.8: skipping 4 of 8 copies (50.0 %) whose qc_dice is below "
                                      "it; 1 rows have no copy left and train on their original")
    assert qc_filter([data], None) is None


def test_without_a_threshold_the_column_changes_nothing(tmp_path):
    from trainer_fixtures import make_rows, write_dataset

    from styleswap.trainer.data import SliceStream, open_dataset

    with_qc = open_dataset(write_dataset(tmp_path / "a", rows=qc_rows(SCORES), num_shards=1, size=16))
    without = open_dataset(write_dataset(tmp_path / "b", rows=make_rows(1, len(SCORES), 16, 2), num_shards=1, size=16))
    for epoch in range(3):
        a, b = SliceStream([with_qc], seed=1), SliceStream([without], seed=1)
        a.set_epoch(epoch), b.set_epoch(epoch)
        assert [torch.equal(x["augmented"], y["augmented"]) for x, y in zip(a, b)] == [True] * len(SCORES)


def test_the_filter_is_refused_on_data_without_the_column(tmp_path):
    from trainer_fixtures import write_dataset

    from styleswap.trainer.config import TrainConfig
    from styleswap.trainer.data import SliceStream, open_dataset, qc_filter

    data = open_dataset(write_dataset(tmp_path / "d", size=16))
    for call in (lambda: SliceStream([data], min_qc_dice=0.5), lambda: qc_filter([data], 0.5)):
        with pytest.raises(StyleSwapError, match=r"train-00000-of-00002\.parquet: --min-qc-dice needs the qc_dice column"):
            call()
    cfg = TrainConfig(data=["x"], out="y", min_qc_dice=1.5)
    with pytest.raises(StyleSwapError, match=r"--min-qc-dice must be within \[0, 1\], got 1.5"):
        cfg.validate()
    assert replace(cfg, min_qc_dice=0.8).recipe()["min_qc_dice"] == 0.8  # a resume must keep it


def test_train_seg_reports_what_it_skips_once(tmp_path):
    from cli_util import train
    from trainer_fixtures import write_dataset

    data = write_dataset(tmp_path / "d", rows=qc_rows(SCORES * 2), num_shards=1, size=16)
    code, out, err = train(["seg", "--data", data, "--out", tmp_path / "run", "--loss", "dice", "--steps", "3",
                            "--batch-size", "2", "--workers", "0", "--channels", "4", "--depth", "2",
                            "--min-qc-dice", "0.8", "--no-progress"])
    assert code == 0, err
    line = ("--min-qc-dice 0.8: skipping 8 of 16 copies (50.0 %) whose qc_dice is below it; 2 rows have no copy "
            "left and train on their original")
    assert err.count(line) == 1, err
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["recipe"]["min_qc_dice"] == 0.8
