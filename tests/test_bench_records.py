"""`bench/records/`: the benchmark rows behind the README's figures, kept in the repository because a
benchmark's workdir does not outlive its machine. Each record must say what its file name says and
agree with itself, so that `bench/compare_rows.py bench/records/<direction>-<protocol> A B` and the
README read the same numbers."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
from bench_util import load_bench

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "records"
ROWS = sorted(RECORDS.glob("*/rows/*.json"))
# the target cases each direction measures: all 30 CT volumes MRI -> CT, the 8 MRI dev volumes CT -> MRI
TARGET_CASES = {"mr2ct": 30, "ct2mr": 8}


def bench():
    return load_bench("cross_modality.py", "cross_modality")


def test_there_are_records_in_every_folder():
    folders = sorted(p for p in RECORDS.iterdir() if p.is_dir())
    assert folders, f"{RECORDS}: no record folders"
    for folder in folders:
        assert re.fullmatch(r"(ct2mr|mr2ct)-(standard|fast)", folder.name), folder
        assert list((folder / "rows").glob("*.json")), f"{folder}: no rows"


@pytest.mark.parametrize("path", ROWS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_a_record_agrees_with_its_name_and_with_itself(path):
    cm = bench()
    r = json.loads(path.read_text())
    m = re.fullmatch(r"(.+)-s(\d+)(-v\d+)?", path.stem)
    assert m and int(m.group(2)) == r["seed"], f"{path.name}: seed {r['seed']}"
    assert path.stem == Path(r["run"]).name  # the run folder the row was trained in
    direction = path.parent.parent.name.split("-")[0]
    per_case = r["per_case"]
    assert len(per_case) == TARGET_CASES[direction]
    assert all(0.0 <= v <= 1.0 for v in per_case.values())
    # every target volume holds all four organs, so the mean over (volume, organ) pairs is both the
    # mean of the per-case means and the mean of the per-organ means
    assert r["mean_dice"] == pytest.approx(statistics.fmean(per_case.values()), abs=1e-6)
    assert r["mean_dice"] == pytest.approx(statistics.fmean(r["per_organ"][o] for o in cm.ORGANS), abs=1e-6)
    # the inference was chosen on source validation by the benchmark's rule: the first best option
    assert cm.choose_inference(r["source_val_dice"]) == r["inference"]


@pytest.mark.parametrize("path", [p for p in ROWS if "confusion" in json.loads(p.read_text())],
                         ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_a_records_confusion_holds_its_dice(path):
    """Where a record keeps the voxel confusion of its evaluation, each case's Dice follows from it,
    and the summed matrix is the sum of the cases'."""
    cm = bench()
    r = json.loads(path.read_text())
    assert r["confusion"]["classes"] == ["background", *cm.ORGANS]
    per_case = {c: np.array(v) for c, v in r["per_case_confusion"].items()}
    assert per_case.keys() == r["per_case"].keys()
    assert np.array_equal(sum(per_case.values()), np.array(r["confusion"]["voxels"]))
    for case, conf in per_case.items():
        inter, psum, gsum = np.diagonal(conf)[1:], conf.sum(axis=0)[1:], conf.sum(axis=1)[1:]
        assert (gsum > 0).all(), f"{case}: an organ with no voxels"
        assert r["per_case"][case] == pytest.approx(float(np.mean(2 * inter / (psum + gsum))), abs=1e-9), case
