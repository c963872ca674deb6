"""`bench/compare_rows.py`: the paired per-case comparison behind the README's "row 7 beats SLAug on
25 of 30 CT cases", checked on hand-computed rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_util import load_bench

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "compare_rows.py"


def bench():
    return load_bench("compare_rows.py", "compare_rows")


def write_row(W: Path, name: str, seed: int, per_case: dict[str, float]) -> None:
    (W / "rows").mkdir(exist_ok=True)
    (W / "rows" / f"{name}-s{seed}-v2.json").write_text(json.dumps({"row": name, "seed": seed, "per_case": per_case}))


@pytest.fixture
def workdir(tmp_path):
    # A, seeds averaged: c1 0.8, c2 0.6, c3 0.5, c4 0.9; B: c1 0.7, c2 0.7, c3 0.4, c4 0.6
    write_row(tmp_path, "a", 0, {"c1": 0.7, "c2": 0.6, "c3": 0.4, "c4": 0.9})
    write_row(tmp_path, "a", 1, {"c1": 0.9, "c2": 0.6, "c3": 0.6, "c4": 0.9})
    write_row(tmp_path, "b", 0, {"c1": 0.7, "c2": 0.7, "c3": 0.4, "c4": 0.6})
    write_row(tmp_path, "b", 1, {"c1": 0.7, "c2": 0.7, "c3": 0.4, "c4": 0.6})
    return tmp_path


def test_gains_are_per_case_after_averaging_the_seeds(workdir):
    cr = bench()
    a, b = cr.per_case(workdir, "a", [0, 1], "-v2"), cr.per_case(workdir, "b", [0, 1], "-v2")
    assert a == pytest.approx({"c1": 0.8, "c2": 0.6, "c3": 0.5, "c4": 0.9})
    r = cr.compare(a, b, resamples=2000)
    # gains +0.1, -0.1, +0.1, +0.3: three wins, mean 0.1, median 0.1
    assert r["wins"] == 3 and r["cases"] == 4
    assert r["mean_gain"] == pytest.approx(0.1) and r["median_gain"] == pytest.approx(0.1)
    assert r["mean_a"] == pytest.approx(0.7) and r["mean_b"] == pytest.approx(0.6)
    lo, hi = r["bootstrap_95"]
    # a resampled mean lies between the smallest and largest gain, and the interval holds the mean
    assert -0.1 <= lo < 0.1 < hi <= 0.3
    assert cr.compare(a, b, resamples=2000) == r  # seeded: the same interval every time


def test_equal_gains_give_a_point_interval_and_a_tie_is_not_a_win():
    cr = bench()
    r = cr.compare({"x": 0.5, "y": 0.7, "z": 0.2}, {"x": 0.3, "y": 0.5, "z": 0.2}, resamples=500)
    assert r["wins"] == 2
    r = cr.compare({"x": 0.5, "y": 0.7}, {"x": 0.3, "y": 0.5}, resamples=500)
    assert r["bootstrap_95"] == pytest.approx([0.2, 0.2])


def test_cli_prints_the_table_and_refuses_a_missing_row_with_exit_2(workdir, tmp_path):
    out = tmp_path / "cmp.json"
    ok = subprocess.run([sys.executable, str(SCRIPT), str(workdir), "a", "b", "--tag=-v2", "--json", str(out)],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "| a - b | 3 of 4 | 70.0 | 60.0 | +10.0 | +10.0 |" in ok.stdout
    assert json.loads(out.read_text())["per_case_gain"]["c2"] == pytest.approx(-0.1)
    bad = subprocess.run([sys.executable, str(SCRIPT), str(workdir), "a", "b", "--seeds", "0,2", "--tag=-v2"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: {workdir / 'rows' / 'a-s2-v2.json'}: no such row (train it with bench/cross_modality.py first)"]


def test_rows_that_measured_different_cases_are_refused(workdir):
    cr = bench()
    write_row(workdir, "c", 0, {"c1": 0.5})
    with pytest.raises(SystemExit) as e:
        cr.compare(cr.per_case(workdir, "a", [0], "-v2"), cr.per_case(workdir, "c", [0], "-v2"))
    assert e.value.code == 2
